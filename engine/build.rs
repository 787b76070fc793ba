//! Embeds every CUDA kernel file of `src/backend/cuda/kernels/` into the engine, for NVRTC to
//! compile at start-up (`backend/cuda/nvrtc.rs`). The folder is the list: a new `.cu` file is
//! compiled, cached and tested without being named anywhere else.

use std::path::Path;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest_dir).join("src/backend/cuda/kernels");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let name = entry.expect("a readable kernels folder").file_name();
            name.into_string().expect("kernel file names are UTF-8")
        })
        .filter(|name| name.ends_with(".cu"))
        .collect();
    names.sort();
    let mut list = String::from("&[\n");
    for name in &names {
        let path = dir.join(name);
        list.push_str(&format!(
            "    KernelSource {{ name: {name:?}, source: include_str!({:?}) }},\n",
            path.display().to_string()
        ));
    }
    list.push_str("]\n");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out_dir).join("cuda_kernel_files.rs");
    std::fs::write(&out, list).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
