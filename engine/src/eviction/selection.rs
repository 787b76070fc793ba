//! Selection: from scores (or none) to the sorted prompt entries kept per (layer, KV head).
//!
//! Tie-breaking is deterministic everywhere: higher score first, then lower entry index. (PyTorch's
//! `topk`, which kvpress uses, documents no order among ties; the fixtures avoid ties at the
//! selection boundary, see `engine/tests/data/eviction/README.md`.)
//!
//! Knows nothing of attention, the cache layout or compaction: the backend gathers the kept
//! entries afterwards.

use std::cmp::Ordering;

use crate::error::{EngineError, Result};

use super::policy::{Policy, PromptEviction};
use super::scoring::KvHeadScores;

/// The prompt entries one layer keeps, per KV head, ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSelection {
    pub kept: Vec<Vec<usize>>,
}

/// The `k` highest-scoring indices of `scores` (score descending, then index ascending), returned
/// ascending. `k` larger than the row keeps the whole row.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let k = k.min(scores.len());
    if k < scores.len() && k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| rank(scores, a, b));
    }
    order.truncate(k);
    order.sort_unstable();
    order
}

fn rank(scores: &[f32], a: usize, b: usize) -> Ordering {
    scores[b].total_cmp(&scores[a]).then(a.cmp(&b))
}

/// StreamingLLM: the first `sinks` entries and the most recent `budget − sinks`.
pub fn select_streaming(prompt_len: usize, budget: usize, sinks: usize) -> Vec<usize> {
    if prompt_len <= budget {
        return (0..prompt_len).collect();
    }
    let recent = budget.saturating_sub(sinks);
    (0..sinks.min(budget))
        .chain(prompt_len - recent..prompt_len)
        .collect()
}

/// Top-`(budget − window)` of the scored entries `0..prompt_len − window` by `scores`, plus the
/// last `window` entries (SnapKV step 4–5; LookaheadKV with `window = 0`).
pub fn select_with_window(
    scores: &[f32],
    prompt_len: usize,
    budget: usize,
    window: usize,
) -> Vec<usize> {
    debug_assert_eq!(
        scores.len(),
        prompt_len - window,
        "one score per non-window entry"
    );
    let mut kept = top_k(scores, budget.saturating_sub(window));
    kept.extend(prompt_len - window..prompt_len);
    kept
}

impl PromptEviction {
    /// Selects one layer's kept entries given its budget (from
    /// [`layer_budgets`](Self::layer_budgets)) and its scores (from
    /// [`super::scoring::score_prompt`] under [`scoring_plan`](Self::scoring_plan); `None` for
    /// policies that need none). Fails when scores are missing or do not match the prompt.
    pub fn select_layer(
        &self,
        layer_budget: usize,
        num_kv_heads: usize,
        scores: Option<&KvHeadScores>,
    ) -> Result<LayerSelection> {
        let prompt_len = self.prompt_len;
        let window = self.policy.policy.window();
        match self.policy.policy {
            Policy::Full => unreachable!("for_prompt never evicts under Policy::Full"),
            Policy::StreamingLlm { sinks } => Ok(LayerSelection {
                kept: vec![select_streaming(prompt_len, layer_budget, sinks); num_kv_heads],
            }),
            Policy::SnapKv { .. } | Policy::PyramidKv { .. } | Policy::Lookahead { .. } => {
                let scores = check_scores(scores, prompt_len - window, num_kv_heads)?;
                let kept = (0..num_kv_heads)
                    .map(|h| select_with_window(scores.head(h), prompt_len, layer_budget, window))
                    .collect();
                Ok(LayerSelection { kept })
            }
        }
    }
}

fn check_scores(
    scores: Option<&KvHeadScores>,
    scored_entries: usize,
    num_kv_heads: usize,
) -> Result<&KvHeadScores> {
    let scores = scores.ok_or_else(|| EngineError::InvalidParameter {
        field: "eviction.scores",
        message: "this policy selects by scores, none were given".into(),
    })?;
    if scores.num_entries() != scored_entries || scores.num_kv_heads() != num_kv_heads {
        return Err(EngineError::InvalidParameter {
            field: "eviction.scores",
            message: format!(
                "expected {num_kv_heads} KV heads × {scored_entries} entries, got {} × {}",
                scores.num_kv_heads(),
                scores.num_entries()
            ),
        });
    }
    Ok(scores)
}
