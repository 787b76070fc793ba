//! The CPU backend's paged KV pool: one allocation for keys and one for values, laid out
//! `[layer][block][kv_head][..]`, so the entries of one head in one block are contiguous and
//! attention reads them in place through the block table. Within that piece values are row-major,
//! `[slot][head_dim]`, and keys are transposed, `[head_dim][slot]`: one vector load then holds one
//! dimension of 16 keys, which is what the attention kernels multiply a broadcast query element by
//! (see [`super::attention_kernels`]).

use std::ops::Range;

use super::attention_kernels::KeyRun;
use crate::backend::KvGeometry;
use crate::error::{EngineError, Result};

/// Keys and values of every block of the pool.
pub struct CpuKvCache {
    geometry: KvGeometry,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl CpuKvCache {
    /// Allocates a zeroed pool (pages are committed lazily by the OS as blocks are first written).
    ///
    /// Fails with [`EngineError::OutOfMemory`] when the allocator cannot provide the pool (a
    /// budget larger than the machine), instead of aborting the process.
    pub fn new(geometry: KvGeometry) -> Result<Self> {
        let len = geometry.num_layers
            * geometry.num_blocks
            * geometry.num_kv_heads
            * geometry.block_size
            * geometry.head_dim;
        // `vec![0.0; len]` keeps the lazy zeroed pages but aborts when the allocation fails;
        // reserving keys and values at once first (and giving them back) makes that an error.
        Vec::<f32>::new()
            .try_reserve_exact(2 * len)
            .map_err(|_| EngineError::OutOfMemory {
                what: format!(
                    "the KV pool ({} blocks of {} entries)",
                    geometry.num_blocks, geometry.block_size
                ),
                bytes: geometry.total_bytes(),
            })?;
        Ok(Self {
            geometry,
            keys: vec![0.0; len],
            values: vec![0.0; len],
        })
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
            block_size: self.geometry.block_size,
            head_dim: self.geometry.head_dim,
        }
    }

    /// Writes one entry's K and V (`[num_kv_heads · head_dim]` each) of `layer` into `slot` of `block`.
    pub fn write(&mut self, layer: usize, block: usize, slot: usize, k: &[f32], v: &[f32]) {
        let (d, bs) = (self.geometry.head_dim, self.geometry.block_size);
        let block_start = self.layer_range(layer).start + block * self.block_stride();
        for head in 0..self.geometry.num_kv_heads {
            let head_start = block_start + head * self.head_stride();
            let at = head_start + slot * d;
            self.values[at..at + d].copy_from_slice(&v[head * d..(head + 1) * d]);
            let key_column = self.keys[head_start + slot..].iter_mut().step_by(bs);
            for (dst, &src) in key_column.zip(&k[head * d..(head + 1) * d]) {
                *dst = src;
            }
        }
    }
}

impl CpuKvCache {
    /// The whole pool, keys then values (tests compare pools bit for bit).
    #[cfg(test)]
    pub fn raw(&self) -> (&[f32], &[f32]) {
        (&self.keys, &self.values)
    }

    /// Compaction after eviction: for each KV head `h` of `layer`, copies the entries
    /// `kept[h]` (ascending) of the blocks `from` to the entries `0..kept[h].len()` of the
    /// blocks `to`, keys and values alike. `to` is either `from` itself (in place: entry
    /// `kept[h][i] ≥ i` is read before slot `i` could overwrite it, since slots fill in
    /// ascending order) or blocks disjoint from `from` (prefix caching keeps `from` intact).
    pub fn compact(&mut self, layer: usize, from: &[u32], to: &[u32], kept: &[Vec<usize>]) {
        let (d, bs) = (self.geometry.head_dim, self.geometry.block_size);
        let layer_start = self.layer_range(layer).start;
        let (block_stride, head_stride) = (self.block_stride(), self.head_stride());
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

/// One layer of the pool, borrowed for attention.
#[derive(Clone, Copy)]
pub struct LayerView<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub block_stride: usize,
    pub head_stride: usize,
    pub block_size: usize,
    pub head_dim: usize,
}

impl<'a> LayerView<'a> {
    /// The entries in `slots` (at most [`LANES`](super::attention_kernels::LANES), one piece of
    /// `attention::lane_pieces`) of `head` in `block`, as the attention kernels read them.
    pub fn key_run(&self, block: usize, head: usize, slots: Range<usize>) -> KeyRun<'a> {
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
    /// dimension (`block_size` floats each).
    #[inline]
    pub fn head_offset(&self, block: usize, head: usize) -> usize {
        block * self.block_stride + head * self.head_stride
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_larger_than_memory_is_an_error_not_an_abort() {
        let geometry = KvGeometry {
            num_layers: 64,
            num_kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            num_blocks: 1 << 30,
            element_bytes: 4,
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
