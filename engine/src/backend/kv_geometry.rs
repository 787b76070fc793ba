//! The shape of a paged KV pool, shared by every backend and by pool sizing.

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

/// How the KV pool is cut into blocks. One block holds `block_size` entries of K and V for every
/// layer and KV head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    /// Bytes of one element of the cache (4 for f32).
    pub element_bytes: usize,
}

impl KvGeometry {
    /// Geometry for `config` with the given pool shape; block size and count must be positive.
    pub fn new(
        config: &ModelConfig,
        block_size: usize,
        num_blocks: usize,
        element_bytes: usize,
    ) -> Result<Self> {
        for (field, value) in [("block_size", block_size), ("num_blocks", num_blocks)] {
            if value == 0 {
                return Err(EngineError::InvalidParameter {
                    field,
                    message: "must be positive, got 0".into(),
                });
            }
        }
        Ok(Self {
            num_layers: config.num_layers,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            block_size,
            num_blocks,
            element_bytes,
        })
    }

    /// Bytes of K and V for one entry across all layers and KV heads.
    pub fn bytes_per_entry(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * self.element_bytes
    }

    /// Bytes of one block.
    pub fn bytes_per_block(&self) -> usize {
        self.bytes_per_entry() * self.block_size
    }

    /// Bytes of the whole pool.
    pub fn total_bytes(&self) -> usize {
        self.bytes_per_block() * self.num_blocks
    }

    /// Entries the whole pool holds.
    pub fn total_entries(&self) -> usize {
        self.block_size * self.num_blocks
    }

    /// Blocks needed to hold `entries` entries.
    pub fn blocks_for(&self, entries: usize) -> usize {
        entries.div_ceil(self.block_size)
    }
}
