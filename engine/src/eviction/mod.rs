//! KV-cache eviction policies: from attention scores to the prompt entries kept per (layer, KV
//! head). docs/design.md §4; LookaheadKV (Ahn et al., arXiv 2603.10899) §3.3 "inference"; the baselines
//! SnapKV, PyramidKV and StreamingLLM as kvpress 0.5.5 implements them (reference §3).
//!
//! Owns the policy list and names ([`PolicyKind::ALL`]), the policy configuration and its defaults
//! ([`EvictionPolicy`], [`Policy`]'s constructors), the scoring of a layer's prompt keys by its
//! scoring queries ([`score_prompt`]), pooling, PyramidKV's per-layer budgets and the selection
//! ([`PromptEviction::select_layer`]). Pure functions over f32 slices: it must not know the paged
//! cache, blocks, the scheduler or compaction. The backend owes it, per layer, the scoring queries
//! (RoPE'd, `q_norm`'d) and the cached prompt keys through [`KeySource`], and gathers the kept
//! entries itself.
//!
//! One prompt, per layer:
//! 1. `policy.for_prompt(n)` gives the prompt's [`PromptEviction`], or `None`: keep everything
//!    (Full, or a prompt within budget). Nothing else decides whether a prompt is evicted.
//! 2. `prompt.scoring_plan()` says which queries to compute (last `window` prompt rows, or the
//!    lookahead rows) and how to reduce them; `score_prompt` gives [`KvHeadScores`]. The same
//!    [`ScoringPlan`] tells the scheduler what the last prefill chunk must hold
//!    (`min_last_chunk_tokens`, `extra_rows`) and the backend which rows score.
//! 3. `prompt.layer_budgets(layers)[l]` and `prompt.select_layer(..)` give the kept entries.

mod policy;
mod pooling;
mod pyramid;
mod scoring;
mod selection;

#[cfg(test)]
mod tests;

pub use policy::{
    EvictionPolicy, LookaheadMismatch, Policy, PolicyKind, PolicyKnobs, PromptEviction,
    ScoringPlan, ScoringQueries,
};
pub use pooling::{Pool, Pooling, avg_pool1d, max_pool1d, pool1d};
pub use pyramid::pyramid_budgets;
pub use scoring::{
    ContiguousKeys, HeadLayout, KeySource, KvHeadScores, QueryReduction, QueryRows, ScoringRequest,
    score_prompt,
};
pub use selection::{LayerSelection, select_streaming, select_with_window, top_k};
