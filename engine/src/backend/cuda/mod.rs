//! The CUDA backend's host side, and its one boundary with the rest of Glimpse
//! ([`create_backend`], reached through [`super::create_backend`] with [`super::Device::Cuda`]).
//!
//! **The forward pass has not yet run on a device.** It compiles and its host logic is
//! unit-tested on machines without a GPU, and every kernel it launches is tested on the CPU
//! through the host shim of the `glimpse-cuda-kernels` crate; `scripts/gpu-check.sh` is the
//! check that runs it on a lent GPU against the CPU backend.
//!
//! The modules, one job each: the device probe ([`probe`]: driver, device index, compute
//! capability, free memory, each failure a typed [`EngineError`]); NVRTC compilation of the
//! kernel files in `kernels/` for the device's architecture with an on-disk cache ([`nvrtc`],
//! [`kernel_cache`]); the per-step index arrays the kernels read ([`step_inputs`], `step`,
//! [`compaction_plan`]); the device handle and raw addresses (`gpu`), reused step buffers
//! (`scratch`), the activation layout (`activations`); weights uploaded in bf16 (`weights`), the
//! paged KV pool and its layout (`pool`); launch sizing (`launch`) and typed kernel launches
//! (`kernels`), cuBLAS GEMMs (`gemm`), eviction per layer (`evict`), one pass's layers (`pass`);
//! and `CudaBackend` (`backend`), which builds all this and runs each pass.
//!
//! What the backend refuses rather than computes wrongly, each with
//! [`EngineError::CudaUnsupported`]: an f32 KV pool (the kernels store bf16), and a batch whose
//! attention tile or eviction scoring queries would exceed the kernels' shared memory.
//!
//! cudarc is always compiled in, with no `cuda` cargo feature (docs/design.md §8): it loads
//! `libcuda` and `libnvrtc` at run time, so the build needs no CUDA, and it costs ~90 s once in a
//! clean debug build on two shared cores, while a feature would cost CI a second build of the
//! engine and server crates to lint and test this code.

mod activations;
mod backend;
pub mod compaction_plan;
mod evict;
mod gemm;
mod gpu;
pub mod kernel_cache;
mod kernels;
mod launch;
pub mod nvrtc;
mod pass;
mod pool;
pub mod probe;
mod scratch;
mod step;
pub mod step_inputs;
mod weights;

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::nvrtc::Ptx;

use super::Backend;
use crate::config::KvCacheDtype;
use crate::error::{EngineError, Result};
use crate::lookahead::LookaheadModule;
use crate::model::Model;
use backend::CudaBackend;
use gpu::Gpu;
use kernel_cache::{KernelCache, Origin};
use kernels::{HeadShape, Kernels};

/// Builds the CUDA backend on device `ordinal`: probes the device, compiles (or loads from the
/// cache) every kernel for its architecture, loads them, then uploads `model` and allocates a KV
/// pool of `num_blocks` blocks of `block_size` entries in `kv_dtype`, with `lookahead`'s rows
/// and adapters if given (`CudaBackend::new`).
///
/// Fails with the probe's and NVRTC's errors (what is missing, named),
/// [`EngineError::CudaUnsupported`] for an f32 KV pool, and [`EngineError::CudaDriver`] when a
/// module, an allocation or an upload fails.
pub fn create_backend(
    ordinal: usize,
    model: &Model,
    block_size: usize,
    num_blocks: usize,
    kv_dtype: KvCacheDtype,
    lookahead: Option<Arc<LookaheadModule>>,
) -> Result<Box<dyn Backend>> {
    let info = probe::probe(ordinal)?;
    tracing::info!(ordinal = info.ordinal, device = %info, "CUDA device found");
    backend::check_kv_dtype(info.ordinal, kv_dtype)?;
    let arch = info.arch();
    let cache = KernelCache::new(KernelCache::default_dir());
    let compiled_kernels = cache.compile_all(&arch)?;
    let cached = compiled_kernels
        .iter()
        .filter(|k| k.origin == Origin::Cached)
        .count();
    let compiled = compiled_kernels.len() - cached;
    let mut modules = HashMap::new();
    for kernel in compiled_kernels {
        let module = info
            .context
            .load_module(Ptx::from_binary(kernel.cubin))
            .map_err(|error| EngineError::CudaDriver {
                ordinal: info.ordinal,
                call: "cuModuleLoadData",
                message: format!("{}: {error}", kernel.name),
            })?;
        modules.insert(kernel.name, module);
    }
    tracing::info!(
        arch,
        cached,
        compiled,
        cache = %cache.dir().display(),
        "CUDA kernels loaded"
    );
    let gpu = Gpu::new(info.ordinal, Arc::clone(&info.context))?;
    let shape = HeadShape {
        num_heads: model.config.num_heads,
        num_kv_heads: model.config.num_kv_heads,
        head_dim: model.config.head_dim,
        block_size,
    };
    let kernels = Kernels::load(&gpu, &modules, shape)?;
    Ok(Box::new(CudaBackend::new(
        gpu, kernels, model, block_size, num_blocks, kv_dtype, lookahead,
    )?))
}
