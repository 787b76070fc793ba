//! Eviction scoring's view of the paged cache: one sequence's keys of one layer, read in place
//! from its blocks (no gather into a contiguous copy) in the pool's element type, widened to f32
//! and scaled as attention reads them, with the attention kernels' dot products (the key scale
//! folded in by [`LayerView::dot_scale`], as attention does).
//! It sits with eviction, apart from [`super::kv_cache`], so the cache module needs nothing from
//! attention.

use super::attention::{QueryContext, lane_pieces};
use super::attention_kernels::{Kernels, KvElement, LANES};
use super::kv_cache::{LayerView, PoolLayer, read, with_layer_view};
use super::stored::Stored;
use crate::eviction::KeySource;

/// One sequence's keys of one layer, read in place from its blocks for eviction scoring.
pub struct PagedKeys<'a> {
    pub layer: PoolLayer<'a>,
    pub block_table: &'a [u32],
    pub block_size: usize,
    pub head_dim: usize,
    pub num_entries: usize,
}

impl KeySource for PagedKeys<'_> {
    fn num_entries(&self) -> usize {
        self.num_entries
    }

    fn read_key(&self, kv_head: usize, entry: usize, out: &mut [f32]) {
        with_layer_view!(self.layer, layer => self.read_key_in(layer, kv_head, entry, out));
    }

    /// The attention kernel's scores, run by run over the blocks: each key load is shared by
    /// [`Kernels::scores`]' block of queries.
    fn scaled_dots(
        &self,
        kv_head: usize,
        queries: &[f32],
        head_dim: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        with_layer_view!(self.layer, layer => {
            self.scaled_dots_in(layer, kv_head, queries, head_dim, scale, out)
        });
    }
}

impl PagedKeys<'_> {
    fn read_key_in<E: Stored>(
        &self,
        layer: LayerView<'_, E>,
        kv_head: usize,
        entry: usize,
        out: &mut [f32],
    ) {
        let block = self.block_table[entry / self.block_size] as usize;
        let start = layer.head_offset(block, kv_head) + entry % self.block_size;
        let column = layer.keys[start..].iter().step_by(self.block_size);
        let key_scale = layer.scales.keys[kv_head];
        for (o, &k) in out[..self.head_dim].iter_mut().zip(column) {
            *o = read(k, key_scale);
        }
    }

    fn scaled_dots_in<E: KvElement>(
        &self,
        layer: LayerView<'_, E>,
        kv_head: usize,
        queries: &[f32],
        head_dim: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let n = self.num_entries;
        let scale = layer.dot_scale(kv_head, scale);
        let kernels = Kernels::detect();
        let mut scores = vec![[0.0f32; LANES]; queries.len() / head_dim];
        let every_entry = QueryContext {
            block_table: self.block_table,
            num_entries: n,
            skip: 0..0,
            extra: None,
        };
        every_entry.for_each_run(self.block_size, |block, slot, entry, count| {
            for piece in lane_pieces(slot, count) {
                let run = layer.key_run(block, kv_head, piece.clone());
                kernels.scores(queries, head_dim, &run, scale, &mut scores);
                let columns = entry + piece.start - slot..entry + piece.end - slot;
                for (row, s) in out.chunks_exact_mut(n).zip(&scores) {
                    row[columns.clone()].copy_from_slice(&s[..piece.len()]);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::KvGeometry;
    use crate::backend::cpu::kv_cache::{CpuKvCache, as_stored};
    use crate::config::KvCacheDtype;
    use crate::eviction::ContiguousKeys;
    use crate::test_util::pseudo_random;

    /// Keys written entry by entry come back from the transposed layout as the pool stores them
    /// (rounded in a bf16 or fp8 pool, scaled by the head's scale in fp8), and the kernel's scaled
    /// dot products agree with the key-by-key default, for block sizes below, at and above one
    /// vector of lanes, in f32, bf16 and fp8 pools.
    #[test]
    fn transposed_keys_read_back_and_score_like_the_default() {
        let (num_kv_heads, d, n) = (2, 24, 45usize);
        let dtypes = [KvCacheDtype::F32, KvCacheDtype::Bf16, KvCacheDtype::Fp8];
        for (dtype, block_size) in dtypes.into_iter().flat_map(|t| [(t, 4), (t, 16), (t, 32)]) {
            let geometry = KvGeometry {
                num_layers: 2,
                num_kv_heads,
                head_dim: d,
                block_size,
                num_blocks: 16,
                dtype,
            };
            let mut cache = CpuKvCache::for_tests(geometry);
            // Distinct blocks, out of order.
            let table: Vec<u32> = (0..n.div_ceil(block_size) as u32)
                .map(|i| (i * 5 + 3) % 16)
                .collect();
            let key_scales = cache.head_scales(1).keys.to_vec();
            let keys = as_stored(
                dtype,
                &key_scales,
                d,
                pseudo_random(n * num_kv_heads * d, 4),
            );
            let values = pseudo_random(n * num_kv_heads * d, 5);
            for entry in 0..n {
                let row = entry * num_kv_heads * d..(entry + 1) * num_kv_heads * d;
                let block = table[entry / block_size] as usize;
                cache.write(
                    1,
                    block,
                    entry % block_size,
                    &keys[row.clone()],
                    &values[row],
                );
            }
            let paged = PagedKeys {
                layer: cache.layer(1),
                block_table: &table,
                block_size,
                head_dim: d,
                num_entries: n,
            };
            let contiguous = ContiguousKeys::new(&keys, num_kv_heads, d).expect("whole rows");
            let queries = pseudo_random(11 * d, 6);
            for kv_head in 0..num_kv_heads {
                let (mut got, mut want) = (vec![0.0; d], vec![0.0; d]);
                for entry in 0..n {
                    paged.read_key(kv_head, entry, &mut got);
                    contiguous.read_key(kv_head, entry, &mut want);
                    assert_eq!(got, want, "{dtype}, block size {block_size}, entry {entry}");
                }
                let (mut got, mut want) = (vec![0.0; 11 * n], vec![0.0; 11 * n]);
                paged.scaled_dots(kv_head, &queries, d, 0.3, &mut got);
                contiguous.scaled_dots(kv_head, &queries, d, 0.3, &mut want);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() < 1e-6,
                        "{dtype}, block size {block_size}, dot {i}"
                    );
                }
            }
        }
    }
}
