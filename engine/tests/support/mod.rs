//! Helpers shared by the engine's integration tests: fixture references and an offline runner
//! that hands out blocks in a scrambled order (so tests prove attention really follows the block
//! table rather than assuming contiguous blocks).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use glimpse_engine::batch::LogitsRequest;
use glimpse_engine::config::KvCacheDtype;
use glimpse_engine::lookahead::LookaheadModule;
use glimpse_engine::model::Model;
use glimpse_engine::runner::{OfflineRunner, RunnerSequence};
use safetensors::SafeTensors;

/// The environment variable naming the repository root at run time, for a test binary run away
/// from the tree it was built in (the device run of scripts/gpu-check.sh carries the binary to
/// another machine's copy of the repository).
pub const REPO_ROOT_VARIABLE: &str = "GLIMPSE_REPO_ROOT";

/// `$GLIMPSE_REPO_ROOT`, else the repository the test was built in.
pub fn repo_root() -> PathBuf {
    match std::env::var_os(REPO_ROOT_VARIABLE) {
        Some(root) if !root.is_empty() => PathBuf::from(root),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf(),
    }
}

pub fn fixture_dir(name: &str) -> PathBuf {
    repo_root().join("engine/tests/fixtures").join(name)
}

pub const FIXTURES: &[&str] = &[
    "llama_gqa",
    "llama3_rope_tied",
    "llama_linear_rope",
    "mistral",
    "qwen2_bias",
    "qwen3_qknorm",
    "llama_bf16",
    "llama_sharded",
];

/// Reference outputs of `transformers` for one prompt.
pub struct PromptReference {
    pub prompt: Vec<u32>,
    /// `[prompt_len][vocab]`.
    pub prefill_logits: Vec<Vec<f32>>,
    /// Row j: logits whose argmax is `greedy_ids[j]`; row 0 is the last prefill row.
    pub decode_logits: Vec<Vec<f32>>,
    pub greedy_ids: Vec<u32>,
}

pub fn load_references(dir: &Path) -> Vec<PromptReference> {
    load_references_from(&dir.join("reference.safetensors"), "")
}

/// The references in the safetensors file `path` whose tensor names start with
/// `p{i}.{prefix}` (`prefix` "" for transformers' own run, "f32_" for the float32 run on bf16
/// matrices in `reference_bf16.safetensors`); prompts are always `p{i}.prompt_ids`.
pub fn load_references_from(path: &Path, prefix: &str) -> Vec<PromptReference> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> Vec<u32> {
        let t = st.tensor(name).unwrap();
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect()
    };
    let rows = |name: &str| -> Vec<Vec<f32>> {
        let t = st.tensor(name).unwrap();
        let width = t.shape()[1];
        let flat: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        flat.chunks(width).map(<[f32]>::to_vec).collect()
    };
    (0..)
        .take_while(|i| st.tensor(&format!("p{i}.prompt_ids")).is_ok())
        .map(|i| PromptReference {
            prompt: ints(&format!("p{i}.prompt_ids")),
            prefill_logits: rows(&format!("p{i}.{prefix}prefill_logits")),
            decode_logits: rows(&format!("p{i}.{prefix}decode_logits")),
            greedy_ids: ints(&format!("p{i}.{prefix}greedy_ids")),
        })
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// A CPU runner over `model` with `num_blocks` blocks of `block_size` entries, handed out in a
/// scrambled order (see [`OfflineRunner::with_scrambled_blocks`]).
pub fn scrambled_runner(
    model: &Model,
    block_size: usize,
    num_blocks: usize,
    lookahead: Option<Arc<LookaheadModule>>,
) -> OfflineRunner {
    OfflineRunner::cpu(
        model,
        block_size,
        num_blocks * block_size,
        KvCacheDtype::F32,
        lookahead,
    )
    .unwrap()
    .with_scrambled_blocks()
}

/// A [`scrambled_runner`] (no lookahead) that has prefilled `prompt` as its one sequence, keeping
/// the logits of every position (`output().row(0, pos)`), and that sequence for the decode steps.
pub fn prefilled_runner(
    model: &Model,
    block_size: usize,
    num_blocks: usize,
    prompt: &[u32],
) -> (OfflineRunner, RunnerSequence) {
    let mut runner = scrambled_runner(model, block_size, num_blocks, None);
    let mut seq = RunnerSequence::default();
    runner
        .step(&mut [(&mut seq, prompt, LogitsRequest::All)])
        .unwrap();
    (runner, seq)
}

/// `len` token ids drawn from `0..vocab_size` by a seeded xorshift.
pub fn pseudo_random_prompt(vocab_size: usize, len: usize, seed: u64) -> Vec<u32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab_size as u64) as u32
        })
        .collect()
}
