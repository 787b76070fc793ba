//! The CPU backend's paged KV pool: one allocation for keys and one for values, laid out
//! `[layer][block][kv_head][..]`, so the entries of one head in one block are contiguous and
//! attention reads them in place through the block table. Within that piece values are row-major,
//! `[slot][head_dim]`, and keys are transposed, `[head_dim][slot]`: one vector load then holds one
//! dimension of 16 keys, which is what the attention kernels multiply a broadcast query element by
//! (see [`super::attention_kernels`]).
//!
//! The elements are f32, bf16 or FP8 E4M3 (`--kv-cache-dtype`, the geometry's [`KvCacheDtype`]):
//! a compact pool rounds each K/V to nearest even once, when it is written ([`Stored::round`]),
//! and its readers widen in registers. Each (layer, KV head) has a key scale and a value scale
//! ([`KvScales`]): the pool stores `x / scale` and a reader's key or value is
//! `widen(stored) · scale`. The scales are 1 in f32 and bf16 pools and calibrated powers of two
//! in fp8 ones, so dividing and multiplying by them is exact. Compaction copies the stored
//! elements as they are (a layer's scales are its own, whatever block an entry sits in). Readers
//! get a [`PoolLayer`] and reach the typed [`LayerView`] through [`with_layer_view!`], so
//! attention and scoring are one generic code path for every dtype.

use std::ops::Range;

use half::bf16;

use super::attention_kernels::KeyRun;
use super::kv_scales::KvScales;
use super::stored::{E4m3, Stored};
use crate::backend::KvGeometry;
use crate::config::KvCacheDtype;
use crate::error::{EngineError, Result};

/// Keys and values of every block of the pool.
pub struct CpuKvCache {
    geometry: KvGeometry,
    store: Store,
    scales: KvScales,
}

/// The pool's elements, in the geometry's dtype.
enum Store {
    F32(Entries<f32>),
    Bf16(Entries<bf16>),
    Fp8(Entries<E4m3>),
}

/// Keys and values of every block, in element type `E`.
struct Entries<E> {
    keys: Vec<E>,
    values: Vec<E>,
}

/// One layer of the pool, borrowed for reading, in the pool's element type.
#[derive(Clone, Copy)]
pub enum PoolLayer<'a> {
    F32(LayerView<'a, f32>),
    Bf16(LayerView<'a, bf16>),
    Fp8(LayerView<'a, E4m3>),
}

/// Evaluates `$body` with `$view` bound to the [`LayerView`] of a [`PoolLayer`], whatever its
/// element type: the one place readers branch on the pool's dtype.
macro_rules! with_layer_view {
    ($layer:expr, $view:ident => $body:expr) => {
        match $layer {
            $crate::backend::cpu::kv_cache::PoolLayer::F32($view) => $body,
            $crate::backend::cpu::kv_cache::PoolLayer::Bf16($view) => $body,
            $crate::backend::cpu::kv_cache::PoolLayer::Fp8($view) => $body,
        }
    };
}
pub(super) use with_layer_view;

/// Elements between consecutive blocks of one layer.
fn block_stride(g: &KvGeometry) -> usize {
    g.num_kv_heads * g.block_size * g.head_dim
}

/// Elements between the entries of consecutive KV heads in one block.
fn head_stride(g: &KvGeometry) -> usize {
    g.block_size * g.head_dim
}

fn layer_range(g: &KvGeometry, layer: usize) -> Range<usize> {
    let len = g.num_blocks * block_stride(g);
    layer * len..(layer + 1) * len
}

impl CpuKvCache {
    /// Allocates a zeroed pool in `geometry.dtype` with unit scales (pages are committed lazily
    /// by the OS as blocks are first written).
    ///
    /// Fails with [`EngineError::OutOfMemory`] when the allocator cannot provide the pool (a
    /// budget larger than the machine), instead of aborting the process.
    pub fn new(geometry: KvGeometry) -> Result<Self> {
        Self::with_scales(geometry, KvScales::unit(&geometry))
    }

    /// [`CpuKvCache::new`] with the given per-(layer, KV head) scales (`[num_layers ·
    /// num_kv_heads]` each).
    pub fn with_scales(geometry: KvGeometry, scales: KvScales) -> Result<Self> {
        let heads = geometry.num_layers * geometry.num_kv_heads;
        assert!(
            scales.keys.len() == heads && scales.values.len() == heads,
            "a key and a value scale per (layer, KV head)"
        );
        let len = geometry.num_layers
            * geometry.num_blocks
            * geometry.num_kv_heads
            * geometry.block_size
            * geometry.head_dim;
        // `vec![0; len]` keeps the lazy zeroed pages but aborts when the allocation fails;
        // reserving keys' and values' bytes at once first (and giving them back) makes that an
        // error.
        Vec::<u8>::new()
            .try_reserve_exact(geometry.total_bytes())
            .map_err(|_| EngineError::OutOfMemory {
                what: format!(
                    "the KV pool ({} blocks of {} entries)",
                    geometry.num_blocks, geometry.block_size
                ),
                bytes: geometry.total_bytes(),
            })?;
        let store = match geometry.dtype {
            KvCacheDtype::F32 => Store::F32(Entries::zeroed(len)),
            KvCacheDtype::Bf16 => Store::Bf16(Entries::zeroed(len)),
            KvCacheDtype::Fp8 => Store::Fp8(Entries::zeroed(len)),
        };
        Ok(Self {
            geometry,
            store,
            scales,
        })
    }

    pub fn geometry(&self) -> &KvGeometry {
        &self.geometry
    }

    /// Keys and values of one layer, for reading.
    pub fn layer(&self, layer: usize) -> PoolLayer<'_> {
        let (g, scales) = (
            &self.geometry,
            self.scales.layer(layer, self.geometry.num_kv_heads),
        );
        match &self.store {
            Store::F32(entries) => PoolLayer::F32(entries.layer(g, layer, scales)),
            Store::Bf16(entries) => PoolLayer::Bf16(entries.layer(g, layer, scales)),
            Store::Fp8(entries) => PoolLayer::Fp8(entries.layer(g, layer, scales)),
        }
    }

    /// Writes one entry's K and V (`[num_kv_heads · head_dim]` each) of `layer` into `slot` of
    /// `block`, divided by the head's scale and rounded to the pool's dtype.
    pub fn write(&mut self, layer: usize, block: usize, slot: usize, k: &[f32], v: &[f32]) {
        let (g, scales) = (
            &self.geometry,
            self.scales.layer(layer, self.geometry.num_kv_heads),
        );
        let at = Slot { layer, block, slot };
        match &mut self.store {
            Store::F32(entries) => entries.write(g, at, scales, k, v),
            Store::Bf16(entries) => entries.write(g, at, scales, k, v),
            Store::Fp8(entries) => entries.write(g, at, scales, k, v),
        }
    }

    /// Compaction after eviction: for each KV head `h` of `layer`, copies the entries
    /// `kept[h]` (ascending) of the blocks `from` to the entries `0..kept[h].len()` of the
    /// blocks `to`, keys and values alike, element for element. `to` is either `from` itself (in
    /// place: entry `kept[h][i] ≥ i` is read before slot `i` could overwrite it, since slots fill
    /// in ascending order) or blocks disjoint from `from` (prefix caching keeps `from` intact).
    pub fn compact(&mut self, layer: usize, from: &[u32], to: &[u32], kept: &[Vec<usize>]) {
        let g = &self.geometry;
        match &mut self.store {
            Store::F32(entries) => entries.compact(g, layer, from, to, kept),
            Store::Bf16(entries) => entries.compact(g, layer, from, to, kept),
            Store::Fp8(entries) => entries.compact(g, layer, from, to, kept),
        }
    }
}

#[cfg(test)]
impl CpuKvCache {
    /// A pool of `geometry` with [`test_scales`].
    pub fn for_tests(geometry: KvGeometry) -> Self {
        Self::with_scales(geometry, test_scales(&geometry)).expect("a test pool fits")
    }

    /// The key and value scales of `layer`'s heads.
    pub fn head_scales(&self, layer: usize) -> HeadScales<'_> {
        self.scales.layer(layer, self.geometry.num_kv_heads)
    }

    /// Elements between consecutive blocks of one layer.
    pub fn block_stride(&self) -> usize {
        block_stride(&self.geometry)
    }

    /// The whole pool, keys then values, as read (exactly, so tests compare pools bit for bit).
    pub fn raw(&self) -> (Vec<f32>, Vec<f32>) {
        let g = self.geometry;
        let (keys, values) = (0..g.num_layers)
            .map(|layer| {
                with_layer_view!(self.layer(layer), view => {
                    let read_all = |stored: &[_], scales: &[f32]| -> Vec<f32> {
                        stored
                            .chunks_exact(view.head_stride)
                            .enumerate()
                            .flat_map(|(piece, p)| {
                                let scale = scales[piece % g.num_kv_heads];
                                p.iter().map(move |e| read(*e, scale))
                            })
                            .collect()
                    };
                    (read_all(view.keys, view.scales.keys), read_all(view.values, view.scales.values))
                })
            })
            .unzip::<_, _, Vec<_>, Vec<_>>();
        (keys.concat(), values.concat())
    }

    /// Key (`head_dim` values) then value of `slot` of KV head `head` in `block` of `layer`,
    /// widened.
    pub fn entry(&self, layer: usize, block: usize, head: usize, slot: usize) -> Vec<f32> {
        with_layer_view!(self.layer(layer), view => {
            let (bs, d) = (view.block_size, view.head_dim);
            let base = view.head_offset(block, head);
            let (key_scale, value_scale) = (view.scales.keys[head], view.scales.values[head]);
            let key = (0..d).map(|i| read(view.keys[base + i * bs + slot], key_scale));
            let value = view.values[base + slot * d..base + (slot + 1) * d]
                .iter()
                .map(|&v| read(v, value_scale));
            key.chain(value).collect()
        })
    }
}

/// Scales for tests: 1 in f32 and bf16 pools; in fp8 ones, powers of two from 2^-8 to 2^-4 that
/// differ between heads, layers, keys and values, so a mixed-up scale shows (test inputs lie in
/// `[-0.5, 0.5)`: at most 128 stored, the smallest values subnormal).
#[cfg(test)]
pub fn test_scales(geometry: &KvGeometry) -> KvScales {
    let mut scales = KvScales::unit(geometry);
    if geometry.dtype == KvCacheDtype::Fp8 {
        for (i, (key, value)) in scales.keys.iter_mut().zip(&mut scales.values).enumerate() {
            *key = 2f32.powi(-8 + (i % 3) as i32);
            *value = 2f32.powi(-4 - (i % 4) as i32);
        }
    }
    scales
}

/// `v` (`[..][head][head_dim]`, heads cycling through `scales`) as a pool of `dtype` reads it
/// back: each value divided by its head's scale, rounded to the dtype, widened and multiplied
/// back.
#[cfg(test)]
pub fn as_stored(dtype: KvCacheDtype, scales: &[f32], head_dim: usize, v: Vec<f32>) -> Vec<f32> {
    fn round_trip<E: Stored>(v: Vec<f32>, scales: &[f32], head_dim: usize) -> Vec<f32> {
        let scale = |i: usize| scales[(i / head_dim) % scales.len()];
        let each = v.into_iter().enumerate();
        each.map(|(i, x)| read(E::round(x / scale(i)), scale(i)))
            .collect()
    }
    match dtype {
        KvCacheDtype::F32 => round_trip::<f32>(v, scales, head_dim),
        KvCacheDtype::Bf16 => round_trip::<bf16>(v, scales, head_dim),
        KvCacheDtype::Fp8 => round_trip::<E4m3>(v, scales, head_dim),
    }
}

/// A stored key or value as readers see it: widened, times its head's scale. Attention and
/// scoring fold the scale into their arithmetic instead ([`LayerView::dot_scale`],
/// [`LayerView::value_scale`]), which gives the same bits, the scales being powers of two.
#[inline]
pub fn read<E: Stored>(stored: E, scale: f32) -> f32 {
    stored.widen() * scale
}

/// Where one entry goes: `slot` of `block`, in `layer`.
#[derive(Clone, Copy)]
struct Slot {
    layer: usize,
    block: usize,
    slot: usize,
}

impl<E: Stored> Entries<E> {
    fn zeroed(len: usize) -> Self {
        let zero = E::round(0.0);
        Self {
            keys: vec![zero; len],
            values: vec![zero; len],
        }
    }

    fn layer<'a>(
        &'a self,
        g: &KvGeometry,
        layer: usize,
        scales: HeadScales<'a>,
    ) -> LayerView<'a, E> {
        let range = layer_range(g, layer);
        LayerView {
            keys: &self.keys[range.clone()],
            values: &self.values[range],
            scales,
            block_stride: block_stride(g),
            head_stride: head_stride(g),
            block_size: g.block_size,
            head_dim: g.head_dim,
        }
    }

    fn write(&mut self, g: &KvGeometry, at: Slot, scales: HeadScales<'_>, k: &[f32], v: &[f32]) {
        let (d, bs, slot) = (g.head_dim, g.block_size, at.slot);
        let block_start = layer_range(g, at.layer).start + at.block * block_stride(g);
        for head in 0..g.num_kv_heads {
            let head_start = block_start + head * head_stride(g);
            let row = head_start + slot * d;
            let value_scale = scales.values[head];
            for (dst, &src) in self.values[row..row + d]
                .iter_mut()
                .zip(&v[head * d..(head + 1) * d])
            {
                *dst = E::round(src / value_scale);
            }
            let key_scale = scales.keys[head];
            let key_column = self.keys[head_start + slot..].iter_mut().step_by(bs);
            for (dst, &src) in key_column.zip(&k[head * d..(head + 1) * d]) {
                *dst = E::round(src / key_scale);
            }
        }
    }

    fn compact(
        &mut self,
        g: &KvGeometry,
        layer: usize,
        from: &[u32],
        to: &[u32],
        kept: &[Vec<usize>],
    ) {
        let (d, bs) = (g.head_dim, g.block_size);
        let layer_start = layer_range(g, layer).start;
        let (block_stride, head_stride) = (block_stride(g), head_stride(g));
        // Start of the entry's piece of the head in `table`, and its slot.
        let piece = |table: &[u32], entry: usize, head: usize| {
            let start = layer_start + table[entry / bs] as usize * block_stride;
            (start + head * head_stride, entry % bs)
        };
        for (head, entries) in kept.iter().enumerate() {
            for (slot, &entry) in entries.iter().enumerate() {
                debug_assert!(entry >= slot, "kept entries are ascending and distinct");
                let (source, target) = (piece(from, entry, head), piece(to, slot, head));
                if source == target {
                    continue;
                }
                let ((from, from_slot), (to, to_slot)) = (source, target);
                let (from_row, to_row) = (from + from_slot * d, to + to_slot * d);
                self.values.copy_within(from_row..from_row + d, to_row);
                for i in 0..d {
                    self.keys[to + i * bs + to_slot] = self.keys[from + i * bs + from_slot];
                }
            }
        }
    }
}

/// One layer's key and value scales, one per KV head.
#[derive(Clone, Copy)]
pub struct HeadScales<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
}

/// One layer of the pool in element type `E`, borrowed for attention.
pub struct LayerView<'a, E> {
    pub keys: &'a [E],
    pub values: &'a [E],
    /// Per KV head: a key (value) is its stored elements widened, times its key (value) scale.
    pub scales: HeadScales<'a>,
    pub block_stride: usize,
    pub head_stride: usize,
    pub block_size: usize,
    pub head_dim: usize,
}

// Derived `Clone`/`Copy` would require `E: Copy`; a view is a pair of borrows whatever `E` is.
impl<E> Clone for LayerView<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for LayerView<'_, E> {}

impl<'a, E> LayerView<'a, E> {
    /// The entries in `slots` (at most [`LANES`](super::attention_kernels::LANES), one piece of
    /// `attention::lane_pieces`) of `head` in `block`, as the attention kernels read them.
    pub fn key_run(&self, block: usize, head: usize, slots: Range<usize>) -> KeyRun<'a, E> {
        let (base, bs, d) = (
            self.head_offset(block, head),
            self.block_size,
            self.head_dim,
        );
        KeyRun {
            keys_t: &self.keys[base + slots.start..base + (d - 1) * bs + slots.end],
            stride: bs,
            values: &self.values[base + slots.start * d..base + slots.end * d],
            lanes: slots.len(),
        }
    }

    /// Offset of the piece of `head` in `block`: its values row by row, its keys dimension by
    /// dimension (`block_size` elements each).
    #[inline]
    pub fn head_offset(&self, block: usize, head: usize) -> usize {
        block * self.block_stride + head * self.head_stride
    }

    /// What `q·widen(k)`, summed over a stored key of `kv_head`, is multiplied by to give the
    /// scaled dot product `q·k·scale`: `scale` times the key scale. Attention and eviction
    /// scoring both multiply by this; as the key scale is a power of two, the result is the
    /// bits `q·(widen(k)·key scale)·scale` gives.
    #[inline]
    pub fn dot_scale(&self, kv_head: usize, scale: f32) -> f32 {
        scale * self.scales.keys[kv_head]
    }

    /// What attention multiplies a probability by before it weighs a stored value of `kv_head`
    /// (widened): the value scale, a power of two, so the weighted sum is the bits weighing
    /// `widen(v)·value scale` gives.
    #[inline]
    pub fn value_scale(&self, kv_head: usize) -> f32 {
        self.scales.values[kv_head]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::pseudo_random;

    /// A compact pool reads back each written key and value rounded to nearest even (fp8: divided
    /// by its head's scale first and multiplied back), and an in-place compaction moves exactly
    /// those bits; in bf16 and fp8 pools.
    #[test]
    fn a_compact_pool_reads_back_the_rounded_values_and_compaction_moves_them_unchanged() {
        for dtype in [KvCacheDtype::Bf16, KvCacheDtype::Fp8] {
            reads_back_the_rounded_values_and_compaction_moves_them_unchanged_in(dtype);
        }
    }

    fn reads_back_the_rounded_values_and_compaction_moves_them_unchanged_in(dtype: KvCacheDtype) {
        let (num_kv_heads, head_dim, block_size) = (2, 5, 4);
        let geometry = KvGeometry {
            num_layers: 2,
            num_kv_heads,
            head_dim,
            block_size,
            num_blocks: 6,
            dtype,
        };
        let mut cache = CpuKvCache::for_tests(geometry);
        let table = [3u32, 1, 4];
        let (n, width) = (10, num_kv_heads * head_dim);
        let (keys, values) = (pseudo_random(n * width, 7), pseudo_random(n * width, 8));
        for e in 0..n {
            let row = e * width..(e + 1) * width;
            let block = table[e / block_size] as usize;
            cache.write(1, block, e % block_size, &keys[row.clone()], &values[row]);
        }
        let scales = cache.head_scales(1);
        let (key_scales, value_scales) = (scales.keys.to_vec(), scales.values.to_vec());
        let written = |e: usize, head: usize| {
            let span = e * width + head * head_dim..e * width + (head + 1) * head_dim;
            let key = as_stored(
                dtype,
                &key_scales[head..=head],
                head_dim,
                keys[span.clone()].to_vec(),
            );
            let value = as_stored(
                dtype,
                &value_scales[head..=head],
                head_dim,
                values[span].to_vec(),
            );
            [key, value].concat()
        };
        let stored = |cache: &CpuKvCache, e: usize, head: usize| {
            cache.entry(1, table[e / block_size] as usize, head, e % block_size)
        };
        for e in 0..n {
            for head in 0..num_kv_heads {
                let want = written(e, head);
                assert_eq!(
                    stored(&cache, e, head),
                    want,
                    "{dtype}: entry {e} head {head}"
                );
            }
        }
        let read_back = as_stored(dtype, &key_scales, head_dim, keys.clone());
        assert!(
            keys.iter().zip(&read_back).any(|(k, r)| k != r),
            "{dtype}: the inputs need rounding, so the test sees it"
        );

        let kept = vec![vec![1, 4, 9], vec![0, 2, 3, 7]];
        cache.compact(1, &table, &table, &kept);
        for (head, kept) in kept.iter().enumerate() {
            for (slot, &entry) in kept.iter().enumerate() {
                let want = written(entry, head);
                assert_eq!(
                    stored(&cache, slot, head),
                    want,
                    "{dtype}: head {head} slot {slot}"
                );
            }
        }
    }

    #[test]
    fn a_pool_larger_than_memory_is_an_error_not_an_abort() {
        let geometry = KvGeometry {
            num_layers: 64,
            num_kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            num_blocks: 1 << 30,
            dtype: KvCacheDtype::F32,
        };
        let err = CpuKvCache::new(geometry)
            .err()
            .expect("2^50 bytes do not fit");
        assert!(
            matches!(err, EngineError::OutOfMemory { bytes, .. } if bytes == geometry.total_bytes()),
            "{err}"
        );
    }
}
