//! The fuzz targets of `glimpse_engine::fuzz` under `cargo test`: every committed corpus file in
//! `fuzz/corpus/<target>/` is replayed, then a fixed number of seeded mutations of them (bit flips,
//! truncations, inserted and repeated bytes, splices of two inputs) — a bounded stand-in for the
//! coverage-guided runs of `scripts/fuzz.sh`, on stable Rust and in CI. A target that panics fails
//! the test with the input's corpus file and mutation round in the message.

mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use glimpse_engine::fuzz::{self, LookaheadTarget};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::repo_root;

/// Mutated inputs per target; enough to reach the error paths of each parser, small enough to
/// keep the four targets within a few seconds of a debug build.
const MUTATIONS: usize = 20_000;

/// The committed corpus of `target`, sorted by file name; a target's corpus is never empty.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = repo_root().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seed", dir.display());
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

/// One random edit of `input`, drawing a second input from `corpus` for splices.
fn mutate(input: &[u8], corpus: &[(PathBuf, Vec<u8>)], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    let at = |rng: &mut ChaCha8Rng, len: usize| rng.random_range(0..=len);
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..6) {
            0 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 => out.truncate(at(rng, out.len())),
            2 => {
                let i = at(rng, out.len());
                let byte = *[b'0', b'9', b'-', b'"', b'{', b'}', b'[', 0, 0xff]
                    .get(rng.random_range(0..9))
                    .unwrap();
                out.insert(i, byte);
            }
            3 if !out.is_empty() => {
                let start = rng.random_range(0..out.len());
                let end = rng.random_range(start..=out.len().min(start + 64));
                let copy = out[start..end].repeat(rng.random_range(1..8));
                let i = at(rng, out.len());
                out.splice(i..i, copy);
            }
            4 => {
                let other = &corpus[rng.random_range(0..corpus.len())].1;
                let cut = at(rng, out.len());
                out.truncate(cut);
                out.extend_from_slice(&other[at(rng, other.len())..]);
            }
            _ if out.len() >= 8 => {
                // Overwrite a little-endian number, such as the safetensors header length.
                let i = rng.random_range(0..=out.len() - 8);
                let value: u64 = [0, 1, 7, u32::MAX as u64, u64::MAX][rng.random_range(0..5)];
                out[i..i + 8].copy_from_slice(&value.to_le_bytes());
            }
            _ => {}
        }
    }
    out
}

/// Replays `target`'s corpus through `run`, then [`MUTATIONS`] mutated inputs.
fn replay(target: &str, run: impl Fn(&[u8])) {
    let corpus = corpus(target);
    let check = |what: &str, input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| run(input))).is_err() {
            panic!(
                "fuzz target `{target}` panicked on {what} ({} bytes)",
                input.len()
            );
        }
    };
    for (path, bytes) in &corpus {
        check(&path.display().to_string(), bytes);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(20);
    for round in 0..MUTATIONS {
        let (path, seed) = &corpus[rng.random_range(0..corpus.len())];
        let input = mutate(seed, &corpus, &mut rng);
        check(&format!("mutation {round} of {}", path.display()), &input);
    }
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
