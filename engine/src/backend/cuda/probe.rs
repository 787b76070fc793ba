//! Finding the GPU `--device cuda:N` names: the driver library, the device, its compute
//! capability and free memory. Each missing piece is its own [`EngineError`] variant saying what
//! to fix, because the usual failures are deployment mistakes (no driver in the container, the
//! GPU not exposed, the wrong index), not bugs.
//!
//! The driver (`libcuda.so.1`) is opened at run time through cudarc's dynamic loading, so a
//! binary without a GPU starts; every driver call is guarded by the library's presence (cudarc
//! panics on a call into a library it could not open).

use std::sync::Arc;

use cudarc::driver::{CudaContext, DriverError, result, sys};

use crate::error::{EngineError, Result};

/// The oldest compute capability the backend targets: bf16 weights go through cuBLAS's bf16
/// tensor-core GEMMs, which start with Ampere (8.0); CI compiles the kernels for sm_80 and sm_90.
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// A GPU found by [`probe`], with its primary context bound to the calling thread.
pub struct CudaDeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub free_bytes: usize,
    pub total_bytes: usize,
    pub context: Arc<CudaContext>,
}

impl CudaDeviceInfo {
    /// The architecture NVRTC compiles for (see [`arch_of`]).
    pub fn arch(&self) -> String {
        arch_of(self.compute_capability)
    }
}

impl std::fmt::Display for CudaDeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (major, minor) = self.compute_capability;
        let gib = |bytes: usize| bytes as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "{}, compute capability {major}.{minor}, {:.1} of {:.1} GiB free",
            self.name,
            gib(self.free_bytes),
            gib(self.total_bytes)
        )
    }
}

/// The NVRTC architecture of a compute capability: `sm_90` for 9.0, `sm_120` for 12.0.
pub fn arch_of((major, minor): (i32, i32)) -> String {
    format!("sm_{major}{minor}")
}

/// Opens the driver, checks that device `ordinal` exists and is new enough, and reads its free
/// memory.
///
/// Fails with [`EngineError::CudaDriverNotFound`] without `libcuda`,
/// [`EngineError::CudaDeviceOutOfRange`] naming the device count,
/// [`EngineError::CudaComputeCapability`] for a GPU older than [`MIN_COMPUTE_CAPABILITY`], and
/// [`EngineError::CudaDriver`] naming the call that failed otherwise.
pub fn probe(ordinal: usize) -> Result<CudaDeviceInfo> {
    // SAFETY: only tries to open the library; calls nothing in it.
    if !unsafe { sys::is_culib_present() } {
        return Err(EngineError::CudaDriverNotFound { ordinal });
    }
    let count = device_count(ordinal)?;
    if ordinal >= count {
        return Err(EngineError::CudaDeviceOutOfRange { ordinal, count });
    }
    let driver_error = |call: &'static str| {
        move |error: DriverError| EngineError::CudaDriver {
            ordinal,
            call,
            message: error.to_string(),
        }
    };
    let context = CudaContext::new(ordinal).map_err(driver_error("cuDevicePrimaryCtxRetain"))?;
    let name = context.name().map_err(driver_error("cuDeviceGetName"))?;
    let compute_capability = context
        .compute_capability()
        .map_err(driver_error("cuDeviceGetAttribute"))?;
    if compute_capability < MIN_COMPUTE_CAPABILITY {
        return Err(EngineError::CudaComputeCapability {
            ordinal,
            name,
            actual: compute_capability,
            required: MIN_COMPUTE_CAPABILITY,
        });
    }
    let (free_bytes, total_bytes) = context
        .mem_get_info()
        .map_err(driver_error("cuMemGetInfo"))?;
    Ok(CudaDeviceInfo {
        ordinal,
        name,
        compute_capability,
        free_bytes,
        total_bytes,
        context,
    })
}

/// Devices the driver sees; 0 when it initialises to "no device" (a driver without a GPU
/// exposed to this process).
fn device_count(ordinal: usize) -> Result<usize> {
    let failed = |call: &'static str, error: DriverError| EngineError::CudaDriver {
        ordinal,
        call,
        message: error.to_string(),
    };
    match result::init() {
        Ok(()) => {}
        Err(DriverError(sys::CUresult::CUDA_ERROR_NO_DEVICE)) => return Ok(0),
        Err(error) => return Err(failed("cuInit", error)),
    }
    let count = result::device::get_count().map_err(|error| failed("cuDeviceGetCount", error))?;
    Ok(usize::try_from(count).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_join_major_and_minor() {
        assert_eq!(arch_of((8, 0)), "sm_80");
        assert_eq!(arch_of((8, 6)), "sm_86");
        assert_eq!(arch_of((9, 0)), "sm_90");
        assert_eq!(arch_of((12, 0)), "sm_120");
    }

    #[test]
    fn without_the_nvidia_driver_the_probe_says_to_install_it() {
        // A real probe: CI machines have no driver; on one with a GPU there is nothing to check.
        if std::path::Path::new("/proc/driver/nvidia").exists() {
            return;
        }
        let error = probe(0).err().expect("no driver here");
        assert!(
            matches!(error, EngineError::CudaDriverNotFound { ordinal: 0 }),
            "{error}"
        );
    }

    #[test]
    fn device_errors_name_the_index_the_count_and_the_capability() {
        let out_of_range = EngineError::CudaDeviceOutOfRange {
            ordinal: 3,
            count: 2,
        }
        .to_string();
        assert!(
            out_of_range.contains("cuda:3 is out of range")
                && out_of_range.contains("sees 2 CUDA device(s)"),
            "{out_of_range}"
        );
        let old = EngineError::CudaComputeCapability {
            ordinal: 0,
            name: "Tesla T4".into(),
            actual: (7, 5),
            required: MIN_COMPUTE_CAPABILITY,
        }
        .to_string();
        assert!(
            old.contains("(Tesla T4) has compute capability 7.5") && old.contains("needs 8.0"),
            "{old}"
        );
    }
}
