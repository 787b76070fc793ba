//! Eviction scoring (`eviction_scoring.cu`) and selection (`top_k.cu`) through the host shim.

use crate::{KvLayer, KvLayout, QkvRows, check_block_tables, ffi, int};

/// How a query head's reduced score row is pooled (the kernel size odd), as the CPU's
/// `eviction::pool1d` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScorePool {
    None,
    Max(usize),
    Avg(usize),
}

impl ScorePool {
    /// The kernel's `pool` and `kernel` arguments (`GLIMPSE_POOL_*`).
    fn arguments(self) -> (i32, i32) {
        let (pool, kernel) = match self {
            ScorePool::None => (0, 1),
            ScorePool::Max(kernel) => (1, kernel),
            ScorePool::Avg(kernel) => (2, kernel),
        };
        assert_eq!(kernel % 2, 1, "pooling kernels are odd");
        (pool, int(kernel))
    }
}

/// What one layer's scoring computes for one sequence.
#[derive(Debug, Clone, Copy)]
pub struct ScoringPlan {
    /// Prompt entries (the sequence's cache entries `0..prompt_len`).
    pub prompt_len: usize,
    /// Leading entries that get a score.
    pub scored: usize,
    /// The queries are the last prompt rows (SnapKV, PyramidKV), not rows after the prompt.
    pub suffix: bool,
    /// The query rows' own keys enter the softmax denominator (LookaheadKV).
    pub with_extra: bool,
    /// Mean over the queries (LookaheadKV) rather than their sum.
    pub mean: bool,
    pub pool: ScorePool,
    pub num_heads: usize,
    pub threads: u32,
}

/// Per-KV-head scores (`out`: `[num_kv_heads, plan.scored]`) of the prompt entries of the sequence
/// with `block_table`, by the scoring rows `qkv` (queries at the start of each row, their own keys
/// where `rows` says).
pub fn eviction_scores(
    qkv: &[f32],
    rows: QkvRows,
    layer: &KvLayer<'_>,
    block_table: &[i32],
    plan: ScoringPlan,
    out: &mut [f32],
) {
    let KvLayout {
        num_kv_heads,
        head_dim,
        block_size,
    } = layer.layout;
    assert!(plan.threads.is_power_of_two());
    assert_eq!(plan.num_heads % num_kv_heads, 0);
    assert!(plan.num_heads * head_dim <= rows.k_offset);
    assert!(rows.k_offset + num_kv_heads * head_dim <= rows.row_stride);
    assert_eq!(qkv.len() % rows.row_stride, 0);
    let n_q = qkv.len() / rows.row_stride;
    assert!(n_q > 0);
    assert!(plan.scored <= plan.prompt_len);
    assert!(!plan.suffix || n_q <= plan.prompt_len);
    assert!(!(plan.suffix && plan.with_extra));
    assert_eq!(out.len(), num_kv_heads * plan.scored);
    let prompt_len = [int(plan.prompt_len)];
    check_block_tables(block_table, block_table.len(), &prompt_len, layer);
    let (pool, kernel) = plan.pool.arguments();
    // SAFETY: every scoring row is inside `qkv`, every prompt entry inside the layer.
    unsafe {
        ffi::glimpse_shim_eviction_scores(
            qkv.as_ptr(),
            qkv.as_ptr().add(rows.k_offset),
            int(rows.row_stride),
            int(n_q),
            layer.keys.as_ptr(),
            block_table.as_ptr(),
            int(plan.prompt_len),
            int(plan.scored),
            i32::from(plan.suffix),
            i32::from(plan.with_extra),
            i32::from(plan.mean),
            pool,
            kernel,
            out.as_mut_ptr(),
            int(plan.num_heads),
            int(num_kv_heads),
            int(head_dim),
            int(block_size),
            1.0 / (head_dim as f32).sqrt(),
            plan.threads,
        );
    }
}

/// The pooling and GQA-mean launch alone: `reduced` `[num_heads, scored]` into `out`
/// `[num_kv_heads, scored]`.
pub fn score_pool(
    reduced: &[f32],
    num_heads: usize,
    num_kv_heads: usize,
    pool: ScorePool,
    threads: u32,
    out: &mut [f32],
) {
    assert_eq!(num_heads % num_kv_heads, 0);
    assert_eq!(reduced.len() % num_heads, 0);
    let scored = reduced.len() / num_heads;
    assert_eq!(out.len(), num_kv_heads * scored);
    let (pool, kernel) = pool.arguments();
    // SAFETY: `reduced` and `out` hold `scored` floats per head.
    unsafe {
        ffi::glimpse_shim_score_pool(
            reduced.as_ptr(),
            out.as_mut_ptr(),
            int(scored),
            int(num_heads),
            int(num_kv_heads),
            pool,
            kernel,
            threads,
        );
    }
}

/// Per KV head of `scores` (`[num_kv_heads, scored]`), the `k` highest-scoring entries ascending,
/// then the `window` entries `scored..scored + window`: `[num_kv_heads, min(k, scored) + window]`.
pub fn top_k(
    scores: &[f32],
    num_kv_heads: usize,
    k: usize,
    window: usize,
    threads: u32,
) -> Vec<i32> {
    assert!(threads.is_power_of_two());
    assert_eq!(scores.len() % num_kv_heads, 0);
    let scored = scores.len() / num_kv_heads;
    let mut kept = vec![-1; num_kv_heads * (k.min(scored) + window)];
    // SAFETY: `scores` holds `scored` floats per head, `kept` the selection of every head.
    unsafe {
        ffi::glimpse_shim_top_k(
            scores.as_ptr(),
            int(scored),
            int(k),
            int(window),
            kept.as_mut_ptr(),
            int(num_kv_heads),
            threads,
        );
    }
    kept
}
