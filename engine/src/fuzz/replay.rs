//! The bounded stand-in for coverage-guided fuzzing that `cargo test` runs on stable Rust: every
//! committed corpus file of a target is replayed, then a fixed number of seeded mutations of them
//! (bit flips, truncations, inserted and repeated bytes, overwritten little-endian lengths,
//! splices of two inputs). Deterministic: a failure names the corpus file and mutation round, and
//! the same round fails again. Shared by the engine's and the server's `fuzz_corpus` tests.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The files of the corpus folder `dir`, sorted by name, with their bytes. Panics when the folder
/// cannot be read or holds no seed: a target's corpus is never empty.
pub fn corpus(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seed", dir.display());
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, bytes)
        })
        .collect()
}

/// One random edit of `input`, drawing a second input from `corpus` for splices.
pub fn mutate(input: &[u8], corpus: &[(PathBuf, Vec<u8>)], rng: &mut ChaCha8Rng) -> Vec<u8> {
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
                const BYTES: [u8; 9] = [b'0', b'9', b'-', b'"', b'{', b'}', b'[', 0, 0xff];
                out.insert(i, BYTES[rng.random_range(0..BYTES.len())]);
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

/// Replays the corpus in `dir` through `run`, then `mutations` mutated inputs; panics naming the
/// target, the input and the round when `run` panics.
pub fn replay(dir: &Path, mutations: usize, run: impl Fn(&[u8])) {
    let corpus = corpus(dir);
    let target = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
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
    for round in 0..mutations {
        let (path, seed) = &corpus[rng.random_range(0..corpus.len())];
        let input = mutate(seed, &corpus, &mut rng);
        check(&format!("mutation {round} of {}", path.display()), &input);
    }
}
