//! The paged decode attention kernel, run through the host shim, against a float64 reference on
//! the same bf16 keys and values: block sizes 1/16/32, GQA groups 1/2/4/8, head_dim 64/128,
//! contexts of 0, 1, a partial block, exact blocks and several tiles, skipped ranges (PyramidKV's
//! per-layer kept lengths) inside, at the edge of and beyond the context, and scrambled block
//! tables padded with −1 (never read); one partition or contexts split into partitions of sizes
//! that are and are not multiples of the tile.

mod common;
#[path = "common/attention.rs"]
mod reference;

use common::PagedPool;
use glimpse_cuda_kernels::{DecodeContexts, DecodeParams, KvLayout, decode_attention};
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use reference::attention_reference;

/// |kernel − reference|: f32 dot products over `head_dim` terms and an f32 online softmax, on
/// values of magnitude ≤ 1.
const TOLERANCE: f64 = 5e-5;

/// Per sequence: context length and skipped range.
const SEQUENCES: [(i32, i32, i32); 8] = [
    (0, 0, 0),
    (1, 0, 0),
    (15, 0, 0),
    (16, 4, 9),
    (17, 17, 30),
    (70, 20, 40),
    (100, 10, 10),
    (300, 0, 200),
];

struct Case {
    block_size: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    threads: u32,
    partition_size: usize,
}

fn run(case: &Case, rng: &mut ChaCha8Rng) {
    let Case {
        block_size,
        num_heads,
        num_kv_heads,
        head_dim,
        threads,
        partition_size,
    } = *case;
    let layout = KvLayout {
        num_kv_heads,
        head_dim,
        block_size,
    };
    let column = |k: usize| SEQUENCES.map(|s| [s.0, s.1, s.2][k]).to_vec();
    let (context_lens, skip_starts, skip_ends) = (column(0), column(1), column(2));
    let mut pool = PagedPool::new(layout, &context_lens, rng);
    // A copy: the launch borrows the pool's keys and values mutably.
    let block_tables = pool.block_tables.clone();
    let q: Vec<f32> = (0..SEQUENCES.len() * num_heads * head_dim)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let contexts = DecodeContexts {
        block_tables: &block_tables,
        max_blocks_per_seq: pool.max_blocks,
        context_lens: &context_lens,
        skip_starts: &skip_starts,
        skip_ends: &skip_ends,
    };
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![f32::NAN; q.len()];
    let params = DecodeParams {
        num_heads,
        scale,
        partition_size,
        threads,
    };
    decode_attention(&q, &pool.layer(), &contexts, params, &mut out);

    let group = num_heads / num_kv_heads;
    for (seq, &(context, skip_start, skip_end)) in SEQUENCES.iter().enumerate() {
        let attended = (0..context as usize)
            .filter(|&e| !(skip_start as usize..skip_end as usize).contains(&e));
        for head in 0..num_heads {
            let (ks, vs): (Vec<_>, Vec<_>) = attended
                .clone()
                .map(|entry| pool.entry(seq, entry, head / group))
                .unzip();
            let row = (seq * num_heads + head) * head_dim;
            let want = attention_reference(&q[row..row + head_dim], &ks, &vs, f64::from(scale));
            for (d, (&got, want)) in out[row..row + head_dim].iter().zip(want).enumerate() {
                assert!(
                    (f64::from(got) - want).abs() <= TOLERANCE,
                    "sequence {seq} (context {context}, skip {skip_start}..{skip_end}), head {head}, dim {d}: {got} vs {want}; block size {block_size}, {num_heads}/{num_kv_heads} heads, head_dim {head_dim}, {threads} threads"
                );
            }
        }
    }
}

#[test]
fn decode_attention_matches_a_float64_reference_over_paged_bf16_entries_and_partitions() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let cases = [
        Case {
            block_size: 1,
            num_heads: 2,
            num_kv_heads: 2,
            head_dim: 64,
            threads: 32,
            partition_size: 1 << 20,
        },
        Case {
            block_size: 16,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 128,
            threads: 64,
            partition_size: 64,
        },
        Case {
            block_size: 32,
            num_heads: 8,
            num_kv_heads: 1,
            head_dim: 64,
            threads: 32,
            partition_size: 48,
        },
        Case {
            block_size: 16,
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 128,
            threads: 128,
            partition_size: 100,
        },
        Case {
            block_size: 16,
            num_heads: 4,
            num_kv_heads: 4,
            head_dim: 64,
            threads: 1,
            partition_size: 7,
        },
    ];
    for case in &cases {
        run(case, &mut rng);
    }
}
