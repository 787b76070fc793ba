//! Builds Glimpse's CUDA kernels (`engine/src/backend/cuda/kernels/*.cu`) with the C++ compiler
//! under the host shim (`shim/shim.h`), one C ABI launcher per kernel in `shim/*.cpp`.
//!
//! `GLIMPSE_SHIM_SANITIZE=address|thread` rebuilds them under AddressSanitizer or
//! ThreadSanitizer (the latter with all threads of a block running at once); the test binary
//! must then run with the sanitizer's runtime preloaded (`scripts/cuda-shim-sanitizers.sh`).

use std::path::Path;

fn main() {
    let kernels = Path::new("../engine/src/backend/cuda/kernels");
    let shim = Path::new("shim");
    for dir in [kernels, shim] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!("cargo:rerun-if-env-changed=GLIMPSE_SHIM_SANITIZE");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .include(kernels)
        .include(shim)
        .flag("-pthread")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true);
    let runtime = match std::env::var("GLIMPSE_SHIM_SANITIZE").as_deref() {
        Ok("address") => {
            build
                .flag("-fsanitize=address")
                .flag("-fno-omit-frame-pointer");
            Some("libasan.so")
        }
        Ok("thread") => {
            build
                .flag("-fsanitize=thread")
                .define("GLIMPSE_SHIM_CONCURRENT", None);
            Some("libtsan.so")
        }
        Ok(other) if !other.is_empty() => {
            panic!("GLIMPSE_SHIM_SANITIZE must be `address` or `thread`, got `{other}`")
        }
        _ => None,
    };
    for launcher in [
        "embedding",
        "rms_norm",
        "rms_norm_without_sync",
        "rope",
        "silu_mul",
        "round_to_bf16",
        "cache_write",
        "decode_attention",
        "compact",
        "prefill_attention",
        "prefill_attention_off_by_one",
        "eviction_scoring",
        "top_k",
    ] {
        build.file(shim.join(format!("{launcher}.cpp")));
    }
    build.compile("glimpse_cuda_shim");
    // After the shim library, so the linker resolves the sanitizer calls in it.
    if let Some(runtime) = runtime {
        println!("cargo:rustc-link-arg={}", runtime_path(&build, runtime));
    }
}

/// Where the C++ compiler keeps the sanitizer runtime `file`.
fn runtime_path(build: &cc::Build, file: &str) -> String {
    let output = build
        .get_compiler()
        .to_command()
        .arg(format!("-print-file-name={file}"))
        .output()
        .expect("the C++ compiler runs");
    String::from_utf8(output.stdout)
        .expect("the compiler prints a path")
        .trim()
        .to_owned()
}
