//! Out-of-place compaction through the host shim against the CPU backend's rule (each KV head's
//! kept entries, ascending, move to the sequence's leading entries, as `CpuKvCache::compact`
//! does in place in ascending order), on the device layout: every bit of the pool is compared, so
//! other sequences' blocks and entries past the kept ones must be untouched.

use glimpse_cuda_kernels::{KvLayer, KvLayout, compact};
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;

/// The CPU backend's compaction, entry by entry in ascending order, on the device layout.
fn compact_in_order(
    keys: &mut [u16],
    values: &mut [u16],
    layout: KvLayout,
    block_table: &[i32],
    kept: &[Vec<i32>],
) {
    let bs = layout.block_size;
    let entry = |e: usize| block_table[e / bs] as usize * bs + e % bs;
    for (head, entries) in kept.iter().enumerate() {
        for (slot, &from) in entries.iter().enumerate() {
            let (src, dst) = (
                layout.index(entry(from as usize), head, 0),
                layout.index(entry(slot), head, 0),
            );
            keys.copy_within(src..src + layout.head_dim, dst);
            values.copy_within(src..src + layout.head_dim, dst);
        }
    }
}

#[test]
fn compaction_moves_each_heads_kept_entries_to_the_front_and_nothing_else() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    for (block_size, num_kv_heads, head_dim, entries, count) in [
        (1, 1, 64, 9usize, 4),
        (16, 2, 128, 40, 17),
        (32, 8, 64, 70, 32),
        (16, 4, 64, 33, 33),
        (16, 2, 64, 20, 0),
    ] {
        let layout = KvLayout {
            num_kv_heads,
            head_dim,
            block_size,
        };
        let num_blocks = entries.div_ceil(block_size) + 3;
        let mut blocks: Vec<i32> = (0..num_blocks as i32).collect();
        blocks.shuffle(&mut rng);
        let block_table = &blocks[..entries.div_ceil(block_size)];
        let kept: Vec<Vec<i32>> = (0..num_kv_heads)
            .map(|_| {
                let mut chosen = rand::seq::index::sample(&mut rng, entries, count).into_vec();
                chosen.sort_unstable();
                chosen.into_iter().map(|e| e as i32).collect()
            })
            .collect();
        let len = num_blocks * num_kv_heads * block_size * head_dim;
        let mut keys: Vec<u16> = (0..len).map(|_| rng.random()).collect();
        let mut values: Vec<u16> = (0..len).map(|_| rng.random()).collect();
        let (mut want_keys, mut want_values) = (keys.clone(), values.clone());
        compact_in_order(&mut want_keys, &mut want_values, layout, block_table, &kept);
        let layer = KvLayer {
            keys: &mut keys,
            values: &mut values,
            layout,
        };
        compact(layer, block_table, &kept.concat(), count, 16);
        assert!(
            keys == want_keys && values == want_values,
            "block size {block_size}, {num_kv_heads} KV heads, {entries} entries, {count} kept"
        );
    }
}
