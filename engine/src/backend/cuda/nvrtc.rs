//! Compiles Glimpse's CUDA kernel files to a CUBIN for one GPU architecture with NVRTC, the
//! CUDA run-time compiler, at start-up: the binary carries the `.cu` sources (embedded with
//! `include_str!` by the engine's build script, every file of `kernels/`), not machine code for a
//! fixed list of GPUs, and the build needs no CUDA.
//!
//! NVRTC's library (`libnvrtc.so.13`) is opened at run time through cudarc's dynamic loading;
//! its absence is [`EngineError::NvrtcNotFound`], never a panic. NVRTC reads no files, so the
//! portability header is handed over in memory under the name the kernels include. Results are
//! cached on disk by [`super::kernel_cache`]; this module only compiles.

use std::ffi::{CStr, CString, c_char, c_int};

use cudarc::nvrtc::sys;

use crate::error::{EngineError, Result};

/// The portability header every kernel file includes, by the name it includes it.
pub const HEADER: KernelSource = KernelSource {
    name: "glimpse_cuda.cuh",
    source: include_str!("kernels/glimpse_cuda.cuh"),
};

/// Every kernel file of `kernels/`, in name order (listed by the engine's build script), compiled
/// one NVRTC program each.
pub const KERNEL_FILES: &[KernelSource] =
    include!(concat!(env!("OUT_DIR"), "/cuda_kernel_files.rs"));

/// One CUDA source file: its file name and text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSource {
    pub name: &'static str,
    pub source: &'static str,
}

/// NVRTC's options for `arch` (`sm_90`: a CUBIN for that architecture). Part of every cache
/// key: changing them recompiles.
pub fn compile_options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()]
}

/// Whether NVRTC's shared library can be opened (on the library path, or the CUDA runtime
/// image's).
pub fn is_available() -> bool {
    // SAFETY: only tries to open the library; calls nothing in it.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's `(major, minor)` version.
///
/// Fails with [`EngineError::NvrtcNotFound`] when the library cannot be opened.
pub fn version() -> Result<(i32, i32)> {
    require_library()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both pointers are valid for the call.
    check(
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) },
        "nvrtcVersion",
        "",
        "",
    )?;
    Ok((major, minor))
}

/// Compiles `kernel` (with [`HEADER`] available to `#include`) under `options` and returns the
/// CUBIN.
///
/// Fails with [`EngineError::NvrtcNotFound`] without the library and [`EngineError::Nvrtc`]
/// with NVRTC's log when the source does not compile.
pub fn compile(kernel: &KernelSource, arch: &str, options: &[String]) -> Result<Vec<u8>> {
    require_library()?;
    let program = Program::new(kernel, arch)?;
    program.compile(options)?;
    program.cubin()
}

/// An NVRTC program, destroyed on drop.
struct Program<'a> {
    handle: sys::nvrtcProgram,
    kernel: &'a KernelSource,
    arch: &'a str,
}

impl<'a> Program<'a> {
    fn new(kernel: &'a KernelSource, arch: &'a str) -> Result<Self> {
        let source = c_string(kernel.source, kernel, arch)?;
        let name = c_string(kernel.name, kernel, arch)?;
        let header = c_string(HEADER.source, kernel, arch)?;
        let header_name = c_string(HEADER.name, kernel, arch)?;
        let (headers, include_names) = ([header.as_ptr()], [header_name.as_ptr()]);
        let mut handle: sys::nvrtcProgram = std::ptr::null_mut();
        // SAFETY: every pointer is a live NUL-terminated string for the call; NVRTC copies them.
        let status = unsafe {
            sys::nvrtcCreateProgram(
                &mut handle,
                source.as_ptr(),
                name.as_ptr(),
                1,
                headers.as_ptr(),
                include_names.as_ptr(),
            )
        };
        check(status, "nvrtcCreateProgram", kernel.name, arch)?;
        Ok(Self {
            handle,
            kernel,
            arch,
        })
    }

    fn compile(&self, options: &[String]) -> Result<()> {
        let options = options
            .iter()
            .map(|option| c_string(option, self.kernel, self.arch))
            .collect::<Result<Vec<_>>>()?;
        let pointers: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let count = c_int::try_from(pointers.len()).expect("a handful of NVRTC options");
        // SAFETY: `handle` is a live program; the option pointers outlive the call.
        let status = unsafe { sys::nvrtcCompileProgram(self.handle, count, pointers.as_ptr()) };
        if status == sys::nvrtcResult::NVRTC_SUCCESS {
            return Ok(());
        }
        Err(EngineError::Nvrtc {
            kernel: self.kernel.name.into(),
            arch: self.arch.into(),
            message: format!("{}\n{}", error_string(status), self.log()),
        })
    }

    /// The compile log, or a note that it could not be read.
    fn log(&self) -> String {
        let mut size = 0usize;
        // SAFETY: `handle` is a live program and `size` a valid out-pointer.
        if unsafe { sys::nvrtcGetProgramLogSize(self.handle, &mut size) }
            != sys::nvrtcResult::NVRTC_SUCCESS
        {
            return "(no compile log)".into();
        }
        let mut log = vec![0u8; size];
        // SAFETY: `log` holds the `size` bytes NVRTC said the log needs.
        let status = unsafe { sys::nvrtcGetProgramLog(self.handle, log.as_mut_ptr().cast()) };
        if status != sys::nvrtcResult::NVRTC_SUCCESS {
            return "(no compile log)".into();
        }
        CStr::from_bytes_until_nul(&log)
            .map(|log| log.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn cubin(&self) -> Result<Vec<u8>> {
        let mut size = 0usize;
        // SAFETY: `handle` is a compiled program and `size` a valid out-pointer.
        let status = unsafe { sys::nvrtcGetCUBINSize(self.handle, &mut size) };
        check(status, "nvrtcGetCUBINSize", self.kernel.name, self.arch)?;
        let mut cubin = vec![0u8; size];
        // SAFETY: `cubin` holds the `size` bytes NVRTC said the CUBIN needs.
        let status = unsafe { sys::nvrtcGetCUBIN(self.handle, cubin.as_mut_ptr().cast()) };
        check(status, "nvrtcGetCUBIN", self.kernel.name, self.arch)?;
        if cubin.is_empty() {
            return Err(EngineError::Nvrtc {
                kernel: self.kernel.name.into(),
                arch: self.arch.into(),
                message: "NVRTC returned an empty CUBIN (is the architecture virtual, \
                          compute_XY instead of sm_XY?)"
                    .into(),
            });
        }
        Ok(cubin)
    }
}

impl Drop for Program<'_> {
    fn drop(&mut self) {
        // SAFETY: `handle` came from nvrtcCreateProgram and is destroyed once. A failure here
        // leaks one program at worst.
        unsafe { sys::nvrtcDestroyProgram(&mut self.handle) };
    }
}

fn require_library() -> Result<()> {
    if is_available() {
        Ok(())
    } else {
        Err(EngineError::NvrtcNotFound)
    }
}

fn check(status: sys::nvrtcResult, call: &str, kernel: &str, arch: &str) -> Result<()> {
    if status == sys::nvrtcResult::NVRTC_SUCCESS {
        return Ok(());
    }
    Err(EngineError::Nvrtc {
        kernel: kernel.into(),
        arch: arch.into(),
        message: format!("{call}: {}", error_string(status)),
    })
}

fn error_string(status: sys::nvrtcResult) -> String {
    // SAFETY: NVRTC returns a static string for every status.
    let text = unsafe { sys::nvrtcGetErrorString(status) };
    if text.is_null() {
        return format!("{status:?}");
    }
    // SAFETY: non-null, NUL-terminated and static (above).
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

fn c_string(text: &str, kernel: &KernelSource, arch: &str) -> Result<CString> {
    CString::new(text).map_err(|_| EngineError::Nvrtc {
        kernel: kernel.name.into(),
        arch: arch.into(),
        message: "a NUL byte in the source or options".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_file_of_the_kernels_folder_is_embedded() {
        let folder =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend/cuda/kernels");
        let mut on_disk: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".cu"))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = KERNEL_FILES.iter().map(|k| k.name).collect();
        assert_eq!(on_disk, embedded);
    }
}
