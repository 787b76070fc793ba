//! The request fuzz targets of `glimpse_server::fuzz` under `cargo test`: every committed corpus
//! file in `fuzz/corpus/<target>/` is replayed, then a fixed number of seeded mutations of them
//! (the engine's [`glimpse_engine::fuzz::replay`], shared with its parser targets) — a bounded
//! stand-in for the coverage-guided runs of `scripts/fuzz.sh`, on stable Rust and in CI.

use std::path::{Path, PathBuf};

use glimpse_engine::fuzz::replay::replay;
use glimpse_server::fuzz::RequestTarget;

/// Mutated inputs per target, as many as the engine's parsers get: most mutations break the
/// JSON or protobuf, and those that do not tokenize a short prompt.
const MUTATIONS: usize = 20_000;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target() -> RequestTarget {
    RequestTarget::bundled(&repo_root())
}

#[test]
fn http_bodies_never_panic_the_conversion_or_the_validator() {
    let target = target();
    let corpus = repo_root().join("fuzz/corpus/http_body");
    replay(&corpus, MUTATIONS, |data| target.http_body(data));
}

#[test]
fn grpc_requests_never_panic_the_conversion_or_the_validator() {
    let target = target();
    let corpus = repo_root().join("fuzz/corpus/grpc_request");
    replay(&corpus, MUTATIONS, |data| target.grpc_request(data));
}
