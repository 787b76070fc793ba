//! Requests as submitted and sequences as the scheduler tracks them.
//!
//! Owns: the per-sequence counters and their meaning. Must not know: token ids, sampling or
//! the cache's contents.
//!
//! Two counters look alike and differ once KV eviction runs:
//! - `num_computed_tokens`: positions consumed (prompt + generated tokens whose keys and values
//!   were computed). The next token's RoPE position.
//! - `num_cached_entries`: KV entries physically held. Equal to `num_computed_tokens` without
//!   eviction, smaller after it. The next token's cache entry index; blocks held =
//!   `ceil(entries / block_size)`.

use crate::block_table::BlockTable;
use crate::ids::SeqId;
use crate::prefix_cache::BlockHash;

/// A request as submitted: lengths and prefix hashes only, the engine keeps the tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The caller's id; must not collide with a request the scheduler still knows.
    pub id: SeqId,
    /// Prompt length.
    pub num_prompt_tokens: usize,
    /// Most tokens to generate; the sequence finishes with [`FinishReason::Length`] there.
    pub max_tokens: usize,
    /// What the engine's last prefill chunk of this request needs (KV eviction).
    pub last_chunk: LastChunk,
    /// The hashes of the prompt's full blocks ([`crate::Scheduler::hash_prompt`]); empty keeps
    /// the request out of the prefix cache.
    pub block_hashes: Vec<BlockHash>,
}

/// Constraints on a request's last prefill chunk, which is where the engine scores and evicts
/// the prompt's KV entries (docs/design.md §4). The default asks for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LastChunk {
    /// Prompt tokens the last chunk must hold: SnapKV and PyramidKV score with the queries of
    /// the last `window` prompt tokens, which exist only in the pass that computes them.
    pub min_tokens: usize,
    /// Rows of work the last chunk adds beyond its tokens (LookaheadKV's lookahead rows); they
    /// count against the step's token budget like tokens do.
    pub extra_rows: usize,
    /// Set when the request's policy evicts: a prefill longer than this compacts its cache.
    pub eviction: Option<EvictionBound>,
}

/// What an evicting policy does to a prefill, as far as blocks are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvictionBound {
    /// A prefill of more tokens than this is evicted at its last chunk (the policy's budget).
    pub over_tokens: usize,
    /// The most entries the eviction keeps (the largest per-layer budget, or a bound on it): a
    /// request whose prompt blocks are cached compacts into this many entries of fresh blocks.
    pub max_kept_entries: usize,
}

/// Why a sequence finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// A stop condition of the engine (EOS, stop string).
    Stop,
    /// `max_tokens` generated.
    Length,
    /// Aborted by the caller (e.g. the client left).
    Abort,
}

/// Where a sequence is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStatus {
    /// Queued, never run.
    Waiting,
    /// Admitted: holds blocks and is scheduled each step it fits the budget.
    Running,
    /// Preempted by recompute: holds no blocks, queued to prefill prompt + generated tokens.
    Preempted,
    /// Done and holding no blocks; reported in the next plan, then forgotten.
    Finished(FinishReason),
}

/// A read-only snapshot of a sequence's counters, for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceInfo {
    pub status: SeqStatus,
    pub num_prompt_tokens: usize,
    pub num_output_tokens: usize,
    /// Positions consumed; see the module doc.
    pub num_computed_tokens: usize,
    /// KV entries held; see the module doc.
    pub num_cached_entries: usize,
}

/// The scheduler's record of one sequence.
#[derive(Debug, Clone)]
pub(crate) struct Sequence {
    pub id: SeqId,
    /// Submission counter: lower arrived earlier. The scheduler's only notion of time.
    pub arrival: u64,
    pub num_prompt_tokens: usize,
    pub max_tokens: usize,
    pub last_chunk: LastChunk,
    pub num_output_tokens: usize,
    pub num_computed_tokens: usize,
    pub num_cached_entries: usize,
    /// Tokens the current prefill covers (prompt, or prompt + generated after a preemption);
    /// 0 while not running. Prefill is complete once `num_computed_tokens` reaches it.
    pub num_prefill_tokens: usize,
    /// The last plan computed every known token, so the engine owes a sampled token.
    pub awaiting_output: bool,
    pub status: SeqStatus,
    pub block_table: BlockTable,
    /// Hashes of the prompt's full blocks; empty when the request stays out of the cache.
    pub block_hashes: Vec<BlockHash>,
    /// Leading prompt blocks already published (or found) in the prefix cache, or, after an
    /// eviction, all of them: nothing is published once the entries are compacted.
    pub num_published_blocks: usize,
    /// Fresh blocks at the end of the table that the last chunk's eviction compacts into, so
    /// cached prompt blocks are never written (docs/design.md §7); 0 otherwise.
    pub num_scratch_blocks: usize,
}

impl Sequence {
    pub fn new(request: Request, arrival: u64, capacity_blocks: usize) -> Self {
        let block_hashes = request.block_hashes;
        Self {
            id: request.id,
            arrival,
            num_prompt_tokens: request.num_prompt_tokens,
            max_tokens: request.max_tokens,
            last_chunk: request.last_chunk,
            num_output_tokens: 0,
            num_computed_tokens: 0,
            num_cached_entries: 0,
            num_prefill_tokens: 0,
            awaiting_output: false,
            status: SeqStatus::Waiting,
            block_table: BlockTable::with_capacity(capacity_blocks),
            block_hashes,
            num_published_blocks: 0,
            num_scratch_blocks: 0,
        }
    }

    /// Blocks of the table that hold the prefill's entries (the scratch blocks excluded).
    pub fn num_entry_blocks(&self) -> usize {
        self.block_table.len() - self.num_scratch_blocks
    }

    /// Prompt plus generated tokens.
    pub fn num_tokens(&self) -> usize {
        self.num_prompt_tokens + self.num_output_tokens
    }

    /// Known tokens whose keys and values are not computed yet.
    pub fn num_uncomputed_tokens(&self) -> usize {
        self.num_tokens() - self.num_computed_tokens
    }

    /// Whether the current prefill still has tokens to compute.
    pub fn is_prefilling(&self) -> bool {
        self.num_computed_tokens < self.num_prefill_tokens
    }

    /// Tokens to compute this step with `budget` tokens left, and the budget they use; `None`
    /// when the sequence must wait for a step with more budget. A prefill that cannot finish
    /// this step leaves at least [`LastChunk::min_tokens`] for its last chunk, and the last
    /// chunk also pays for [`LastChunk::extra_rows`].
    pub fn next_chunk(&self, budget: usize) -> Option<(usize, usize)> {
        let remaining = self.num_uncomputed_tokens();
        if !self.is_prefilling() {
            return (budget > 0).then_some((remaining.min(budget), remaining.min(budget)));
        }
        let LastChunk {
            min_tokens,
            extra_rows,
            ..
        } = self.last_chunk;
        if remaining + extra_rows <= budget {
            return Some((remaining, remaining + extra_rows));
        }
        let num_tokens = budget.min(remaining.saturating_sub(min_tokens.max(1)));
        (num_tokens > 0).then_some((num_tokens, num_tokens))
    }

    /// Cache entries the sequence must have blocks for right now: those held plus, while
    /// prefilling, the rest of the prompt (admission reserves a prompt's blocks whole).
    pub fn reserved_entries(&self) -> usize {
        self.num_cached_entries
            + (self
                .num_prefill_tokens
                .saturating_sub(self.num_computed_tokens))
    }

    pub fn info(&self) -> SequenceInfo {
        SequenceInfo {
            status: self.status,
            num_prompt_tokens: self.num_prompt_tokens,
            num_output_tokens: self.num_output_tokens,
            num_computed_tokens: self.num_computed_tokens,
            num_cached_entries: self.num_cached_entries,
        }
    }
}
