//! The fuzz targets of `glimpse_engine::fuzz` under `cargo test`: every committed corpus file in
//! `fuzz/corpus/<target>/` is replayed, then a fixed number of seeded mutations of them
//! ([`glimpse_engine::fuzz::replay`]) — a bounded stand-in for the coverage-guided runs of
//! `scripts/fuzz.sh`, on stable Rust and in CI. A target that panics fails the test with the
//! input's corpus file and mutation round in the message.

mod support;

use glimpse_engine::fuzz::{self, LookaheadTarget};
use support::repo_root;

/// Mutated inputs per target; enough to reach the error paths of each parser, small enough to
/// keep the four targets within a few seconds of a debug build.
const MUTATIONS: usize = 20_000;

/// Replays `target`'s committed corpus and [`MUTATIONS`] seeded mutations of it through `run`.
fn replay(target: &str, run: impl Fn(&[u8])) {
    fuzz::replay::replay(
        &repo_root().join("fuzz/corpus").join(target),
        MUTATIONS,
        run,
    );
}

#[test]
fn config_json_never_panics() {
    replay("config_json", fuzz::config_json);
}

#[test]
fn safetensors_header_never_panics() {
    replay("safetensors_header", fuzz::safetensors_header);
}

#[test]
fn lookahead_file_never_panics() {
    let target = LookaheadTarget::new(&repo_root().join("models/stories260K")).unwrap();
    replay("lookahead_file", |data| target.run(data));
}

#[test]
fn chat_template_never_panics() {
    replay("chat_template", fuzz::chat_template);
}
