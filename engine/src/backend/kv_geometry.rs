//! The shape of a paged KV pool, shared by every backend and by pool sizing.

use crate::config::{KvCacheDtype, ModelConfig};
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
    /// What the pool stores its elements in; it alone sets the bytes of an entry.
    pub dtype: KvCacheDtype,
}

impl KvGeometry {
    /// Geometry for `config` with the given pool shape; block size and count must be positive
    /// and the whole pool's byte count must fit a `usize` (so no size derived from the geometry
    /// overflows).
    ///
    /// Fails with [`EngineError::InvalidParameter`] naming `block_size` or `num_blocks`.
    pub fn new(
        config: &ModelConfig,
        block_size: usize,
        num_blocks: usize,
        dtype: KvCacheDtype,
    ) -> Result<Self> {
        for (field, value) in [("block_size", block_size), ("num_blocks", num_blocks)] {
            if value == 0 {
                return Err(EngineError::InvalidParameter {
                    field,
                    message: "must be positive, got 0".into(),
                });
            }
        }
        let geometry = Self {
            num_layers: config.num_layers,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            block_size,
            num_blocks,
            dtype,
        };
        let total = [
            geometry.num_layers,
            geometry.num_kv_heads,
            geometry.head_dim,
            dtype.size_bytes(),
            block_size,
            num_blocks,
        ]
        .into_iter()
        .try_fold(2usize, usize::checked_mul);
        if total.is_none() {
            return Err(EngineError::InvalidParameter {
                field: "num_blocks",
                message: format!(
                    "a pool of {num_blocks} blocks of {block_size} entries ({} layers × {} KV heads × head_dim {}) has more bytes than a usize holds",
                    geometry.num_layers, geometry.num_kv_heads, geometry.head_dim
                ),
            });
        }
        Ok(geometry)
    }

    /// Bytes of K and V for one entry across all layers and KV heads.
    pub fn bytes_per_entry(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.size_bytes()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::stories260k_config;

    #[test]
    fn a_pool_whose_byte_count_overflows_is_refused_naming_num_blocks() {
        let err = KvGeometry::new(
            &stories260k_config(),
            16,
            usize::MAX / 16,
            KvCacheDtype::F32,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::InvalidParameter {
                    field: "num_blocks",
                    ..
                }
            ),
            "{err}"
        );
        assert!(KvGeometry::new(&stories260k_config(), 16, 1 << 20, KvCacheDtype::F32).is_ok());
    }

    #[test]
    fn a_bf16_entry_takes_half_the_bytes_of_an_f32_one_and_an_fp8_one_a_quarter() {
        let [f32_pool, bf16_pool, fp8_pool] =
            [KvCacheDtype::F32, KvCacheDtype::Bf16, KvCacheDtype::Fp8]
                .map(|dtype| KvGeometry::new(&stories260k_config(), 16, 8, dtype).unwrap());
        assert_eq!(f32_pool.bytes_per_entry(), 2 * bf16_pool.bytes_per_entry());
        assert_eq!(f32_pool.total_bytes(), 2 * bf16_pool.total_bytes());
        assert_eq!(f32_pool.bytes_per_entry(), 4 * fp8_pool.bytes_per_entry());
        assert_eq!(f32_pool.total_bytes(), 4 * fp8_pool.total_bytes());
    }
}
