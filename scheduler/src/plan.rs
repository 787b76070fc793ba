//! The plan of one step and the engine's report on it: plain data, no behaviour.
//!
//! Owns: what the engine must run and what it must report back. Must not know: tensors or how
//! the batch is laid out on the device.

use crate::ids::SeqId;
use crate::sequence::FinishReason;

/// A range of a sequence's prefill to compute this step.
///
/// Token `k` of the chunk (`0 <= k < num_tokens`) has RoPE position `first_position + k` and is
/// written to cache entry `first_cache_entry + k` of the sequence's block table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillChunk {
    pub seq: SeqId,
    pub first_position: usize,
    pub first_cache_entry: usize,
    pub num_tokens: usize,
    /// The chunk ends the prefill: the engine samples a token from its last row, and may then
    /// evict (see [`crate::Scheduler::apply_eviction`]).
    pub is_last_chunk: bool,
    /// On an evicting last chunk whose prompt blocks may be cached: the index in the block
    /// table of the first fresh block the eviction compacts into. The prefill's entries live in
    /// the blocks before it, which the eviction must only read (docs/design.md §7).
    pub compact_into_block: Option<usize>,
}

/// One decode token of a sequence: the last sampled token, fed back.
///
/// After eviction `cache_entry < position`: the token keeps counting positions from the
/// original prompt length but lands in the next free cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeStep {
    pub seq: SeqId,
    pub position: usize,
    pub cache_entry: usize,
}

/// A sequence that left the scheduler since the previous plan; it holds no blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedSeq {
    pub seq: SeqId,
    pub reason: FinishReason,
}

/// What the engine runs this step. Every chunk and decode samples a token except prefill
/// chunks with `is_last_chunk == false`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Prefill ranges, in scheduling order (running sequences first, then admissions).
    pub prefills: Vec<PrefillChunk>,
    pub decodes: Vec<DecodeStep>,
    /// Preempted by recompute this step: the engine drops their per-sequence state; their
    /// blocks are already free and they will prefill from scratch.
    pub preempted: Vec<SeqId>,
    /// Finished or aborted since the previous plan.
    pub finished: Vec<FinishedSeq>,
    /// Rows of work in `prefills` and `decodes` together, last chunks' extra rows
    /// ([`crate::LastChunk::extra_rows`]) included; at most `max_num_batched_tokens`.
    pub num_batched_tokens: usize,
    /// What this step's admissions asked of the prefix cache (zero while it is off).
    pub prefix_cache: PrefixCacheStats,
}

/// Prefix-cache lookups, counted in tokens as vLLM counts them: each admission (a new request or
/// a preempted one resuming) queries its prefill's tokens and hits the ones found cached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    pub queried_tokens: usize,
    pub hit_tokens: usize,
}

impl Plan {
    /// Empties the plan, keeping its buffers for the next step.
    pub fn clear(&mut self) {
        self.prefills.clear();
        self.decodes.clear();
        self.preempted.clear();
        self.finished.clear();
        self.num_batched_tokens = 0;
        self.prefix_cache = PrefixCacheStats::default();
    }

    /// Whether there is nothing to run (finished sequences may still be reported).
    pub fn is_idle(&self) -> bool {
        self.prefills.is_empty() && self.decodes.is_empty()
    }
}

/// The engine's report on one sampled sequence of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqOutput {
    pub seq: SeqId,
    /// Tokens sampled and appended: 1, or 0 only together with a finish reason.
    pub appended_tokens: usize,
    /// Set when the engine's stop checks ended the sequence.
    pub finish: Option<FinishReason>,
}

/// The engine's report on one step: one [`SeqOutput`] per sampled sequence of the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepResult {
    pub outputs: Vec<SeqOutput>,
}
