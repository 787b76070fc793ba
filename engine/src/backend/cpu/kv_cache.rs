//! The CPU backend's paged KV pool: one allocation for keys and one for values, laid out
//! `[layer][block][kv_head][..]`, so the entries of one head in one block are contiguous and
//! attention reads them in place through the block table. Within that piece values are row-major,
//! `[slot][head_dim]`, and keys are transposed, `[head_dim][slot]`: one vector load then holds one
//! dimension of 16 keys, which is what the attention kernels multiply a broadcast query element by
//! (see [`super::attention_kernels`]).
//!
//! The elements are f32 or bf16 (`--kv-cache-dtype`, the geometry's [`KvCacheDtype`]): a bf16
//! pool rounds each K/V to nearest even once, when it is written ([`Stored::round`]), and its
//! readers widen in registers. Compaction copies the stored elements as they are. Readers get a
//! [`PoolLayer`] and reach the typed [`LayerView`] through [`with_layer_view!`], so attention and
//! scoring are one generic code path for both.

use std::ops::Range;

use half::bf16;

use super::attention_kernels::KeyRun;
use super::stored::Stored;
use crate::backend::KvGeometry;
use crate::config::KvCacheDtype;
use crate::error::{EngineError, Result};

/// Keys and values of every block of the pool.
pub struct CpuKvCache {
    geometry: KvGeometry,
    store: Store,
}

/// The pool's elements, in the geometry's dtype.
enum Store {
    F32(Entries<f32>),
    Bf16(Entries<bf16>),
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
}

/// Evaluates `$body` with `$view` bound to the [`LayerView`] of a [`PoolLayer`], whatever its
/// element type: the one place readers branch on the pool's dtype.
macro_rules! with_layer_view {
    ($layer:expr, $view:ident => $body:expr) => {
        match $layer {
            $crate::backend::cpu::kv_cache::PoolLayer::F32($view) => $body,
            $crate::backend::cpu::kv_cache::PoolLayer::Bf16($view) => $body,
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
    /// Allocates a zeroed pool in `geometry.dtype` (pages are committed lazily by the OS as
    /// blocks are first written).
    ///
    /// Fails with [`EngineError::OutOfMemory`] when the allocator cannot provide the pool (a
    /// budget larger than the machine), instead of aborting the process.
    pub fn new(geometry: KvGeometry) -> Result<Self> {
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
        };
        Ok(Self { geometry, store })
    }

    pub fn geometry(&self) -> &KvGeometry {
        &self.geometry
    }

    /// Keys and values of one layer, for reading.
    pub fn layer(&self, layer: usize) -> PoolLayer<'_> {
        let g = &self.geometry;
        match &self.store {
            Store::F32(entries) => PoolLayer::F32(entries.layer(g, layer)),
            Store::Bf16(entries) => PoolLayer::Bf16(entries.layer(g, layer)),
        }
    }

    /// Writes one entry's K and V (`[num_kv_heads · head_dim]` each) of `layer` into `slot` of
    /// `block`, rounded to the pool's dtype.
    pub fn write(&mut self, layer: usize, block: usize, slot: usize, k: &[f32], v: &[f32]) {
        let g = &self.geometry;
        match &mut self.store {
            Store::F32(entries) => entries.write(g, layer, block, slot, k, v),
            Store::Bf16(entries) => entries.write(g, layer, block, slot, k, v),
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
        }
    }
}

#[cfg(test)]
impl CpuKvCache {
    /// Elements between consecutive blocks of one layer.
    pub fn block_stride(&self) -> usize {
        block_stride(&self.geometry)
    }

    /// The whole pool, keys then values, widened (exactly, so tests compare pools bit for bit).
    pub fn raw(&self) -> (Vec<f32>, Vec<f32>) {
        fn widened<E: Stored>(entries: &Entries<E>) -> (Vec<f32>, Vec<f32>) {
            let widen = |v: &[E]| v.iter().map(|e| e.widen()).collect();
            (widen(&entries.keys), widen(&entries.values))
        }
        match &self.store {
            Store::F32(entries) => widened(entries),
            Store::Bf16(entries) => widened(entries),
        }
    }

    /// Key (`head_dim` values) then value of `slot` of KV head `head` in `block` of `layer`,
    /// widened.
    pub fn entry(&self, layer: usize, block: usize, head: usize, slot: usize) -> Vec<f32> {
        with_layer_view!(self.layer(layer), view => {
            let (bs, d) = (view.block_size, view.head_dim);
            let base = view.head_offset(block, head);
            let key = (0..d).map(|i| view.keys[base + i * bs + slot].widen());
            let value = view.values[base + slot * d..base + (slot + 1) * d].iter().map(|v| v.widen());
            key.chain(value).collect()
        })
    }
}

/// `v` as a pool of `dtype` holds it: each value rounded to the dtype and widened back.
#[cfg(test)]
pub fn as_stored(dtype: KvCacheDtype, v: Vec<f32>) -> Vec<f32> {
    match dtype {
        KvCacheDtype::F32 => v,
        KvCacheDtype::Bf16 => v.into_iter().map(|x| bf16::round(x).widen()).collect(),
    }
}

impl<E: Stored> Entries<E> {
    fn zeroed(len: usize) -> Self {
        let zero = E::round(0.0);
        Self {
            keys: vec![zero; len],
            values: vec![zero; len],
        }
    }

    fn layer(&self, g: &KvGeometry, layer: usize) -> LayerView<'_, E> {
        let range = layer_range(g, layer);
        LayerView {
            keys: &self.keys[range.clone()],
            values: &self.values[range],
            block_stride: block_stride(g),
            head_stride: head_stride(g),
            block_size: g.block_size,
            head_dim: g.head_dim,
        }
    }

    fn write(
        &mut self,
        g: &KvGeometry,
        layer: usize,
        block: usize,
        slot: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let (d, bs) = (g.head_dim, g.block_size);
        let block_start = layer_range(g, layer).start + block * block_stride(g);
        for head in 0..g.num_kv_heads {
            let head_start = block_start + head * head_stride(g);
            let at = head_start + slot * d;
            for (dst, &src) in self.values[at..at + d]
                .iter_mut()
                .zip(&v[head * d..(head + 1) * d])
            {
                *dst = E::round(src);
            }
            let key_column = self.keys[head_start + slot..].iter_mut().step_by(bs);
            for (dst, &src) in key_column.zip(&k[head * d..(head + 1) * d]) {
                *dst = E::round(src);
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

/// One layer of the pool in element type `E`, borrowed for attention.
pub struct LayerView<'a, E> {
    pub keys: &'a [E],
    pub values: &'a [E],
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::pseudo_random;

    /// A bf16 pool reads back each written key and value rounded to nearest even, and an
    /// in-place compaction moves exactly those bits.
    #[test]
    fn a_bf16_pool_reads_back_the_rounded_values_and_compaction_moves_them_unchanged() {
        let (num_kv_heads, head_dim, block_size) = (2, 5, 4);
        let geometry = KvGeometry {
            num_layers: 2,
            num_kv_heads,
            head_dim,
            block_size,
            num_blocks: 6,
            dtype: KvCacheDtype::Bf16,
        };
        let mut cache = CpuKvCache::new(geometry).expect("a 6-block pool fits");
        let table = [3u32, 1, 4];
        let (n, width) = (10, num_kv_heads * head_dim);
        let (keys, values) = (pseudo_random(n * width, 7), pseudo_random(n * width, 8));
        for e in 0..n {
            let row = e * width..(e + 1) * width;
            let block = table[e / block_size] as usize;
            cache.write(1, block, e % block_size, &keys[row.clone()], &values[row]);
        }
        let rounded = |v: &[f32]| as_stored(KvCacheDtype::Bf16, v.to_vec());
        let written = |e: usize, head: usize| {
            let span = e * width + head * head_dim..e * width + (head + 1) * head_dim;
            [rounded(&keys[span.clone()]), rounded(&values[span])].concat()
        };
        let stored = |cache: &CpuKvCache, e: usize, head: usize| {
            cache.entry(1, table[e / block_size] as usize, head, e % block_size)
        };
        for e in 0..n {
            for head in 0..num_kv_heads {
                let want = written(e, head);
                assert_eq!(stored(&cache, e, head), want, "entry {e} head {head}");
            }
        }
        assert!(
            keys.iter()
                .any(|&k| as_stored(KvCacheDtype::Bf16, vec![k])[0] != k),
            "the inputs need rounding, so the test sees it"
        );

        let kept = vec![vec![1, 4, 9], vec![0, 2, 3, 7]];
        cache.compact(1, &table, &table, &kept);
        for (head, kept) in kept.iter().enumerate() {
            for (slot, &entry) in kept.iter().enumerate() {
                let want = written(entry, head);
                assert_eq!(stored(&cache, slot, head), want, "head {head} slot {slot}");
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
