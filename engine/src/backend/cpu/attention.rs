//! Paged causal attention on the CPU: every query row attends to its sequence's cache entries
//! `0..=own entry`, reading K/V in place block by block through the block table (no copy of the
//! context), with an online softmax so no score matrix is materialised.
//!
//! Flash-attention style tiling: consecutive rows of one sequence (a prefill chunk) form a tile
//! whose query heads, GQA group by group, pass over each run of keys together, so every key and
//! value load is shared by up to [`TILE_QUERY_HEADS`] query heads and the inner loops are the
//! register-blocked kernels of [`super::attention_kernels`]. Tiles run in parallel. A row's
//! numbers do not depend on its tile: it folds the same runs of keys, in the same order, with the
//! same per-row arithmetic, whether it shares them with other rows or not.

use std::ops::Range;

use rayon::prelude::*;

use super::attention_kernels::{Kernels, KeyRun, LANES};
use super::kv_cache::LayerView;

/// Query heads (rows × GQA group) per tile: enough to amortise each run's loads, few enough that a
/// tile's accumulators stay in L1.
const TILE_QUERY_HEADS: usize = 32;

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

/// Keys and values outside the cache, of which the first `count` per head are attended: keys
/// transposed like the cache's, `[num_kv_heads][head_dim][capacity]`, values
/// `[num_kv_heads][capacity][head_dim]`.
#[derive(Debug, Clone, Copy)]
pub struct ExtraKv<'a> {
    pub keys_t: &'a [f32],
    pub values: &'a [f32],
    pub capacity: usize,
    pub count: usize,
}

impl QueryContext<'_> {
    /// Calls `f(block, first_slot, first_entry, count)` for each run of attended entries that is
    /// contiguous within one block, in entry order.
    fn for_each_run(&self, block_size: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
        let skip_start = self.skip.start.min(self.num_entries);
        let skip_end = self.skip.end.clamp(skip_start, self.num_entries);
        for range in [0..skip_start, skip_end..self.num_entries] {
            let mut entry = range.start;
            while entry < range.end {
                let (block_index, slot) = (entry / block_size, entry % block_size);
                let count = (block_size - slot).min(range.end - entry);
                f(self.block_table[block_index] as usize, slot, entry, count);
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
    let tiles = tiles(contexts, (TILE_QUERY_HEADS / group).max(1));
    let mut tile_outputs = Vec::with_capacity(tiles.len());
    let mut rest = out;
    for rows in &tiles {
        let (tile_out, tail) = rest.split_at_mut(rows.len() * width);
        tile_outputs.push(tile_out);
        rest = tail;
    }
    let kernels = Kernels::detect();
    tiles.into_par_iter().zip(tile_outputs).for_each_init(
        TileScratch::default,
        |scratch, (rows, out)| {
            let tile = Tile {
                q: &q[rows.start * width..rows.end * width],
                contexts: &contexts[rows],
            };
            tile.attend(cache, shape, kernels, scratch, out);
        },
    );
}

/// Splits the rows into tiles of at most `max_rows` consecutive rows that read the same keys: one
/// sequence's rows (same block table and skipped range), none with extra keys.
fn tiles(contexts: &[QueryContext<'_>], max_rows: usize) -> Vec<Range<usize>> {
    let same_keys = |a: &QueryContext<'_>, b: &QueryContext<'_>| {
        a.extra.is_none()
            && b.extra.is_none()
            && std::ptr::eq(a.block_table, b.block_table)
            && a.skip == b.skip
    };
    let mut tiles = Vec::new();
    let mut start = 0;
    for row in 1..=contexts.len() {
        if row == contexts.len()
            || row - start == max_rows
            || !same_keys(&contexts[row - 1], &contexts[row])
        {
            tiles.push(start..row);
            start = row;
        }
    }
    tiles
}

/// Rows that share their keys, and their queries.
struct Tile<'a> {
    q: &'a [f32],
    contexts: &'a [QueryContext<'a>],
}

impl Tile<'_> {
    fn attend(
        &self,
        cache: LayerView<'_>,
        shape: AttentionShape,
        kernels: Kernels,
        s: &mut TileScratch,
        out: &mut [f32],
    ) {
        let (d, bs) = (shape.head_dim, shape.block_size);
        let group = shape.num_heads / shape.num_kv_heads;
        let width = shape.num_heads * d;
        // The row that attends most entries: every other row's runs are prefixes of its runs.
        let widest = self
            .contexts
            .iter()
            .max_by_key(|c| c.num_entries)
            .expect("tiles are not empty");
        let limits = self.contexts.iter().map(|c| c.num_entries);
        s.limits.clear();
        s.limits
            .extend(limits.flat_map(|n| std::iter::repeat_n(n, group)));
        for kv_head in 0..shape.num_kv_heads {
            let heads = kv_head * group * d..(kv_head + 1) * group * d;
            s.start(self.contexts.len() * group, d);
            for (row, q) in self.q.chunks_exact(width).enumerate() {
                s.q[row * group * d..(row + 1) * group * d].copy_from_slice(&q[heads.clone()]);
            }
            widest.for_each_run(bs, |block, slot, entry, count| {
                let base = cache.head_offset(block, kv_head);
                for piece in lane_pieces(slot, count) {
                    let run = KeyRun {
                        keys_t: &cache.keys[base + piece.start..base + (d - 1) * bs + piece.end],
                        stride: bs,
                        values: &cache.values[base + piece.start * d..base + piece.end * d],
                        lanes: piece.len(),
                    };
                    s.absorb(&run, Some(entry + piece.start - slot), shape.scale, kernels);
                }
            });
            if let Some(extra) = widest.extra {
                let base = kv_head * extra.capacity * d;
                for piece in lane_pieces(0, extra.count) {
                    let run = KeyRun {
                        keys_t: &extra.keys_t
                            [base + piece.start..base + (d - 1) * extra.capacity + piece.end],
                        stride: extra.capacity,
                        values: &extra.values[base + piece.start * d..base + piece.end * d],
                        lanes: piece.len(),
                    };
                    s.absorb(&run, None, shape.scale, kernels);
                }
            }
            for (row, out) in out.chunks_exact_mut(width).enumerate() {
                let first = row * group;
                s.write_normalised(first..first + group, &mut out[heads.clone()]);
            }
        }
    }
}

/// Splits the slots `first_slot..first_slot + count` of a block into runs of at most [`LANES`]
/// that do not cross a multiple of [`LANES`], so a row cut short inside a block sees a prefix of
/// the runs a longer row sees.
pub(super) fn lane_pieces(first_slot: usize, count: usize) -> impl Iterator<Item = Range<usize>> {
    let end = first_slot + count;
    let mut start = first_slot;
    std::iter::from_fn(move || {
        (start < end).then(|| {
            let piece_end = ((start / LANES + 1) * LANES).min(end);
            let piece = start..piece_end;
            start = piece_end;
            piece
        })
    })
}

/// Per-thread running state of the online softmax of one tile's query heads (rows × GQA group)
/// for one KV head.
#[derive(Default)]
struct TileScratch {
    head_dim: usize,
    /// Queries, `[heads][head_dim]`.
    q: Vec<f32>,
    /// Cache entries each query head attends (its row's `num_entries`).
    limits: Vec<usize>,
    /// Lanes of the current run each query head attends.
    counts: Vec<usize>,
    /// Running max score per head.
    max: Vec<f32>,
    /// Running softmax denominator per head.
    sum: Vec<f32>,
    /// Running weighted sum of values, `[heads][head_dim]`.
    acc: Vec<f32>,
    /// Scores, then probabilities, of the current run, `[heads][LANES]`.
    scores: Vec<[f32; LANES]>,
}

impl TileScratch {
    fn start(&mut self, heads: usize, head_dim: usize) {
        self.head_dim = head_dim;
        for (v, fill) in [(&mut self.max, f32::NEG_INFINITY), (&mut self.sum, 0.0)] {
            v.clear();
            v.resize(heads, fill);
        }
        for v in [&mut self.q, &mut self.acc] {
            v.clear();
            v.resize(heads * head_dim, 0.0);
        }
        self.counts.resize(heads, 0);
        self.scores.resize(heads, [0.0; LANES]);
    }

    /// Folds one run of keys into every query head's online softmax. With `first_entry`, a head
    /// attends the run's lanes below its limit; without, all of them.
    fn absorb(
        &mut self,
        run: &KeyRun<'_>,
        first_entry: Option<usize>,
        scale: f32,
        kernels: Kernels,
    ) {
        let d = self.head_dim;
        let mut uniform = true;
        for (count, &limit) in self.counts.iter_mut().zip(&self.limits) {
            *count = first_entry.map_or(run.lanes, |e| limit.saturating_sub(e).min(run.lanes));
            uniform &= *count == run.lanes;
        }
        kernels.scores(&self.q, d, run, scale, &mut self.scores);
        for (h, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let (max, sum) = (&mut self.max[h], &mut self.sum[h]);
            let rescale = kernels.fold_run(&mut self.scores[h], count, max, sum);
            if rescale != 1.0 {
                self.acc[h * d..(h + 1) * d]
                    .iter_mut()
                    .for_each(|a| *a *= rescale);
            }
        }
        if uniform {
            kernels.accumulate(&self.scores, run.values, run.lanes, d, &mut self.acc);
            return;
        }
        for (h, &count) in self.counts.iter().enumerate() {
            if count > 0 {
                let acc = &mut self.acc[h * d..(h + 1) * d];
                kernels.accumulate(&self.scores[h..h + 1], run.values, count, d, acc);
            }
        }
    }

    fn write_normalised(&self, heads: Range<usize>, out: &mut [f32]) {
        let d = self.head_dim;
        for (h, out) in heads.zip(out.chunks_exact_mut(d)) {
            let inv = 1.0 / self.sum[h];
            for (o, &a) in out.iter_mut().zip(&self.acc[h * d..(h + 1) * d]) {
                *o = a * inv;
            }
        }
    }
}
