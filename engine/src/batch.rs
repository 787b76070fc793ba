//! The unit of work a backend executes: a **varlen batch**. Tokens of several sequences — prefill
//! chunks of any length and single decode tokens, mixed — form one flat activation, so each linear
//! layer is one matmul; attention runs per sequence through its block table (docs/design.md §2.3).
//!
//! A sequence distinguishes *positions* (RoPE, counting every token it has seen) from *cache entries*
//! (KV slots it holds). They coincide until KV eviction keeps fewer entries than positions; then new
//! tokens keep counting positions from the prompt length while their K/V fill the next free entry.
//!
//! KV eviction (docs/design.md §4) rides on the batch: a sequence's last prefill chunk may carry an
//! [`EvictionPolicy`]; the backend scores, selects and compacts that sequence's prompt entries in
//! the same pass and reports what it kept in [`ForwardOutput::evictions`].

use std::time::Duration;

use crate::eviction::{EvictionPolicy, LayerSelection};

/// What logits a sequence wants back from a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsRequest {
    /// None (an intermediate prefill chunk).
    None,
    /// The last token's row only (the usual case: sample the next token).
    Last,
    /// Every token's row (parity tests, teacher-forced evaluation).
    All,
}

impl LogitsRequest {
    /// Rows of logits produced for a chunk of `num_tokens` tokens.
    pub fn num_rows(self, num_tokens: usize) -> usize {
        match self {
            Self::None => 0,
            Self::Last => 1,
            Self::All => num_tokens,
        }
    }
}

/// One sequence's share of a forward batch.
#[derive(Debug, Clone, Copy)]
pub struct SequenceInput<'a> {
    /// The new tokens to run (a prefill chunk, or one decode token).
    pub token_ids: &'a [u32],
    /// RoPE position of `token_ids[0]`.
    pub first_position: usize,
    /// Cache entry that receives `token_ids[0]`'s K/V; entries `0..first_cache_entry` already hold
    /// this sequence's context and are attended to.
    pub first_cache_entry: usize,
    /// Physical blocks of the sequence, in entry order; must cover every entry up to
    /// `first_cache_entry + token_ids.len()`.
    pub block_table: &'a [u32],
    pub logits: LogitsRequest,
    /// Evict the prompt at the end of this chunk, which must be the sequence's last prefill
    /// chunk over a cache never compacted before (positions = entries). The first token is
    /// still sampled from the last prompt row's logits, computed before anything is evicted.
    pub eviction: Option<EvictionPolicy>,
    /// Set once the sequence was compacted with per-layer budgets (PyramidKV).
    pub compacted: Option<CompactedPrefix<'a>>,
    /// With `eviction`: fresh blocks, private to this sequence, that the kept entries are
    /// compacted into (entry `i` to `compact_into[i / block_size]`), leaving `block_table`
    /// untouched — its blocks may be shared through the prefix cache (docs/design.md §7).
    /// `None` compacts into the leading blocks of `block_table`, in place.
    pub compact_into: Option<&'a [u32]>,
}

/// A [`Compaction`] as one pass reads it, borrowed from its owner.
#[derive(Debug, Clone, Copy)]
pub struct CompactedPrefix<'a> {
    pub entries: usize,
    pub layer_kept: &'a [usize],
}

/// The leading cache entries of a sequence that eviction compacted with a different number of
/// entries per layer: the blocks hold `entries` entries, of which layer `l` uses only the first
/// `layer_kept[l]`; attention skips `layer_kept[l]..entries` in that layer. Whoever runs the
/// sequence (the engine loop, [`crate::runner::OfflineRunner`]) keeps it until the sequence ends
/// or is recomputed, and hands it to every later pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    pub entries: usize,
    pub layer_kept: Vec<usize>,
}

impl Compaction {
    /// The borrowed form a [`SequenceInput`] carries.
    pub fn as_prefix(&self) -> CompactedPrefix<'_> {
        CompactedPrefix {
            entries: self.entries,
            layer_kept: &self.layer_kept,
        }
    }
}

impl<'a> SequenceInput<'a> {
    /// A whole prompt prefilled in one chunk from position 0 into `block_table`'s blocks, asking
    /// for its last row's logits, without eviction: a benchmark's or a calibration's pass.
    pub fn whole_prompt(token_ids: &'a [u32], block_table: &'a [u32]) -> Self {
        Self {
            token_ids,
            first_position: 0,
            first_cache_entry: 0,
            block_table,
            logits: LogitsRequest::Last,
            eviction: None,
            compacted: None,
            compact_into: None,
        }
    }

    /// Cache entries this sequence holds once the chunk is written.
    pub fn num_entries_after(&self) -> usize {
        self.first_cache_entry + self.token_ids.len()
    }
}

/// Sequences to run together in one forward pass.
#[derive(Debug, Clone, Default)]
pub struct ForwardBatch<'a> {
    pub sequences: Vec<SequenceInput<'a>>,
}

impl<'a> ForwardBatch<'a> {
    /// Total number of tokens (rows of the flat activation).
    pub fn num_tokens(&self) -> usize {
        self.sequences.iter().map(|s| s.token_ids.len()).sum()
    }

    /// Total number of logits rows the batch asks for.
    pub fn num_logits_rows(&self) -> usize {
        self.sequences
            .iter()
            .map(|s| s.logits.num_rows(s.token_ids.len()))
            .sum()
    }
}

/// Logits of a forward pass: `[rows, vocab]`, sequences in batch order, each sequence's rows in
/// token order. Reused across steps to avoid allocating per step.
#[derive(Debug, Clone, Default)]
pub struct ForwardOutput {
    pub vocab_size: usize,
    pub logits: Vec<f32>,
    /// For each sequence of the batch, its first row in `logits` and how many rows it has.
    pub rows: Vec<RowRange>,
    /// Where the forward pass spent its time.
    pub profile: ForwardProfile,
    /// One report per sequence of the batch that evicted in this pass, in batch order.
    pub evictions: Vec<SequenceEviction>,
}

/// What eviction kept of one sequence's prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceEviction {
    /// The sequence's index in the batch.
    pub sequence: usize,
    pub prompt_len: usize,
    /// Leading cache entries the sequence still holds (the largest layer's kept count); its
    /// blocks beyond `ceil(kept_entries / block_size)` are free to go back to the pool.
    pub kept_entries: usize,
    /// Entries kept per KV head in each layer (equal to `kept_entries` except under PyramidKV).
    pub layer_kept: Vec<usize>,
    /// The kept prompt positions per layer and KV head, ascending: slot `i` of the compacted
    /// cache holds position `kept[layer].kept[head][i]`.
    pub selections: Vec<LayerSelection>,
    /// Time spent scoring, selecting and compacting.
    pub time: Duration,
}

impl SequenceEviction {
    /// What later passes over this sequence must respect, or `None` when every layer kept
    /// `kept_entries` (the cache then reads as an ordinary one of that many entries).
    pub fn compaction(&self) -> Option<Compaction> {
        let uneven = self.layer_kept.iter().any(|&k| k != self.kept_entries);
        uneven.then(|| Compaction {
            entries: self.kept_entries,
            layer_kept: self.layer_kept.clone(),
        })
    }

    /// Prompt entries dropped, summed over layers and KV heads.
    pub fn evicted_entries(&self) -> usize {
        self.selections
            .iter()
            .flat_map(|layer| &layer.kept)
            .map(|kept| self.prompt_len - kept.len())
            .sum()
    }

    /// Prompt tokens dropped per (layer, KV head), on average: `prompt_len − budget` for a
    /// uniform budget (the unit of `glimpse_kv_evicted_tokens_total`).
    pub fn evicted_tokens(&self) -> usize {
        let heads: usize = self.selections.iter().map(|layer| layer.kept.len()).sum();
        (self.evicted_entries() as f64 / heads.max(1) as f64).round() as usize
    }
}

/// Wall time of one forward pass by kind of work, so benchmarks can say where a step goes — and
/// what an evicting pass adds over a plain one (docs/benchmarks.md, LookaheadKV's TTFT).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ForwardProfile {
    /// Linear layers' GEMMs over every row (including the output projection).
    pub matmul: std::time::Duration,
    /// LookaheadKV's LoRA deltas on the lookahead rows.
    pub lora: std::time::Duration,
    /// Attention over the paged cache, including writing the new K/V.
    pub attention: std::time::Duration,
    /// The lookahead rows' share of `attention`: `attention` × their tiles' thread time ÷ every
    /// tile's (tiles run in parallel, so their own times add up to more than the wall time).
    pub lookahead_attention: std::time::Duration,
    /// Eviction: scoring the prompt's entries, summed over the sequences that evict.
    pub scoring: std::time::Duration,
    /// Eviction: choosing the kept entries from the scores.
    pub selection: std::time::Duration,
    /// Eviction: moving the kept entries to the front of the cache.
    pub compaction: std::time::Duration,
    /// Everything else: embedding, norms, RoPE, activations, residuals.
    pub other: std::time::Duration,
}

/// Where one sequence's logits rows sit in [`ForwardOutput::logits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowRange {
    pub start: usize,
    pub count: usize,
}

impl ForwardOutput {
    /// Logits row `row` of sequence `seq` (batch order).
    pub fn row(&self, seq: usize, row: usize) -> &[f32] {
        let range = self.rows[seq];
        assert!(
            row < range.count,
            "row {row} of sequence {seq} was not requested"
        );
        let start = (range.start + row) * self.vocab_size;
        &self.logits[start..start + self.vocab_size]
    }

    /// The last logits row of sequence `seq`.
    pub fn last_row(&self, seq: usize) -> &[f32] {
        let count = self.rows[seq].count;
        assert!(count > 0, "sequence {seq} requested no logits");
        self.row(seq, count - 1)
    }
}
