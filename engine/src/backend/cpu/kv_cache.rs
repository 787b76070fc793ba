//! The CPU backend's paged KV pool: one allocation for keys and one for values, laid out
//! `[layer][block][kv_head][slot][head_dim]`, so the entries of one head in one block are contiguous
//! and attention reads them in place through the block table.

use crate::backend::KvGeometry;
use crate::eviction::KeySource;

/// Keys and values of every block of the pool.
pub struct CpuKvCache {
    geometry: KvGeometry,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl CpuKvCache {
    /// Allocates a zeroed pool (pages are committed lazily by the OS as blocks are first written).
    pub fn new(geometry: KvGeometry) -> Self {
        let len = geometry.num_layers
            * geometry.num_blocks
            * geometry.num_kv_heads
            * geometry.block_size
            * geometry.head_dim;
        Self {
            geometry,
            keys: vec![0.0; len],
            values: vec![0.0; len],
        }
    }

    pub fn geometry(&self) -> &KvGeometry {
        &self.geometry
    }

    /// Elements between consecutive blocks of one layer.
    #[inline]
    pub fn block_stride(&self) -> usize {
        self.geometry.num_kv_heads * self.geometry.block_size * self.geometry.head_dim
    }

    /// Elements between the entries of consecutive KV heads in one block.
    #[inline]
    pub fn head_stride(&self) -> usize {
        self.geometry.block_size * self.geometry.head_dim
    }

    fn layer_range(&self, layer: usize) -> std::ops::Range<usize> {
        let len = self.geometry.num_blocks * self.block_stride();
        layer * len..(layer + 1) * len
    }

    /// Keys and values of one layer, for reading.
    pub fn layer(&self, layer: usize) -> LayerView<'_> {
        let range = self.layer_range(layer);
        LayerView {
            keys: &self.keys[range.clone()],
            values: &self.values[range],
            block_stride: self.block_stride(),
            head_stride: self.head_stride(),
        }
    }

    /// Writes one entry's K and V (`[num_kv_heads · head_dim]` each) of `layer` into `slot` of `block`.
    pub fn write(&mut self, layer: usize, block: usize, slot: usize, k: &[f32], v: &[f32]) {
        let d = self.geometry.head_dim;
        let base = self.layer_range(layer).start + block * self.block_stride() + slot * d;
        for head in 0..self.geometry.num_kv_heads {
            let at = base + head * self.head_stride();
            self.keys[at..at + d].copy_from_slice(&k[head * d..(head + 1) * d]);
            self.values[at..at + d].copy_from_slice(&v[head * d..(head + 1) * d]);
        }
    }
}

impl CpuKvCache {
    /// The whole pool, keys then values (tests compare pools bit for bit).
    #[cfg(test)]
    pub fn raw(&self) -> (&[f32], &[f32]) {
        (&self.keys, &self.values)
    }

    /// Compaction after eviction: for each KV head `h` of `layer`, moves the entries
    /// `kept[h]` (ascending) of the sequence with `block_table` to its entries `0..kept[h].len()`,
    /// keys and values alike. In place: entry `kept[h][i] ≥ i` is read before slot `i` could
    /// overwrite it, since slots fill in ascending order.
    pub fn compact(&mut self, layer: usize, block_table: &[u32], kept: &[Vec<usize>]) {
        let (d, bs) = (self.geometry.head_dim, self.geometry.block_size);
        let layer_start = self.layer_range(layer).start;
        let (block_stride, head_stride) = (self.block_stride(), self.head_stride());
        let offset = |entry: usize, head: usize| {
            layer_start
                + block_table[entry / bs] as usize * block_stride
                + head * head_stride
                + (entry % bs) * d
        };
        for (head, entries) in kept.iter().enumerate() {
            for (slot, &entry) in entries.iter().enumerate() {
                debug_assert!(entry >= slot, "kept entries are ascending and distinct");
                if entry == slot {
                    continue;
                }
                let (from, to) = (offset(entry, head), offset(slot, head));
                self.keys.copy_within(from..from + d, to);
                self.values.copy_within(from..from + d, to);
            }
        }
    }
}

/// One sequence's keys of one layer, read in place from its blocks for eviction scoring.
pub struct PagedKeys<'a> {
    pub layer: LayerView<'a>,
    pub block_table: &'a [u32],
    pub block_size: usize,
    pub head_dim: usize,
    pub num_entries: usize,
}

impl KeySource for PagedKeys<'_> {
    fn num_entries(&self) -> usize {
        self.num_entries
    }

    fn key(&self, kv_head: usize, entry: usize) -> &[f32] {
        let block = self.block_table[entry / self.block_size] as usize;
        let start =
            self.layer.head_offset(block, kv_head) + (entry % self.block_size) * self.head_dim;
        &self.layer.keys[start..start + self.head_dim]
    }
}

/// One layer of the pool, borrowed for attention.
#[derive(Clone, Copy)]
pub struct LayerView<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub block_stride: usize,
    pub head_stride: usize,
}

impl LayerView<'_> {
    /// Offset of the first entry of `head` in `block`; its entries follow contiguously.
    #[inline]
    pub fn head_offset(&self, block: usize, head: usize) -> usize {
        block * self.block_stride + head * self.head_stride
    }
}
