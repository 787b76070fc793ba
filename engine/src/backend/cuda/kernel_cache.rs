//! The on-disk cache of compiled kernels: NVRTC takes a fraction of a second per kernel file, so
//! a restart on the same GPU loads the CUBINs it compiled last time instead.
//!
//! One file per kernel file and architecture, named by the SHA-256 of everything that decides the
//! CUBIN: the kernel's name and source, the portability header, the NVRTC options, the target
//! architecture and NVRTC's version. A changed kernel, option or compiler is a new key; stale
//! entries are never read again (delete the folder to reclaim them). Each entry is the SHA-256
//! of its CUBIN followed by the CUBIN, so a truncated or corrupted entry is detected, recompiled
//! and rewritten. Entries are written to a temporary file and renamed into place, so a reader
//! never sees half an entry. The cache is an optimisation: a folder that cannot be written only
//! costs a compile at the next start (logged as a warning).

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::nvrtc::{self, HEADER, KERNEL_FILES, KernelSource};
use crate::error::Result;

/// Where a compiled kernel came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A valid cache entry.
    Cached,
    /// NVRTC, just now (no entry, or a corrupted one).
    Compiled,
}

/// One kernel file compiled for the device.
#[derive(Debug, Clone)]
pub struct CompiledKernel {
    pub name: &'static str,
    pub cubin: Vec<u8>,
    pub origin: Origin,
}

/// A folder of compiled kernels.
#[derive(Debug, Clone)]
pub struct KernelCache {
    dir: PathBuf,
}

const DIGEST_BYTES: usize = 32;

/// The environment variable naming the cache folder.
pub const CACHE_DIR_VARIABLE: &str = "GLIMPSE_CUDA_KERNEL_CACHE";

impl KernelCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$GLIMPSE_CUDA_KERNEL_CACHE`; else `$XDG_CACHE_HOME/glimpse/cuda`, else
    /// `$HOME/.cache/glimpse/cuda`, else `glimpse/cuda` under the temporary folder (a process
    /// with none of these variables set).
    pub fn default_dir() -> PathBuf {
        let non_empty = |name| std::env::var_os(name).filter(|value| !value.is_empty());
        if let Some(dir) = non_empty(CACHE_DIR_VARIABLE) {
            return PathBuf::from(dir);
        }
        non_empty("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| non_empty("HOME").map(|home| Path::new(&home).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("glimpse")
            .join("cuda")
    }

    /// The folder entries live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every kernel file compiled for `arch` (`sm_90`), from the cache where a valid entry
    /// exists, else by NVRTC (and then stored).
    ///
    /// Fails with [`crate::EngineError::NvrtcNotFound`] without NVRTC (even when every entry is
    /// cached: the key needs NVRTC's version) and [`crate::EngineError::Nvrtc`] when a kernel
    /// does not compile.
    pub fn compile_all(&self, arch: &str) -> Result<Vec<CompiledKernel>> {
        let version = nvrtc::version()?;
        let options = nvrtc::compile_options(arch);
        KERNEL_FILES
            .iter()
            .map(|kernel| self.compile(kernel, arch, &options, version))
            .collect()
    }

    fn compile(
        &self,
        kernel: &KernelSource,
        arch: &str,
        options: &[String],
        version: (i32, i32),
    ) -> Result<CompiledKernel> {
        let path = self.entry_path(kernel, arch, options, version);
        match read_entry(&path) {
            Entry::Valid(cubin) => {
                return Ok(CompiledKernel {
                    name: kernel.name,
                    cubin,
                    origin: Origin::Cached,
                });
            }
            Entry::Corrupted => tracing::warn!(
                path = %path.display(),
                "corrupted CUDA kernel cache entry; recompiling"
            ),
            Entry::Missing => {}
        }
        let cubin = nvrtc::compile(kernel, arch, options)?;
        if let Err(error) = write_entry(&path, &cubin) {
            tracing::warn!(path = %path.display(), %error, "could not write the CUDA kernel cache");
        }
        Ok(CompiledKernel {
            name: kernel.name,
            cubin,
            origin: Origin::Compiled,
        })
    }

    /// `<dir>/<kernel stem>-<arch>-<key>.cubin`.
    pub fn entry_path(
        &self,
        kernel: &KernelSource,
        arch: &str,
        options: &[String],
        version: (i32, i32),
    ) -> PathBuf {
        let mut hasher = Sha256::new();
        let fields = [kernel.name, kernel.source, HEADER.source, arch];
        for field in fields.into_iter().chain(options.iter().map(String::as_str)) {
            // Length-prefixed, so no two field lists hash the same bytes.
            hasher.update((field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
        hasher.update(version.0.to_le_bytes());
        hasher.update(version.1.to_le_bytes());
        let key = hex(&hasher.finalize());
        let stem = kernel.name.trim_end_matches(".cu");
        self.dir.join(format!("{stem}-{arch}-{key}.cubin"))
    }
}

enum Entry {
    Valid(Vec<u8>),
    Missing,
    Corrupted,
}

fn read_entry(path: &Path) -> Entry {
    let Ok(bytes) = std::fs::read(path) else {
        return Entry::Missing;
    };
    if bytes.len() <= DIGEST_BYTES {
        return Entry::Corrupted;
    }
    let (digest, cubin) = bytes.split_at(DIGEST_BYTES);
    if Sha256::digest(cubin).as_slice() == digest {
        Entry::Valid(cubin.to_vec())
    } else {
        Entry::Corrupted
    }
}

fn write_entry(path: &Path, cubin: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .expect("entry paths are inside the cache folder");
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = std::fs::File::create(&temporary).and_then(|mut file| {
        file.write_all(&Sha256::digest(cubin))?;
        file.write_all(cubin)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    });
    if written.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineError;

    /// The NVRTC tests are `#[ignore]`d by a plain `cargo test` (they need libnvrtc, which a GPU-less
    /// machine lacks); `scripts/cuda-kernel-cache-check.sh`, a CI step, puts NVRTC from PyPI on the
    /// library path and runs them with `--include-ignored`. Fails, naming the library path, when
    /// NVRTC cannot be loaded.
    fn require_nvrtc() {
        assert!(
            nvrtc::is_available(),
            "libnvrtc.so.13 cannot be loaded (LD_LIBRARY_PATH={:?}); run these tests through \
             scripts/cuda-kernel-cache-check.sh",
            std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
        );
    }

    const ELF_MAGIC: &[u8] = b"\x7fELF";

    fn kernel_at(kernels: &[CompiledKernel], name: &str) -> usize {
        kernels.iter().position(|k| k.name == name).unwrap()
    }

    #[test]
    #[ignore = "needs libnvrtc.so.13: scripts/cuda-kernel-cache-check.sh"]
    fn every_kernel_compiles_then_loads_from_the_cache_and_a_damaged_entry_is_recompiled() {
        require_nvrtc();
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(dir.path().join("nested/cuda"));
        let mut sm_90 = Vec::new();
        for arch in ["sm_80", "sm_90"] {
            let compiled = cache.compile_all(arch).unwrap();
            let names: Vec<&str> = compiled.iter().map(|k| k.name).collect();
            let expected: Vec<&str> = KERNEL_FILES.iter().map(|k| k.name).collect();
            assert_eq!(names, expected);
            for kernel in &compiled {
                assert_eq!(
                    kernel.origin,
                    Origin::Compiled,
                    "{} for {arch}",
                    kernel.name
                );
                assert!(
                    kernel.cubin.starts_with(ELF_MAGIC),
                    "{} is a CUBIN",
                    kernel.name
                );
            }
            let cached = cache.compile_all(arch).unwrap();
            for (first, again) in compiled.iter().zip(&cached) {
                assert_eq!(again.origin, Origin::Cached, "{} for {arch}", again.name);
                assert_eq!(again.cubin, first.cubin, "{} for {arch}", again.name);
            }
            sm_90 = compiled;
        }
        let entries = std::fs::read_dir(cache.dir()).unwrap().count();
        assert_eq!(
            entries,
            2 * KERNEL_FILES.len(),
            "one entry per kernel and arch, no leftovers"
        );

        // One entry with a flipped byte, another cut short: both recompiled, the rest cached.
        let version = nvrtc::version().unwrap();
        let options = nvrtc::compile_options("sm_90");
        let path_of = |kernel| cache.entry_path(kernel, "sm_90", &options, version);
        let flipped = path_of(&KERNEL_FILES[0]);
        let mut bytes = std::fs::read(&flipped).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&flipped, bytes).unwrap();
        let truncated = path_of(&KERNEL_FILES[1]);
        std::fs::write(&truncated, b"short").unwrap();
        let repaired = cache.compile_all("sm_90").unwrap();
        for (kernel, before) in repaired.iter().zip(&sm_90) {
            let damaged =
                kernel.name == KERNEL_FILES[0].name || kernel.name == KERNEL_FILES[1].name;
            let expected = if damaged {
                Origin::Compiled
            } else {
                Origin::Cached
            };
            assert_eq!(kernel.origin, expected, "{}", kernel.name);
            assert_eq!(kernel.cubin, before.cubin, "{}", kernel.name);
        }
        let again = cache.compile_all("sm_90").unwrap();
        assert!(
            again.iter().all(|k| k.origin == Origin::Cached),
            "rewritten entries are valid"
        );
        let compact = kernel_at(&again, "compact.cu");
        assert_eq!(again[compact].cubin, sm_90[compact].cubin);
    }

    #[test]
    #[ignore = "needs libnvrtc.so.13: scripts/cuda-kernel-cache-check.sh"]
    fn a_kernel_that_does_not_compile_reports_nvrtcs_log() {
        require_nvrtc();
        let broken = KernelSource {
            name: "broken.cu",
            source: "#include \"glimpse_cuda.cuh\"\nGLIMPSE_KERNEL void k() { undeclared_call(); }\n",
        };
        let error = nvrtc::compile(&broken, "sm_90", &nvrtc::compile_options("sm_90")).unwrap_err();
        assert!(matches!(error, EngineError::Nvrtc { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("broken.cu for sm_90") && message.contains("undeclared_call"),
            "{message}"
        );
    }

    #[test]
    fn the_entry_key_covers_source_options_architecture_and_compiler_version() {
        let cache = KernelCache::new("/cache");
        let kernel = KERNEL_FILES[0];
        let options = nvrtc::compile_options("sm_90");
        let base = cache.entry_path(&kernel, "sm_90", &options, (13, 0));
        assert!(base.starts_with("/cache"));
        assert!(
            base.to_string_lossy().contains("cache_write-sm_90-"),
            "{}",
            base.display()
        );
        let edited = KernelSource {
            source: "// edited\n",
            ..kernel
        };
        let variants = [
            cache.entry_path(&edited, "sm_90", &options, (13, 0)),
            cache.entry_path(&kernel, "sm_90", &["--std=c++17".into()], (13, 0)),
            cache.entry_path(&kernel, "sm_80", &options, (13, 0)),
            cache.entry_path(&kernel, "sm_90", &options, (13, 1)),
        ];
        for variant in variants {
            assert_ne!(variant, base);
        }
        assert_eq!(cache.entry_path(&kernel, "sm_90", &options, (13, 0)), base);
    }
}
