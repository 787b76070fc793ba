//! Compiles `glimpse/v1/*.proto` with `protox` (pure Rust, so no `protoc` on the build
//! machine) into prost messages and tonic client and server stubs, and writes the
//! encoded file descriptor set that gRPC server reflection serves.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &["glimpse/v1/generation.proto"];
/// Matches the name `lib.rs` passes to `tonic::include_file_descriptor_set!`.
const DESCRIPTOR_FILE: &str = "glimpse_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Source info keeps the .proto comments: prost turns them into rustdoc, and
    // reflection clients (grpcurl describe) show them.
    let fds = protox::Compiler::new(["."])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join(DESCRIPTOR_FILE), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    println!("cargo:rerun-if-changed=glimpse");
    Ok(())
}
