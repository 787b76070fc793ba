//! A paged device pool for the kernel tests.

use glimpse_cuda_kernels::{KvLayer, KvLayout};
use half::bf16;
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;

/// bf16 bits widened to f64.
pub fn widen(bits: &[u16]) -> Vec<f64> {
    bits.iter()
        .map(|&b| f64::from(bf16::from_bits(b).to_f32()))
        .collect()
}

/// One layer of a device pool of random bf16 keys and values in `[-1, 1)`, holding sequences of
/// the given context lengths in scrambled blocks (a few spare blocks too), their block tables
/// padded with −1 (never read) to the longest table plus two.
pub struct PagedPool {
    pub layout: KvLayout,
    pub keys: Vec<u16>,
    pub values: Vec<u16>,
    pub block_tables: Vec<i32>,
    pub max_blocks: usize,
}

impl PagedPool {
    pub fn new(layout: KvLayout, context_lens: &[i32], rng: &mut ChaCha8Rng) -> Self {
        let bs = layout.block_size;
        let blocks = |context: i32| usize::try_from(context).unwrap().div_ceil(bs);
        let max_blocks = context_lens.iter().map(|&c| blocks(c)).max().unwrap_or(0) + 2;
        let num_blocks = context_lens.iter().map(|&c| blocks(c)).sum::<usize>() + 3;
        let mut pool: Vec<i32> = (0..i32::try_from(num_blocks).unwrap()).collect();
        pool.shuffle(rng);
        let mut free = pool.into_iter();
        let mut block_tables = vec![-1; context_lens.len() * max_blocks];
        for (table, &context) in block_tables.chunks_mut(max_blocks).zip(context_lens) {
            for slot in &mut table[..blocks(context)] {
                *slot = free.next().unwrap();
            }
        }
        let len = num_blocks * layout.num_kv_heads * bs * layout.head_dim;
        let mut random_bf16 = || bf16::from_f32(rng.random_range(-1.0..1.0)).to_bits();
        let keys = (0..len).map(|_| random_bf16()).collect();
        let values = (0..len).map(|_| random_bf16()).collect();
        PagedPool {
            layout,
            keys,
            values,
            block_tables,
            max_blocks,
        }
    }

    /// The layer's view of the pool.
    pub fn layer(&mut self) -> KvLayer<'_> {
        KvLayer {
            keys: &mut self.keys,
            values: &mut self.values,
            layout: self.layout,
        }
    }

    /// Key and value of `kv_head` at entry `entry` of sequence `seq`, widened to f64.
    pub fn entry(&self, seq: usize, entry: usize, kv_head: usize) -> (Vec<f64>, Vec<f64>) {
        let bs = self.layout.block_size;
        let block = self.block_tables[seq * self.max_blocks + entry / bs];
        let at = self.layout.index(
            usize::try_from(block).unwrap() * bs + entry % bs,
            kv_head,
            0,
        );
        let span = at..at + self.layout.head_dim;
        (widen(&self.keys[span.clone()]), widen(&self.values[span]))
    }
}
