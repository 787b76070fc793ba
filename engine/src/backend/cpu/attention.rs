//! Paged causal attention on the CPU: every query row attends to its sequence's cache entries
//! `0..=own entry`, reading K/V in place block by block through the block table (no copy of the
//! context), with an online softmax so no score matrix is materialised.
//!
//! Flash-attention style tiling: consecutive rows of one sequence (a prefill chunk, or its
//! lookahead rows) form a tile whose query heads, GQA group by group, pass over each run of keys
//! together, so every key and value load is shared by up to [`TILE_QUERY_HEADS`] query heads and
//! the inner loops are the register-blocked kernels of [`super::attention_kernels`]. Tiles run in
//! parallel. A row's numbers do not depend on its tile: it folds the same runs of keys, in the same
//! order, with the same per-row arithmetic, whether it shares them with other rows or not.

use std::ops::Range;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::attention_kernels::{Kernels, KeyRun, KvElement, LANES};
use super::kv_cache::{LayerView, PoolLayer, with_layer_view};

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

impl<'a> ExtraKv<'a> {
    /// The extra keys `lanes` (at most [`LANES`]) of `kv_head`, laid out like a cache block of
    /// `capacity` slots.
    fn key_run(&self, kv_head: usize, head_dim: usize, lanes: Range<usize>) -> KeyRun<'a> {
        let (base, d, capacity) = (kv_head * self.capacity * head_dim, head_dim, self.capacity);
        KeyRun {
            keys_t: &self.keys_t[base + lanes.start..base + (d - 1) * capacity + lanes.end],
            stride: capacity,
            values: &self.values[base + lanes.start * d..base + lanes.end * d],
            lanes: lanes.len(),
        }
    }
}

impl QueryContext<'_> {
    /// Calls `f(block, first_slot, first_entry, count)` for each run of attended entries that is
    /// contiguous within one block, in entry order.
    pub fn for_each_run(&self, block_size: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
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

/// Thread time of one [`paged_attention`] call's tiles: those of rows with extra keys (lookahead
/// rows) and the others.
#[derive(Debug, Clone, Copy, Default)]
pub struct TileTimes {
    pub plain: Duration,
    pub extra: Duration,
}

impl std::ops::Add for TileTimes {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            plain: self.plain + other.plain,
            extra: self.extra + other.extra,
        }
    }
}

/// The scaled dot products `q·k·scale` of the rows with extra keys (lookahead rows) with every
/// cache entry they attend, kept from their attention for eviction scoring: LookaheadKV scores
/// exactly these numbers, and the attention kernel computes them anyway, so keeping them spares
/// scoring a second pass over the prompt's keys (the same kernel on the same keys: the same bits).
/// `[row][head][entry]`, rows in batch order; reused from pass to pass.
#[derive(Debug, Default)]
pub struct KeptDots {
    data: Vec<f32>,
    /// Per batch row, its span of `data`: `None` for a row that keeps none.
    spans: Vec<Option<Range<usize>>>,
}

impl KeptDots {
    /// Lays out one pass's rows: a row with extra keys and no skipped entries keeps
    /// `num_heads × num_entries` dots. Not zeroed: attention writes every one of them.
    fn lay_out(&mut self, contexts: &[QueryContext<'_>], num_heads: usize) {
        self.spans.clear();
        let mut end = 0;
        for c in contexts {
            let keeps = c.extra.is_some() && c.skip.is_empty();
            let len = num_heads * c.num_entries;
            self.spans.push(keeps.then(|| end..end + len));
            end += if keeps { len } else { 0 };
        }
        self.data.resize(end, 0.0);
    }

    /// The kept dots of the batch rows `rows` of the last pass, `[row][head][entry]`, or `None`
    /// unless every one of them kept its own.
    pub fn rows(&self, rows: Range<usize>) -> Option<&[f32]> {
        let spans = self.spans.get(rows)?;
        let first = spans.first()?.as_ref()?.start;
        let mut end = first;
        for span in spans {
            end = span.as_ref()?.end;
        }
        Some(&self.data[first..end])
    }

    /// Splits `data` into one mutable piece per tile (empty for tiles that keep none).
    fn split_by_tiles(&mut self, tiles: &[Range<usize>]) -> Vec<&mut [f32]> {
        let mut pieces = Vec::with_capacity(tiles.len());
        let mut rest = self.data.as_mut_slice();
        for rows in tiles {
            let len = self.spans[rows.clone()]
                .iter()
                .flatten()
                .map(Range::len)
                .sum();
            let (piece, tail) = rest.split_at_mut(len);
            pieces.push(piece);
            rest = tail;
        }
        pieces
    }
}

/// `out[t] = softmax(q[t]·Kᵀ·scale)·V` per head, for rows `q` `[T, num_heads·head_dim]`, reading
/// the cache in its element type (the lookahead rows' extra K/V are f32 in every pool), and
/// keeping the lookahead rows' scaled dot products with the cache entries in `dots`.
pub fn paged_attention(
    q: &[f32],
    contexts: &[QueryContext<'_>],
    cache: PoolLayer<'_>,
    shape: AttentionShape,
    out: &mut [f32],
    dots: &mut KeptDots,
) -> TileTimes {
    with_layer_view!(cache, view => attend_all(q, contexts, view, shape, out, dots))
}

fn attend_all<E: KvElement>(
    q: &[f32],
    contexts: &[QueryContext<'_>],
    cache: LayerView<'_, E>,
    shape: AttentionShape,
    out: &mut [f32],
    dots: &mut KeptDots,
) -> TileTimes {
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
    dots.lay_out(contexts, shape.num_heads);
    let tile_dots = dots.split_by_tiles(&tiles);
    let kernels = Kernels::detect();
    tiles
        .into_par_iter()
        .zip(tile_outputs)
        .zip(tile_dots)
        .map_init(TileScratch::default, |scratch, ((rows, out), dots)| {
            let started = Instant::now();
            let tile = Tile {
                q: &q[rows.start * width..rows.end * width],
                contexts: &contexts[rows],
            };
            tile.attend(cache, shape, kernels, scratch, out, dots);
            let time = started.elapsed();
            match tile.contexts[0].extra {
                Some(_) => TileTimes {
                    extra: time,
                    ..TileTimes::default()
                },
                None => TileTimes {
                    plain: time,
                    ..TileTimes::default()
                },
            }
        })
        .reduce(TileTimes::default, |a, b| a + b)
}

/// Splits the rows into tiles of at most `max_rows` consecutive rows that read the same keys: one
/// sequence's rows (same block table and skipped range), either all without extra keys or all
/// with the same extra keys (a sequence's lookahead rows).
fn tiles(contexts: &[QueryContext<'_>], max_rows: usize) -> Vec<Range<usize>> {
    let same_keys = |a: &QueryContext<'_>, b: &QueryContext<'_>| {
        let same_extra = match (a.extra, b.extra) {
            (None, None) => true,
            (Some(a), Some(b)) => std::ptr::eq(a.keys_t, b.keys_t),
            _ => false,
        };
        same_extra && std::ptr::eq(a.block_table, b.block_table) && a.skip == b.skip
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
    fn attend<E: KvElement>(
        &self,
        cache: LayerView<'_, E>,
        shape: AttentionShape,
        kernels: Kernels,
        s: &mut TileScratch,
        out: &mut [f32],
        dots: &mut [f32],
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
        let per_head = |limit: usize| std::iter::repeat_n(limit, group);
        s.limits.clear();
        s.limits
            .extend(self.contexts.iter().flat_map(|c| per_head(c.num_entries)));
        let extra_count = |c: &QueryContext<'_>| c.extra.map_or(0, |extra| extra.count);
        s.extra_limits.clear();
        s.extra_limits
            .extend(self.contexts.iter().flat_map(|c| per_head(extra_count(c))));
        // The extra keys of the row that attends most of them (all rows share the buffer).
        let widest_extra = self
            .contexts
            .iter()
            .filter_map(|c| c.extra)
            .max_by_key(|e| e.count);
        // Where each row's kept dots start in `dots`, and how many entries it attends.
        let kept_rows: Vec<(usize, usize)> = match dots.is_empty() {
            true => Vec::new(),
            false => self
                .contexts
                .iter()
                .scan(0, |start, c| {
                    let row = (*start, c.num_entries);
                    *start += shape.num_heads * c.num_entries;
                    Some(row)
                })
                .collect(),
        };
        for kv_head in 0..shape.num_kv_heads {
            let heads = kv_head * group * d..(kv_head + 1) * group * d;
            s.start(self.contexts.len() * group, d);
            for (row, q) in self.q.chunks_exact(width).enumerate() {
                s.q[row * group * d..(row + 1) * group * d].copy_from_slice(&q[heads.clone()]);
            }
            let mut keep = DotsKeeper {
                dots: &mut *dots,
                rows: &kept_rows,
                first_head: kv_head * group,
                group,
            };
            let (dot_scale, value_scale) = (
                cache.dot_scale(kv_head, shape.scale),
                cache.value_scale(kv_head),
            );
            widest.for_each_run(bs, |block, slot, entry, count| {
                for piece in lane_pieces(slot, count) {
                    let first_entry = entry + piece.start - slot;
                    let run = cache.key_run(block, kv_head, piece);
                    s.score(&run, Limits::Cache, first_entry, dot_scale, kernels);
                    keep.keep(&s.scores, &s.counts, first_entry);
                    s.fold(&run, value_scale, kernels);
                }
            });
            if let Some(extra) = widest_extra {
                for piece in lane_pieces(0, extra.count) {
                    let first = piece.start;
                    let run = extra.key_run(kv_head, d, piece);
                    s.score(&run, Limits::Extra, first, shape.scale, kernels);
                    s.fold(&run, 1.0, kernels);
                }
            }
            for (row, out) in out.chunks_exact_mut(width).enumerate() {
                let first = row * group;
                s.write_normalised(first..first + group, &mut out[heads.clone()]);
            }
        }
    }
}

/// Copies a tile's scores of each run of cache entries into its piece of [`KeptDots`] before the
/// online softmax turns them into probabilities (nothing for a tile that keeps none).
struct DotsKeeper<'a> {
    /// The tile's piece, `[row][head][entry]`.
    dots: &'a mut [f32],
    /// Per tile row, where its dots start in `dots` and how many entries it attends (empty for
    /// a tile that keeps none).
    rows: &'a [(usize, usize)],
    /// The first query head of the KV head being attended, of `group`.
    first_head: usize,
    group: usize,
}

impl DotsKeeper<'_> {
    /// `scores[h][..counts[h]]` are tile head `h`'s (row `h / group`) dots with the entries from
    /// `first`.
    fn keep(&mut self, scores: &[[f32; LANES]], counts: &[usize], first: usize) {
        if self.rows.is_empty() {
            return;
        }
        for (h, (scores, &count)) in scores.iter().zip(counts).enumerate() {
            let (row_start, num_entries) = self.rows[h / self.group];
            let head = self.first_head + h % self.group;
            let start = row_start + head * num_entries + first;
            self.dots[start..start + count].copy_from_slice(&scores[..count]);
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

/// Which keys a run holds, and so which per-head limits apply.
#[derive(Clone, Copy)]
enum Limits {
    /// Cache entries: a head attends entries below its row's `num_entries`.
    Cache,
    /// Extra keys: a head attends the first `extra.count` of them.
    Extra,
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
    /// Extra keys each query head attends (its row's `extra.count`, 0 without).
    extra_limits: Vec<usize>,
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

    /// Scores one run of keys, whose first lane is key `first` of the kind `limits` names, for
    /// every query head into `scores`, and how many of its lanes each head attends (below its
    /// limit) into `counts`.
    fn score<E: KvElement>(
        &mut self,
        run: &KeyRun<'_, E>,
        limits: Limits,
        first: usize,
        scale: f32,
        kernels: Kernels,
    ) {
        let limits = match limits {
            Limits::Cache => &self.limits,
            Limits::Extra => &self.extra_limits,
        };
        for (count, &limit) in self.counts.iter_mut().zip(limits) {
            *count = limit.saturating_sub(first).min(run.lanes);
        }
        kernels.scores(&self.q, self.head_dim, run, scale, &mut self.scores);
    }

    /// Folds the run [`Self::score`] scored into the online softmax of every query head, its
    /// stored values weighed by the probabilities times `value_scale` (the values' scale: 1 for
    /// f32 K/V).
    fn fold<E: KvElement>(&mut self, run: &KeyRun<'_, E>, value_scale: f32, kernels: Kernels) {
        let d = self.head_dim;
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
            if value_scale != 1.0 {
                self.scores[h].iter_mut().for_each(|p| *p *= value_scale);
            }
        }
        if self.counts.iter().all(|&count| count == run.lanes) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::KvGeometry;
    use crate::backend::cpu::kv_cache::{CpuKvCache, as_stored};
    use crate::backend::cpu::scoring_keys::PagedKeys;
    use crate::config::KvCacheDtype;
    use crate::eviction::KeySource;
    use crate::test_util::pseudo_random;

    const SHAPE: AttentionShape = AttentionShape {
        num_heads: 6,
        num_kv_heads: 2,
        head_dim: 24,
        block_size: 16,
        scale: 0.2,
    };

    /// A pool of `dtype` holding one sequence of `entries` entries in shuffled blocks, and its
    /// keys and values row-major (`[entries, num_kv_heads, head_dim]`) as the pool reads them
    /// (rounded in a bf16 or fp8 pool; the fp8 one with `kv_cache::test_scales`).
    fn pool(entries: usize, dtype: KvCacheDtype) -> (CpuKvCache, Vec<u32>, Vec<f32>, Vec<f32>) {
        let (h, d, bs) = (SHAPE.num_kv_heads, SHAPE.head_dim, SHAPE.block_size);
        let geometry = KvGeometry {
            num_layers: 1,
            num_kv_heads: h,
            head_dim: d,
            block_size: bs,
            num_blocks: 16,
            dtype,
        };
        let mut cache = CpuKvCache::for_tests(geometry);
        let table: Vec<u32> = (0..entries.div_ceil(bs) as u32)
            .map(|i| (i * 7 + 5) % 16)
            .collect();
        let scales = cache.head_scales(0);
        let (keys, values) = (
            as_stored(dtype, scales.keys, d, pseudo_random(entries * h * d, 1)),
            as_stored(dtype, scales.values, d, pseudo_random(entries * h * d, 2)),
        );
        for e in 0..entries {
            let row = e * h * d..(e + 1) * h * d;
            let block = table[e / bs] as usize;
            cache.write(0, block, e % bs, &keys[row.clone()], &values[row]);
        }
        (cache, table, keys, values)
    }

    /// `softmax(q·kᵀ·scale)·v` in float64 for one query head over the listed keys and values.
    fn reference(q: &[f32], keys: &[&[f32]], values: &[&[f32]]) -> Vec<f64> {
        let scores: Vec<f64> = keys
            .iter()
            .map(|k| {
                q.iter()
                    .zip(*k)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    * 0.2
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        (0..q.len())
            .map(|i| {
                weights
                    .iter()
                    .zip(values)
                    .map(|(w, v)| w * v[i] as f64)
                    .sum::<f64>()
                    / total
            })
            .collect()
    }

    /// Every row's output matches a float64 reference over exactly the keys it attends, and is
    /// the same, to the bit, whether it is computed with the rows around it (prefill rows cut at
    /// different places inside blocks, rows of a compacted layer that skip entries, lookahead rows
    /// with their own extra keys) or alone; in f32, bf16 and fp8 pools.
    #[test]
    fn a_row_attends_its_keys_and_gets_the_same_bits_in_any_tile() {
        for dtype in [KvCacheDtype::F32, KvCacheDtype::Bf16, KvCacheDtype::Fp8] {
            a_row_attends_its_keys_and_gets_the_same_bits_in_any_tile_in(dtype);
        }
    }

    /// A bf16 or fp8 pool gives, to the bit, what an f32 pool holding the values it reads gives:
    /// the kernels widen exactly and change nothing else, and folding an fp8 head's scales into
    /// the dot products and probabilities is exact.
    #[test]
    fn a_compact_pool_attends_like_an_f32_pool_of_the_values_it_reads() {
        for dtype in [KvCacheDtype::Bf16, KvCacheDtype::Fp8] {
            attends_like_an_f32_pool_of_the_values_it_reads(dtype);
        }
    }

    fn attends_like_an_f32_pool_of_the_values_it_reads(dtype: KvCacheDtype) {
        let d = SHAPE.head_dim;
        let width = SHAPE.num_heads * d;
        let (compact, table, keys, values) = pool(70, dtype);
        let (mut widened, ..) = pool(70, KvCacheDtype::F32);
        let entry_width = SHAPE.num_kv_heads * d;
        for e in 0..70 {
            let row = e * entry_width..(e + 1) * entry_width;
            let block = table[e / SHAPE.block_size] as usize;
            widened.write(
                0,
                block,
                e % SHAPE.block_size,
                &keys[row.clone()],
                &values[row],
            );
        }
        let contexts: Vec<QueryContext<'_>> = (1..=70)
            .map(|num_entries| QueryContext {
                block_table: &table,
                num_entries,
                skip: 0..0,
                extra: None,
            })
            .collect();
        let q = pseudo_random(contexts.len() * width, 6);
        let (mut got, mut want) = (vec![0.0; q.len()], vec![0.0; q.len()]);
        let dots = &mut KeptDots::default();
        paged_attention(&q, &contexts, compact.layer(0), SHAPE, &mut got, dots);
        paged_attention(&q, &contexts, widened.layer(0), SHAPE, &mut want, dots);
        assert!(
            got.iter()
                .map(|g| g.to_bits())
                .eq(want.iter().map(|w| w.to_bits())),
            "{dtype} pool vs f32 pool of the same values"
        );
    }

    fn a_row_attends_its_keys_and_gets_the_same_bits_in_any_tile_in(dtype: KvCacheDtype) {
        let (h, d) = (SHAPE.num_kv_heads, SHAPE.head_dim);
        let (width, group) = (SHAPE.num_heads * d, SHAPE.num_heads / h);
        let (cache, table, keys, values) = pool(150, dtype);
        let capacity = 32;
        let extra_keys_t = pseudo_random(h * d * capacity, 3);
        let extra_values = pseudo_random(h * capacity * d, 4);
        let extra = |count| ExtraKv {
            keys_t: &extra_keys_t,
            values: &extra_values,
            capacity,
            count,
        };
        let row = |num_entries, skip, extra| QueryContext {
            block_table: &table,
            num_entries,
            skip,
            extra,
        };
        let mut contexts: Vec<QueryContext<'_>> = (90..127).map(|n| row(n, 0..0, None)).collect();
        contexts.extend((140..150).map(|n| row(n, 40..133, None)));
        contexts.extend((1..=20).map(|count| row(127, 0..0, Some(extra(count)))));
        let q = pseudo_random(contexts.len() * width, 5);
        let mut together = vec![0.0; q.len()];
        let mut kept = KeptDots::default();
        paged_attention(
            &q,
            &contexts,
            cache.layer(0),
            SHAPE,
            &mut together,
            &mut kept,
        );
        lookahead_rows_keep_the_dots_scoring_computes(dtype, &q, &contexts, &cache, &kept);
        let alone_dots = &mut KeptDots::default();
        for (i, context) in contexts.iter().enumerate() {
            let rows = i * width..(i + 1) * width;
            let mut alone = vec![0.0; width];
            let one = std::slice::from_ref(context);
            let layer = cache.layer(0);
            paged_attention(&q[rows.clone()], one, layer, SHAPE, &mut alone, alone_dots);
            assert_eq!(alone, together[rows.clone()], "{dtype}: row {i}");
            for head in 0..SHAPE.num_heads {
                let kv = head / group;
                let span = |e: usize| (e * h + kv) * d..(e * h + kv + 1) * d;
                let skip = context.skip.start.min(context.num_entries)
                    ..context.skip.end.min(context.num_entries);
                let attended = (0..context.num_entries).filter(|e| !skip.contains(e));
                let (mut k, mut v): (Vec<&[f32]>, Vec<&[f32]>) =
                    attended.map(|e| (&keys[span(e)], &values[span(e)])).unzip();
                let extra_rows = context.extra.map_or(0, |x| x.count);
                let (extra_k, extra_v): (Vec<Vec<f32>>, Vec<&[f32]>) = (0..extra_rows)
                    .map(|r| {
                        let key = (0..d).map(|i| extra_keys_t[(kv * d + i) * capacity + r]);
                        let value = &extra_values[(kv * capacity + r) * d..][..d];
                        (key.collect(), value)
                    })
                    .unzip();
                k.extend(extra_k.iter().map(Vec::as_slice));
                v.extend(extra_v);
                let q_head = &q[i * width + head * d..][..d];
                let want = reference(q_head, &k, &v);
                let got = &together[i * width + head * d..][..d];
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() < 1e-5,
                        "{dtype}: row {i} head {head}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// The rows with extra keys (the last 20, 127 entries each) keep, bit for bit, the scaled
    /// dot products eviction scoring would compute from the paged keys; the others keep none.
    fn lookahead_rows_keep_the_dots_scoring_computes(
        dtype: KvCacheDtype,
        q: &[f32],
        contexts: &[QueryContext<'_>],
        cache: &CpuKvCache,
        kept: &KeptDots,
    ) {
        let (n, d, heads) = (127, SHAPE.head_dim, SHAPE.num_heads);
        let lookahead = contexts.len() - 20..contexts.len();
        assert!(kept.rows(0..lookahead.start).is_none(), "{dtype}");
        assert!(kept.rows(lookahead.start - 1..lookahead.end).is_none());
        let dots = kept
            .rows(lookahead.clone())
            .expect("lookahead rows keep their dots");
        assert_eq!(dots.len(), 20 * heads * n);
        let keys = PagedKeys {
            layer: cache.layer(0),
            block_table: contexts[0].block_table,
            block_size: SHAPE.block_size,
            head_dim: d,
            num_entries: n,
        };
        let group = heads / SHAPE.num_kv_heads;
        for head in 0..heads {
            let queries: Vec<f32> = lookahead
                .clone()
                .flat_map(|row| q[(row * heads + head) * d..][..d].to_vec())
                .collect();
            let mut want = vec![0.0; 20 * n];
            keys.scaled_dots(head / group, &queries, d, SHAPE.scale, &mut want);
            for (row, want) in want.chunks_exact(n).enumerate() {
                let got = &dots[(row * heads + head) * n..][..n];
                let same = got
                    .iter()
                    .zip(want)
                    .all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same, "{dtype}: lookahead row {row}, head {head}");
            }
        }
    }
}
