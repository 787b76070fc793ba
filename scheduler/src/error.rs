//! The crate's one error type.
//!
//! Owns: every way a caller can misuse the scheduler or submit a request that can never run.
//! Variants carry the offending field or id, the limit and the value given, so a server can turn
//! them into a clear `INVALID_ARGUMENT` without re-deriving anything. Broken internal invariants
//! are not errors: they panic with a message naming the invariant.

use crate::ids::{BlockId, SeqId};

/// Errors returned by the scheduler, its allocator, its config and its pool-sizing function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    // --- configuration ---
    /// A config or sizing value is below its minimum.
    #[error("`{field}` must be at least {min}, got {value}")]
    ConfigTooSmall {
        field: &'static str,
        min: u64,
        value: u64,
    },
    /// A config or sizing value is above its maximum.
    #[error("`{field}` must be at most {max}, got {value}")]
    ConfigTooLarge {
        field: &'static str,
        max: u64,
        value: u64,
    },

    // --- block allocator ---
    /// The block id does not belong to this pool.
    #[error("{block} is outside the pool of {num_blocks} blocks")]
    ForeignBlock { block: BlockId, num_blocks: usize },
    /// The block was freed while no one held it.
    #[error("{block} freed while already free (double free)")]
    DoubleFree { block: BlockId },
    /// A reference was added to a block no one holds.
    #[error("{block} is free; only a block in use can gain a reference")]
    IncrefFreeBlock { block: BlockId },

    // --- requests refused at submission ---
    /// A request without prompt tokens has nothing to condition on.
    #[error("{seq}: prompt is empty")]
    EmptyPrompt { seq: SeqId },
    /// A request that may generate nothing would finish without output.
    #[error("{seq}: max_tokens must be at least 1")]
    ZeroMaxTokens { seq: SeqId },
    /// The id is still in use by a request the scheduler knows.
    #[error("{seq}: a request with this id is already scheduled")]
    DuplicateSequence { seq: SeqId },
    /// Prompt plus `max_tokens` exceeds the model's context.
    #[error("{seq}: prompt + max_tokens = {value} tokens exceeds max_model_len = {limit}")]
    ExceedsMaxModelLen {
        seq: SeqId,
        limit: usize,
        value: usize,
    },
    /// The request's last prefill chunk (scoring window plus lookahead rows) needs more rows
    /// than one step may batch.
    #[error(
        "{seq}: the last prefill chunk needs {value} rows (eviction window + lookahead rows) but a step batches at most {limit} (max_num_batched_tokens)"
    )]
    LastChunkExceedsBudget {
        seq: SeqId,
        limit: usize,
        value: usize,
    },
    /// At its largest (a full recompute after preemption) the request needs more blocks than
    /// the whole pool holds, so it could never run to completion.
    #[error("{seq}: needs up to {value} KV blocks but the pool holds {limit}")]
    ExceedsKvPool {
        seq: SeqId,
        limit: usize,
        value: usize,
    },

    // --- caller protocol ---
    /// The sequence must be running for this call.
    #[error("{seq} is not running")]
    NotRunning { seq: SeqId },
    /// Eviction is only allowed once the sequence's prefill is complete.
    #[error("{seq}: eviction during prefill ({computed} of {prefill} prefill tokens computed)")]
    EvictionDuringPrefill {
        seq: SeqId,
        computed: usize,
        prefill: usize,
    },
    /// Eviction can only shrink the cache.
    #[error("{seq}: cannot keep {value} cache entries, only {limit} are held")]
    EvictionGrowsCache {
        seq: SeqId,
        limit: usize,
        value: usize,
    },
    /// An output was reported for a running sequence the last plan did not sample.
    #[error("{seq}: output reported, but the last plan sampled no token for it")]
    UnexpectedOutput { seq: SeqId },
    /// More tokens were appended than one sampling step produces.
    #[error("{seq}: {value} tokens appended in one step, at most {limit} allowed")]
    TooManyAppendedTokens {
        seq: SeqId,
        limit: usize,
        value: usize,
    },
    /// A sampled sequence that did not finish must report its sampled token.
    #[error("{seq}: sampled but reported no token and no finish reason")]
    MissingSampledToken { seq: SeqId },
}

/// Result alias for the crate.
pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;
