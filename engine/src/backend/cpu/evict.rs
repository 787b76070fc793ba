//! Eviction inside the CPU forward pass, one layer at a time: right after a layer's attention,
//! score the evicting sequence's prompt keys (in place in its blocks) with its scoring queries,
//! select the kept entries per KV head and compact them into the sequence's leading entries.
//! A layer's cache is final once its attention ran, so compacting it at once is safe, and the
//! scores need only that layer's queries (docs/design.md §4; policies in [`crate::eviction`]).

use std::time::{Duration, Instant};

use super::kv_cache::CpuKvCache;
use super::scoring_keys::PagedKeys;
use crate::backend::eviction_pass::PendingEviction;
use crate::error::Result;
use crate::eviction::{HeadLayout, QueryRows, ScoringQueries, ScoringRequest, score_prompt};

/// What one layer's scoring reads from the pass.
pub struct ScoringInput<'a> {
    pub layout: HeadLayout,
    /// The scoring queries' rows (`[n_q, num_heads · head_dim]`), RoPE'd.
    pub queries: &'a [f32],
    /// The lookahead rows' keys (row-major), which enter the softmax denominator.
    pub extra_keys: Option<&'a [f32]>,
    /// The scoring queries' scaled dot products with the prompt keys, kept from their attention
    /// (`[n_q, num_heads, prompt_len]`), when it kept them (the lookahead rows).
    pub dots: Option<&'a [f32]>,
}

impl PendingEviction {
    /// Scores, selects and compacts `layer` of the sequence with `block_table`; the kept
    /// entries go to the blocks `compact_into` (`block_table` itself for an in-place
    /// compaction).
    pub fn run_layer(
        &mut self,
        cache: &mut CpuKvCache,
        layer: usize,
        block_table: &[u32],
        compact_into: &[u32],
        input: ScoringInput<'_>,
    ) -> Result<()> {
        let mut started = Instant::now();
        let mut lap = |phase: &mut Duration| {
            let now = Instant::now();
            *phase += now - started;
            started = now;
        };
        let geometry = *cache.geometry();
        let scores = match self.scoring {
            Some(plan) => {
                let keys = PagedKeys {
                    layer: cache.layer(layer),
                    block_table,
                    block_size: geometry.block_size,
                    head_dim: geometry.head_dim,
                    num_entries: self.prompt.prompt_len(),
                };
                let rows = match plan.queries {
                    ScoringQueries::PromptWindow { .. } => QueryRows::PromptSuffix,
                    ScoringQueries::Lookahead { .. } => QueryRows::AfterPrompt {
                        extra_keys: input.extra_keys,
                    },
                };
                let request = ScoringRequest {
                    queries: input.queries,
                    rows,
                    scored_entries: plan.scored_entries,
                    reduction: plan.reduction,
                    pooling: plan.pooling,
                    dots: input.dots,
                };
                Some(score_prompt(input.layout, &request, &keys)?)
            }
            None => None,
        };
        lap(&mut self.times.scoring);
        let selection = self.prompt.select_layer(
            self.layer_budgets[layer],
            geometry.num_kv_heads,
            scores.as_ref(),
        )?;
        lap(&mut self.times.selection);
        cache.compact(layer, block_table, compact_into, &selection.kept);
        lap(&mut self.times.compaction);
        self.push_selection(selection);
        Ok(())
    }
}
