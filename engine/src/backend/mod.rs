//! Backends execute [`ForwardBatch`]es on a device and own that device's paged KV pool.
//!
//! Callers (the engine loop, tests, benchmarks) see only the [`Backend`] trait: they never touch
//! tensors or device memory, so the CUDA backend slots in beside the CPU one without changing them.
//! A backend is chosen once at start-up from a [`Device`], and builds its own weights from the
//! device-neutral [`Model`] (checkpoint tensors in their file dtype): the CPU backend widens and
//! packs them for its GEMM, the CUDA backend uploads them in bf16. Nothing outside a backend's module
//! names its types; callers go through [`create_backend`].

pub mod cpu;
pub mod cuda;
mod eviction_pass;
mod fused;
mod kv_geometry;
mod validate;

pub use kv_geometry::KvGeometry;

use std::sync::Arc;

use crate::batch::{ForwardBatch, ForwardOutput};
use crate::config::KvCacheDtype;
use crate::error::{EngineError, Result};
use crate::lookahead::LookaheadModule;
use crate::model::Model;

/// A device that runs the model and holds the paged KV pool.
pub trait Backend: Send {
    /// Shape of the KV pool: block size, block count, bytes per block.
    fn geometry(&self) -> &KvGeometry;

    /// Runs one varlen forward pass. Writes every scheduled token's K/V into its sequence's cache
    /// entries (through the block table) and fills `out` with the requested logits rows.
    ///
    /// A sequence whose chunk carries an eviction policy has its prompt scored, selected and
    /// compacted into its leading entries in the same pass (per layer, after that layer's
    /// attention); `out.evictions` reports what each kept. Its blocks are not freed here: the
    /// caller hands the trailing ones back to its allocator.
    ///
    /// Fails with [`EngineError::InvalidBatch`] when a sequence's block table does not cover its
    /// entries, a block id is outside the pool, a token id is outside the vocabulary, a position
    /// is beyond the model's length or an eviction request cannot be met (scoring window not in
    /// the chunk, cache already compacted), and with [`EngineError::InvalidParameter`] for an
    /// invalid policy or LookaheadKV without a module; the cache is untouched in those cases.
    fn forward(&mut self, batch: &ForwardBatch<'_>, out: &mut ForwardOutput) -> Result<()>;
}

/// Where the model runs: `--device cpu`, `cuda` or `cuda:N` (this parser is the flag's one
/// home; every subcommand with the flag parses through it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| EngineError::InvalidParameter {
                    field: "device",
                    message: format!("expected `cpu`, `cuda` or `cuda:N`, got `{s}`"),
                }),
        }
    }
}

/// Builds the backend for `device` with a pool of `num_blocks` blocks of `block_size` entries
/// stored in `kv_dtype`, and the LookaheadKV module if one was loaded (without it, the lookahead policy is refused).
///
/// Fails for a CUDA device with the probe's error naming what is missing (driver, device,
/// compute capability, NVRTC) and with what [`cuda::create_backend`] refuses.
pub fn create_backend(
    device: Device,
    model: &Model,
    block_size: usize,
    num_blocks: usize,
    kv_dtype: KvCacheDtype,
    lookahead: Option<Arc<LookaheadModule>>,
) -> Result<Box<dyn Backend>> {
    match device {
        Device::Cpu => Ok(Box::new(cpu::CpuBackend::new(
            model, block_size, num_blocks, kv_dtype, lookahead,
        )?)),
        Device::Cuda(ordinal) => {
            cuda::create_backend(ordinal, model, block_size, num_blocks, kv_dtype, lookahead)
        }
    }
}
