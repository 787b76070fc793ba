//! Scoring queries' attention probabilities over the prompt keys of one layer: the small dedicated
//! routine of reference §5.3 (attention kernels do not return probabilities), in f32.
//!
//! Owns: scaled dot products, causal visibility, the softmax, the reduction over queries, pooling
//! per query head and the mean over each GQA group (docs/design.md §4). It must not know where keys live
//! (the backend lends them through [`KeySource`], e.g. in place from paged blocks) nor how entries
//! are selected. Per query head it holds that head's scaled dot products with the prompt keys
//! (`n_q × n` floats, computed by the key source in one pass so a backend can share each key load
//! between the queries, or lent by the caller when its attention already computed them) and one
//! row of probabilities at a time.
//!
//! Softmax denominator (reference §5.3): each query is normalised over every key it can see in the
//! forward pass, and only prompt columns are scored. SnapKV window queries see the prompt keys at
//! or before their own position, window keys included (kvpress, SnapKV); lookahead queries see all
//! prompt keys and, when the backend passes them, the lookahead keys at or before their own
//! position. Passing the lookahead keys is the engine's choice for LookaheadKV: the scores are then
//! the probabilities the lookahead rows actually compute, as the training target's are for answer
//! rows (docs/design.md §4 training). Omitting them normalises over the prompt keys alone.

use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::math::{dot, exp_nonpositive, sum};

use super::pooling::{Pooling, pool1d};

/// Where the prompt keys of one layer are: entry `e` of KV head `h` is a `head_dim` slice, already
/// RoPE'd (and `k_norm`'d) as cached.
pub trait KeySource {
    /// Number of prompt entries.
    fn num_entries(&self) -> usize;
    /// Copies the key of `entry` for `kv_head` into `out[..head_dim]` (a copy, because a backend
    /// may store keys transposed).
    fn read_key(&self, kv_head: usize, entry: usize, out: &mut [f32]);

    /// Writes `scale · q_i·k_e` for every query `q_i` of `queries` (`[m][head_dim]`) and every
    /// entry `e` into `out[i · num_entries + e]`. The default reads key by key; a backend
    /// overrides it to run its attention kernel over its own key layout.
    fn scaled_dots(
        &self,
        kv_head: usize,
        queries: &[f32],
        head_dim: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let n = self.num_entries();
        let mut key = vec![0.0f32; head_dim];
        for entry in 0..n {
            self.read_key(kv_head, entry, &mut key);
            for (i, q) in queries.chunks_exact(head_dim).enumerate() {
                out[i * n + entry] = dot(q, &key) * scale;
            }
        }
    }
}

/// Keys in one contiguous `[entries, num_kv_heads, head_dim]` buffer.
#[derive(Debug, Clone, Copy)]
pub struct ContiguousKeys<'a> {
    keys: &'a [f32],
    num_kv_heads: usize,
    head_dim: usize,
}

impl<'a> ContiguousKeys<'a> {
    /// Fails when `keys` is not a whole number of `[num_kv_heads, head_dim]` rows.
    pub fn new(keys: &'a [f32], num_kv_heads: usize, head_dim: usize) -> Result<Self> {
        let row = num_kv_heads * head_dim;
        if row == 0 || !keys.len().is_multiple_of(row) {
            return Err(shape_error(format!(
                "keys hold {} floats, not a multiple of num_kv_heads × head_dim = {row}",
                keys.len()
            )));
        }
        Ok(ContiguousKeys {
            keys,
            num_kv_heads,
            head_dim,
        })
    }
}

impl KeySource for ContiguousKeys<'_> {
    fn num_entries(&self) -> usize {
        self.keys.len() / (self.num_kv_heads * self.head_dim)
    }

    fn read_key(&self, kv_head: usize, entry: usize, out: &mut [f32]) {
        let start = (entry * self.num_kv_heads + kv_head) * self.head_dim;
        out[..self.head_dim].copy_from_slice(&self.keys[start..start + self.head_dim]);
    }
}

/// Head counts of the layer being scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLayout {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Where the scoring queries sit relative to the prompt, which fixes what each can see.
#[derive(Debug, Clone, Copy)]
pub enum QueryRows<'a> {
    /// The queries are the last `n_q` prompt rows: query `i` sits at position `n − n_q + i` and
    /// sees prompt keys `0..=n − n_q + i` (SnapKV, PyramidKV).
    PromptSuffix,
    /// The queries sit after the prompt at positions `n..n + n_q` and see every prompt key, plus,
    /// if given, `extra_keys[0..=i]` (`[n_q, num_kv_heads, head_dim]`, e.g. the lookahead keys),
    /// which enter the softmax denominator but are never scored (LookaheadKV).
    AfterPrompt { extra_keys: Option<&'a [f32]> },
}

/// How one query head's probability rows become one score row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryReduction {
    /// Sum over queries (SnapKV as published).
    Sum,
    /// Mean over queries (LookaheadKV's `s̃`).
    Mean,
}

/// One layer's scoring request.
#[derive(Debug, Clone, Copy)]
pub struct ScoringRequest<'a> {
    /// `[n_q, num_heads, head_dim]`, RoPE'd at the queries' positions (and `q_norm`'d).
    pub queries: &'a [f32],
    pub rows: QueryRows<'a>,
    /// Leading prompt entries that receive a score; later entries only enter the denominator.
    pub scored_entries: usize,
    pub reduction: QueryReduction,
    /// Pooling applied to each query head's reduced row, before the GQA mean (kvpress order;
    /// identical to pooling after the mean for average pooling).
    pub pooling: Option<Pooling>,
    /// The queries' scaled dot products `q·k/√d` with every prompt key, `[n_q, num_heads, n]`,
    /// when the caller already has them: the key source is then not asked for them. They must be
    /// the bits its [`KeySource::scaled_dots`] would write (the CPU backend keeps the lookahead
    /// rows' from their attention, which runs the same kernel over the same keys).
    pub dots: Option<&'a [f32]>,
}

/// Scores per KV head over the first `num_entries` prompt entries, `[num_kv_heads, num_entries]`.
#[derive(Debug, Clone, PartialEq)]
pub struct KvHeadScores {
    num_kv_heads: usize,
    num_entries: usize,
    scores: Vec<f32>,
}

impl KvHeadScores {
    /// Wraps precomputed scores (`[num_kv_heads, num_entries]`), e.g. from a device kernel.
    pub fn from_vec(num_kv_heads: usize, num_entries: usize, scores: Vec<f32>) -> Result<Self> {
        if scores.len() != num_kv_heads * num_entries {
            return Err(shape_error(format!(
                "{} scores for {num_kv_heads} KV heads × {num_entries} entries",
                scores.len()
            )));
        }
        Ok(KvHeadScores {
            num_kv_heads,
            num_entries,
            scores,
        })
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_kv_heads
    }

    pub fn num_entries(&self) -> usize {
        self.num_entries
    }

    /// The score row of one KV head.
    pub fn head(&self, kv_head: usize) -> &[f32] {
        &self.scores[kv_head * self.num_entries..(kv_head + 1) * self.num_entries]
    }
}

/// Computes one layer's per-KV-head scores: for each query head, `softmax(q·kᵀ/√d)` over the keys
/// each query sees (f32), reduced over queries, pooled, then averaged over the query heads of the
/// GQA group. Fails on inconsistent shapes (a caller bug, reported rather than panicking).
pub fn score_prompt<K: KeySource + Sync + ?Sized>(
    layout: HeadLayout,
    request: &ScoringRequest<'_>,
    keys: &K,
) -> Result<KvHeadScores> {
    let num_queries = check_shapes(layout, request, keys)?;
    let prompt_len = keys.num_entries();
    let num_extra = match request.rows {
        QueryRows::AfterPrompt {
            extra_keys: Some(_),
        } => num_queries,
        _ => 0,
    };
    let scored = request.scored_entries;
    let group = layout.num_heads / layout.num_kv_heads;
    let scale = 1.0 / (layout.head_dim as f32).sqrt();
    // Query heads are independent: score them in parallel, then sum each GQA group in head
    // order so the result does not depend on the thread count.
    let head_rows: Vec<Vec<f32>> = (0..layout.num_heads)
        .into_par_iter()
        .map(|head| {
            let kv_head = head / group;
            let computed = match request.dots {
                Some(_) => Vec::new(),
                None => {
                    let queries: Vec<f32> = (0..num_queries)
                        .flat_map(|query| {
                            let start = (query * layout.num_heads + head) * layout.head_dim;
                            request.queries[start..start + layout.head_dim]
                                .iter()
                                .copied()
                        })
                        .collect();
                    let mut dots = vec![0.0f32; num_queries * prompt_len];
                    keys.scaled_dots(kv_head, &queries, layout.head_dim, scale, &mut dots);
                    dots
                }
            };
            let mut probs = vec![0.0f32; prompt_len + num_extra];
            let mut reduced = vec![0.0f32; scored];
            for query in 0..num_queries {
                let dots = match request.dots {
                    Some(lent) => &lent[(query * layout.num_heads + head) * prompt_len..],
                    None => &computed[query * prompt_len..],
                };
                let dots = &dots[..prompt_len];
                let visible = query_row_probs(layout, request, head, query, dots, &mut probs);
                let scored_visible = visible.min(scored);
                for (acc, p) in reduced.iter_mut().zip(&probs[..scored_visible]) {
                    *acc += p;
                }
            }
            if request.reduction == QueryReduction::Mean {
                let inv = 1.0 / num_queries as f32;
                reduced.iter_mut().for_each(|s| *s *= inv);
            }
            match request.pooling {
                Some(pooling) => {
                    let mut pooled = vec![0.0f32; scored];
                    pool1d(&reduced, pooling, &mut pooled);
                    pooled
                }
                None => reduced,
            }
        })
        .collect();
    let mut out = vec![0.0f32; layout.num_kv_heads * scored];
    for (head, row) in head_rows.iter().enumerate() {
        let kv_head = head / group;
        let dst = &mut out[kv_head * scored..(kv_head + 1) * scored];
        for (acc, s) in dst.iter_mut().zip(row) {
            *acc += s;
        }
    }
    let inv_group = 1.0 / group as f32;
    out.iter_mut().for_each(|s| *s *= inv_group);
    KvHeadScores::from_vec(layout.num_kv_heads, scored, out)
}

/// Fills `probs[..visible]` with one query's softmax over the prompt keys it sees (`dots`, its
/// scaled dot products with every prompt key), followed by the extra keys it sees (which are never
/// scored), and returns how many prompt columns it sees.
fn query_row_probs(
    layout: HeadLayout,
    request: &ScoringRequest<'_>,
    head: usize,
    query: usize,
    dots: &[f32],
    probs: &mut [f32],
) -> usize {
    let d = layout.head_dim;
    let kv_head = head / (layout.num_heads / layout.num_kv_heads);
    let q_start = (query * layout.num_heads + head) * d;
    let q = &request.queries[q_start..q_start + d];
    let scale = 1.0 / (d as f32).sqrt();
    let prompt_len = dots.len();
    let num_queries = request.queries.len() / (layout.num_heads * d);
    let (visible_prompt, extra) = match request.rows {
        QueryRows::PromptSuffix => (prompt_len - num_queries + query + 1, None),
        QueryRows::AfterPrompt { extra_keys } => (prompt_len, extra_keys),
    };
    probs[..visible_prompt].copy_from_slice(&dots[..visible_prompt]);
    let mut len = visible_prompt;
    if let Some(extra) = extra {
        for e in 0..=query {
            let start = (e * layout.num_kv_heads + kv_head) * d;
            probs[len] = dot(q, &extra[start..start + d]) * scale;
            len += 1;
        }
    }
    softmax_in_place(&mut probs[..len]);
    visible_prompt
}

/// Softmax with the vectorisable `exp` (every argument is `≤ 0` after subtracting the max) and a
/// sum in eight partial sums, so a long prompt row costs a few instructions per key.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|x| *x = exp_nonpositive(*x - max));
    let inv = 1.0 / sum(row);
    row.iter_mut().for_each(|x| *x *= inv);
}

/// Returns the number of queries after checking every length the loops rely on.
fn check_shapes<K: KeySource + ?Sized>(
    layout: HeadLayout,
    request: &ScoringRequest<'_>,
    keys: &K,
) -> Result<usize> {
    let HeadLayout {
        num_heads,
        num_kv_heads,
        head_dim,
    } = layout;
    if num_kv_heads == 0 || head_dim == 0 || !num_heads.is_multiple_of(num_kv_heads) {
        return Err(shape_error(format!(
            "{num_heads} query heads cannot be grouped over {num_kv_heads} KV heads of dim {head_dim}"
        )));
    }
    let row = num_heads * head_dim;
    if request.queries.is_empty() || !request.queries.len().is_multiple_of(row) {
        return Err(shape_error(format!(
            "queries hold {} floats, not a positive multiple of num_heads × head_dim = {row}",
            request.queries.len()
        )));
    }
    let num_queries = request.queries.len() / row;
    let prompt_len = keys.num_entries();
    if request.scored_entries > prompt_len {
        return Err(shape_error(format!(
            "{} scored entries for a prompt of {prompt_len}",
            request.scored_entries
        )));
    }
    if let Some(dots) = request.dots
        && dots.len() != num_queries * num_heads * prompt_len
    {
        return Err(shape_error(format!(
            "lent dot products hold {} floats, expected {num_queries} queries × {num_heads} heads \
             × {prompt_len} entries",
            dots.len()
        )));
    }
    match request.rows {
        QueryRows::PromptSuffix if num_queries > prompt_len => Err(shape_error(format!(
            "{num_queries} window queries for a prompt of {prompt_len}"
        ))),
        QueryRows::AfterPrompt {
            extra_keys: Some(extra),
        } if extra.len() != num_queries * num_kv_heads * head_dim => Err(shape_error(format!(
            "extra keys hold {} floats, expected {num_queries} × {num_kv_heads} × {head_dim}",
            extra.len()
        ))),
        _ => Ok(num_queries),
    }
}

fn shape_error(message: String) -> EngineError {
    EngineError::InvalidParameter {
        field: "eviction.scoring",
        message,
    }
}
