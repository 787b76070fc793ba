//! The CUDA backend's host side, and its one boundary with the rest of Glimpse
//! ([`create_backend`], reached through [`super::create_backend`] with [`super::Device::Cuda`]).
//!
//! What exists today: the device probe ([`probe`]: driver, device index, compute capability,
//! free memory, each failure a typed [`EngineError`]), NVRTC compilation of the kernel files in
//! `kernels/` for the device's architecture with an on-disk cache ([`nvrtc`], [`kernel_cache`]),
//! and the per-step index arrays the kernels read ([`step_inputs`], [`compaction_plan`]). The
//! kernels themselves are tested on the CPU through the host shim of the `glimpse-cuda-kernels`
//! crate. The forward pass on the device (weights, KV pool, cuBLAS GEMMs, launches) is not built:
//! after a successful probe and kernel load, [`create_backend`] refuses with
//! [`EngineError::CudaForwardUnavailable`], so `--device cuda:N` fails at start-up, never
//! mid-request.
//!
//! cudarc is always compiled in, with no `cuda` cargo feature (docs/design.md §8): it loads
//! `libcuda` and `libnvrtc` at run time, so the build needs no CUDA, and it costs ~90 s once in a
//! clean debug build on two shared cores, while a feature would cost CI a second build of the
//! engine and server crates to lint and test this code.

pub mod compaction_plan;
pub mod kernel_cache;
pub mod nvrtc;
pub mod probe;
pub mod step_inputs;

use cudarc::nvrtc::Ptx;

use super::Backend;
use crate::error::{EngineError, Result};
use kernel_cache::{KernelCache, Origin};

/// Probes the device, compiles (or loads from the cache) every kernel for its architecture and
/// loads them into its context; then refuses, as this build has no CUDA forward pass.
///
/// Fails with the probe's and NVRTC's errors (what is missing, named), or
/// [`EngineError::CudaForwardUnavailable`] once everything they check is in place.
pub fn create_backend(ordinal: usize) -> Result<Box<dyn Backend>> {
    let info = probe::probe(ordinal)?;
    tracing::info!(ordinal = info.ordinal, device = %info, "CUDA device found");
    let arch = info.arch();
    let cache = KernelCache::new(KernelCache::default_dir());
    let kernels = cache.compile_all(&arch)?;
    let cached = kernels
        .iter()
        .filter(|k| k.origin == Origin::Cached)
        .count();
    let compiled = kernels.len() - cached;
    for kernel in kernels {
        info.context
            .load_module(Ptx::from_binary(kernel.cubin))
            .map_err(|error| EngineError::CudaDriver {
                ordinal: info.ordinal,
                call: "cuModuleLoadData",
                message: format!("{}: {error}", kernel.name),
            })?;
    }
    tracing::info!(
        arch,
        cached,
        compiled,
        cache = %cache.dir().display(),
        "CUDA kernels loaded"
    );
    Err(EngineError::CudaForwardUnavailable {
        ordinal: info.ordinal,
        device: info.to_string(),
    })
}
