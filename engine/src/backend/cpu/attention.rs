//! Paged causal attention on the CPU: every query row attends to its sequence's cache entries
//! `0..=own entry`, reading K/V in place block by block through the block table (no copy of the
//! context), with an online softmax so no score matrix is materialised. Rows run in parallel; the
//! query heads of a GQA group share each K/V load.

use rayon::prelude::*;

use super::kv_cache::LayerView;
use crate::math::{dot, exp_nonpositive};

/// What one query row attends to.
#[derive(Debug, Clone)]
pub struct QueryContext<'a> {
    pub block_table: &'a [u32],
    /// Number of cache entries attended (the row's own entry is the last one).
    pub num_entries: usize,
    /// Entries inside `0..num_entries` that are not attended: the unused tail of a compacted
    /// prefix in a layer that kept fewer entries than the sequence's blocks hold (PyramidKV).
    /// Empty for every other row.
    pub skip: std::ops::Range<usize>,
    /// Keys and values attended after the cache entries, never written to the cache: a
    /// lookahead row sees the lookahead rows up to its own (LookaheadKV).
    pub extra: Option<ExtraKv<'a>>,
}

/// Contiguous keys and values outside the cache, `[num_kv_heads][capacity][head_dim]` each, of
/// which the first `count` per head are attended.
#[derive(Debug, Clone, Copy)]
pub struct ExtraKv<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub capacity: usize,
    pub count: usize,
}

impl QueryContext<'_> {
    /// Calls `f(block, first_slot, count)` for each run of attended entries that is contiguous
    /// within one block, in entry order.
    #[inline(always)]
    fn for_each_run(&self, block_size: usize, mut f: impl FnMut(usize, usize, usize)) {
        let skip_start = self.skip.start.min(self.num_entries);
        let skip_end = self.skip.end.clamp(skip_start, self.num_entries);
        for range in [0..skip_start, skip_end..self.num_entries] {
            let mut entry = range.start;
            while entry < range.end {
                let (block_index, slot) = (entry / block_size, entry % block_size);
                let count = (block_size - slot).min(range.end - entry);
                f(self.block_table[block_index] as usize, slot, count);
                entry += count;
            }
        }
    }
}

/// Attention shape parameters.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub scale: f32,
}

/// `out[t] = softmax(q[t]·Kᵀ·scale)·V` per head, for rows `q` `[T, num_heads·head_dim]`.
pub fn paged_attention(
    q: &[f32],
    contexts: &[QueryContext<'_>],
    cache: LayerView<'_>,
    shape: AttentionShape,
    out: &mut [f32],
) {
    let width = shape.num_heads * shape.head_dim;
    let group = shape.num_heads / shape.num_kv_heads;
    q.par_chunks(width)
        .zip(out.par_chunks_mut(width))
        .zip(contexts.par_iter())
        .for_each_init(
            || Scratch::new(group, shape.head_dim, shape.block_size),
            |scratch, ((q_row, out_row), ctx)| {
                for kv_head in 0..shape.num_kv_heads {
                    let heads = kv_head * group..(kv_head + 1) * group;
                    let span = heads.start * shape.head_dim..heads.end * shape.head_dim;
                    attend_group(&q_row[span.clone()], ctx, cache, kv_head, shape, scratch);
                    scratch.write_normalised(&mut out_row[span]);
                }
            },
        );
}

/// Per-thread running state of the online softmax for one GQA group.
struct Scratch {
    group: usize,
    head_dim: usize,
    /// Longest run of keys folded at once.
    block_size: usize,
    /// Running max score per head.
    max: Vec<f32>,
    /// Running softmax denominator per head.
    sum: Vec<f32>,
    /// Running weighted sum of values, `[group, head_dim]`.
    acc: Vec<f32>,
    /// Scores of one block, `[group, block_size]`.
    scores: Vec<f32>,
}

impl Scratch {
    fn new(group: usize, head_dim: usize, block_size: usize) -> Self {
        Self {
            group,
            head_dim,
            block_size,
            max: vec![0.0; group],
            sum: vec![0.0; group],
            acc: vec![0.0; group * head_dim],
            scores: vec![0.0; group * block_size],
        }
    }

    fn reset(&mut self) {
        self.max.fill(f32::NEG_INFINITY);
        self.sum.fill(0.0);
        self.acc.fill(0.0);
    }

    fn write_normalised(&self, out: &mut [f32]) {
        for h in 0..self.group {
            let inv = 1.0 / self.sum[h];
            let d = self.head_dim;
            for (o, &a) in out[h * d..(h + 1) * d]
                .iter_mut()
                .zip(&self.acc[h * d..(h + 1) * d])
            {
                *o = a * inv;
            }
        }
    }
}

/// Runs [`attend_group_generic`] compiled for the widest vector unit the CPU has.
fn attend_group(
    q: &[f32],
    ctx: &QueryContext<'_>,
    cache: LayerView<'_>,
    kv_head: usize,
    shape: AttentionShape,
    s: &mut Scratch,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected at run time.
        return unsafe { attend_group_avx512(q, ctx, cache, kv_head, shape, s) };
    }
    attend_group_generic(q, ctx, cache, kv_head, shape, s)
}

/// The same code as [`attend_group_generic`], vectorised with AVX-512 by the compiler.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_group_avx512(
    q: &[f32],
    ctx: &QueryContext<'_>,
    cache: LayerView<'_>,
    kv_head: usize,
    shape: AttentionShape,
    s: &mut Scratch,
) {
    attend_group_generic(q, ctx, cache, kv_head, shape, s)
}

#[inline(always)]
fn attend_group_generic(
    q: &[f32],
    ctx: &QueryContext<'_>,
    cache: LayerView<'_>,
    kv_head: usize,
    shape: AttentionShape,
    s: &mut Scratch,
) {
    let (d, bs) = (shape.head_dim, shape.block_size);
    s.reset();
    ctx.for_each_run(bs, |block, slot, n| {
        let base = cache.head_offset(block, kv_head) + slot * d;
        let keys = &cache.keys[base..base + n * d];
        let values = &cache.values[base..base + n * d];
        absorb(q, keys, values, shape.scale, s);
    });
    if let Some(extra) = ctx.extra {
        let base = kv_head * extra.capacity * d;
        let span = base..base + extra.count * d;
        let keys = extra.keys[span.clone()].chunks(bs * d);
        for (k, v) in keys.zip(extra.values[span].chunks(bs * d)) {
            absorb(q, k, v, shape.scale, s);
        }
    }
}

/// Folds one run of contiguous keys and values (`[n, head_dim]` each, `n ≤ block_size`) into
/// the online softmax of every query head of the group.
#[inline(always)]
fn absorb(q: &[f32], keys: &[f32], values: &[f32], scale: f32, s: &mut Scratch) {
    let d = s.head_dim;
    let n = keys.len() / d;
    for h in 0..s.group {
        let qh = &q[h * d..(h + 1) * d];
        let scores = &mut s.scores[h * s.block_size..h * s.block_size + n];
        let mut block_max = f32::NEG_INFINITY;
        for (score, k) in scores.iter_mut().zip(keys.chunks_exact(d)) {
            *score = dot(qh, k) * scale;
            block_max = block_max.max(*score);
        }
        let new_max = s.max[h].max(block_max);
        let rescale = (s.max[h] - new_max).exp();
        s.max[h] = new_max;
        s.sum[h] *= rescale;
        let acc = &mut s.acc[h * d..(h + 1) * d];
        if rescale != 1.0 {
            acc.iter_mut().for_each(|a| *a *= rescale);
        }
        let mut block_sum = 0.0;
        for score in scores.iter_mut() {
            *score = exp_nonpositive(*score - new_max);
            block_sum += *score;
        }
        s.sum[h] += block_sum;
        for (&p, v) in scores.iter().zip(values.chunks_exact(d)) {
            for (a, &vv) in acc.iter_mut().zip(v) {
                *a += p * vv;
            }
        }
    }
}
