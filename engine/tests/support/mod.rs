//! Helpers shared by the engine's integration tests: fixture references and a minimal paged driver
//! that hands out blocks in a scrambled order (so tests prove attention really follows the block
//! table rather than assuming contiguous blocks).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use glimpse_engine::backend::Backend;
use glimpse_engine::backend::cpu::CpuBackend;
use glimpse_engine::batch::{
    CompactedPrefix, ForwardBatch, ForwardOutput, LogitsRequest, SequenceEviction, SequenceInput,
};
use glimpse_engine::eviction::EvictionPolicy;
use glimpse_engine::lookahead::LookaheadModule;
use glimpse_engine::model::Model;
use safetensors::SafeTensors;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
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
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
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
            prefill_logits: rows(&format!("p{i}.prefill_logits")),
            decode_logits: rows(&format!("p{i}.decode_logits")),
            greedy_ids: ints(&format!("p{i}.greedy_ids")),
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

/// A sequence driven by [`PagedDriver`].
pub struct DrivenSequence {
    /// Every token fed so far: the next token's RoPE position is `tokens.len()`.
    pub tokens: Vec<u32>,
    /// Cache entries held: equal to `tokens.len()` until an eviction compacts the prompt.
    pub num_cached: usize,
    pub block_table: Vec<u32>,
    /// Per-layer kept counts once a PyramidKV eviction compacted the prompt unevenly.
    pub layer_kept: Option<Vec<usize>>,
    /// Leading entries of that compacted prefix.
    pub compacted_entries: usize,
}

/// An eviction applied by [`PagedDriver::step_evicting`].
pub struct Evicted {
    pub report: SequenceEviction,
    /// The sequence's blocks past `ceil(kept_entries / block_size)`, returned to the pool.
    pub freed_blocks: Vec<u32>,
}

/// Feeds sequences through a backend with blocks handed out in a scrambled order.
pub struct PagedDriver {
    pub backend: CpuBackend,
    pub block_size: usize,
    free: Vec<u32>,
    pub output: ForwardOutput,
}

impl PagedDriver {
    pub fn new(model: &Model, block_size: usize, num_blocks: usize) -> Self {
        Self::with_lookahead(model, block_size, num_blocks, None)
    }

    /// A driver whose backend holds `lookahead` for the LookaheadKV policy.
    pub fn with_lookahead(
        model: &Model,
        block_size: usize,
        num_blocks: usize,
        lookahead: Option<Arc<LookaheadModule>>,
    ) -> Self {
        // Interleave from both ends so consecutive blocks of a sequence are never adjacent.
        let mut free = Vec::with_capacity(num_blocks);
        let (mut lo, mut hi) = (0u32, num_blocks as u32);
        while lo < hi {
            hi -= 1;
            free.push(hi);
            if lo < hi {
                free.push(lo);
                lo += 1;
            }
        }
        free.reverse();
        Self {
            backend: CpuBackend::new(model, block_size, num_blocks, lookahead).unwrap(),
            block_size,
            free,
            output: ForwardOutput::default(),
        }
    }

    pub fn new_sequence(&self) -> DrivenSequence {
        DrivenSequence {
            tokens: Vec::new(),
            num_cached: 0,
            block_table: Vec::new(),
            layer_kept: None,
            compacted_entries: 0,
        }
    }

    /// Blocks not owned by any sequence.
    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    fn reserve(&mut self, seq: &mut DrivenSequence, entries: usize) {
        while seq.block_table.len() * self.block_size < entries {
            seq.block_table
                .push(self.free.pop().expect("test pool too small"));
        }
    }

    /// Runs one forward pass in which each `(sequence, new tokens, logits)` appends its tokens.
    pub fn step(&mut self, work: &mut [(&mut DrivenSequence, &[u32], LogitsRequest)]) {
        let evictions = vec![None; work.len()];
        self.try_step(work, &evictions).unwrap();
    }

    /// Runs `tokens` as the last prefill chunk of `seq` with `policy`, then applies what the
    /// backend reports as a scheduler would: the sequence keeps `kept_entries` cache entries and
    /// only the blocks holding them; its trailing blocks go back to the pool, first in line to be
    /// handed out again. Returns `None` when the policy left the prompt alone.
    pub fn step_evicting(
        &mut self,
        seq: &mut DrivenSequence,
        tokens: &[u32],
        logits: LogitsRequest,
        policy: EvictionPolicy,
    ) -> Option<Evicted> {
        self.try_step(&mut [(seq, tokens, logits)], &[Some(policy)])
            .unwrap();
        assert!(self.output.evictions.len() <= 1, "one sequence, one report");
        let report = self.output.evictions.pop()?;
        assert_eq!((report.sequence, report.prompt_len), (0, seq.tokens.len()));
        seq.num_cached = report.kept_entries;
        seq.compacted_entries = report.kept_entries;
        let uneven = report.layer_kept.iter().any(|&k| k != report.kept_entries);
        seq.layer_kept = uneven.then(|| report.layer_kept.clone());
        let keep = report.kept_entries.div_ceil(self.block_size);
        let freed_blocks: Vec<u32> = seq.block_table.drain(keep..).collect();
        self.free.extend(freed_blocks.iter().rev());
        Some(Evicted {
            report,
            freed_blocks,
        })
    }

    /// One forward pass; `evictions[i]` is the policy of `work[i]`'s chunk. The sequences are
    /// updated only if the pass succeeds.
    pub fn try_step(
        &mut self,
        work: &mut [(&mut DrivenSequence, &[u32], LogitsRequest)],
        evictions: &[Option<EvictionPolicy>],
    ) -> glimpse_engine::error::Result<()> {
        assert_eq!(work.len(), evictions.len());
        for (seq, tokens, _) in work.iter_mut() {
            let entries = seq.num_cached + tokens.len();
            self.reserve(seq, entries);
        }
        let batch = ForwardBatch {
            sequences: work
                .iter()
                .zip(evictions)
                .map(|((seq, tokens, logits), eviction)| SequenceInput {
                    token_ids: tokens,
                    first_position: seq.tokens.len(),
                    first_cache_entry: seq.num_cached,
                    block_table: &seq.block_table,
                    logits: *logits,
                    eviction: *eviction,
                    compacted: seq.layer_kept.as_deref().map(|layer_kept| CompactedPrefix {
                        entries: seq.compacted_entries,
                        layer_kept,
                    }),
                })
                .collect(),
        };
        self.backend.forward(&batch, &mut self.output)?;
        for (seq, tokens, _) in work.iter_mut() {
            seq.tokens.extend_from_slice(tokens);
            seq.num_cached += tokens.len();
        }
        Ok(())
    }
}
