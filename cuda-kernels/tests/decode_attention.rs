//! The paged decode attention kernel, run through the host shim, against a float64 reference on
//! the same bf16 keys and values: block sizes 1/16/32, GQA groups 1/2/4/8, head_dim 64/128,
//! contexts of 0, 1, a partial block, exact blocks and several tiles, skipped ranges (PyramidKV's
//! per-layer kept lengths) inside, at the edge of and beyond the context, and scrambled block
//! tables padded with −1 (never read); one partition or contexts split into partitions of sizes
//! that are and are not multiples of the tile.

use glimpse_cuda_kernels::{DecodeContexts, DecodeParams, KvLayer, KvLayout, decode_attention};
use half::bf16;
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;

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

/// f64 attention of one head's query over the attended entries.
fn reference(q: &[f32], keys: &[Vec<f64>], values: &[Vec<f64>], scale: f64) -> Vec<f64> {
    let d = q.len();
    if keys.is_empty() {
        return vec![0.0; d];
    }
    let scores: Vec<f64> = keys
        .iter()
        .map(|k| {
            k.iter()
                .zip(q)
                .map(|(&k, &q)| k * f64::from(q))
                .sum::<f64>()
                * scale
        })
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    (0..d)
        .map(|i| {
            weights
                .iter()
                .zip(values)
                .map(|(w, v)| w * v[i])
                .sum::<f64>()
                / total
        })
        .collect()
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
    let max_blocks = SEQUENCES
        .iter()
        .map(|s| s.0 as usize)
        .max()
        .unwrap()
        .div_ceil(block_size)
        + 2;
    let needed: usize = SEQUENCES
        .iter()
        .map(|s| (s.0 as usize).div_ceil(block_size))
        .sum();
    let num_blocks = needed + 3;
    let mut pool: Vec<i32> = (0..num_blocks as i32).collect();
    pool.shuffle(rng);
    let mut free = pool.into_iter();
    let mut block_tables = vec![-1; SEQUENCES.len() * max_blocks];
    for (table, &(context, _, _)) in block_tables.chunks_mut(max_blocks).zip(&SEQUENCES) {
        for slot in &mut table[..(context as usize).div_ceil(block_size)] {
            *slot = free.next().unwrap();
        }
    }
    let len = num_blocks * num_kv_heads * block_size * head_dim;
    let mut random_bf16 = || bf16::from_f32(rng.random_range(-1.0..1.0)).to_bits();
    let mut keys: Vec<u16> = (0..len).map(|_| random_bf16()).collect();
    let mut values: Vec<u16> = (0..len).map(|_| random_bf16()).collect();
    let q: Vec<f32> = (0..SEQUENCES.len() * num_heads * head_dim)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let column = |k: usize| SEQUENCES.map(|s| [s.0, s.1, s.2][k]).to_vec();
    let (context_lens, skip_starts, skip_ends) = (column(0), column(1), column(2));
    let contexts = DecodeContexts {
        block_tables: &block_tables,
        max_blocks_per_seq: max_blocks,
        context_lens: &context_lens,
        skip_starts: &skip_starts,
        skip_ends: &skip_ends,
    };
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![f32::NAN; q.len()];
    let layer = KvLayer {
        keys: &mut keys,
        values: &mut values,
        layout,
    };
    let params = DecodeParams {
        num_heads,
        scale,
        partition_size,
        threads,
    };
    decode_attention(&q, &layer, &contexts, params, &mut out);

    let widen = |bits: &[u16]| {
        bits.iter()
            .map(|&b| f64::from(bf16::from_bits(b).to_f32()))
            .collect::<Vec<f64>>()
    };
    let group = num_heads / num_kv_heads;
    for (seq, &(context, skip_start, skip_end)) in SEQUENCES.iter().enumerate() {
        let table = &block_tables[seq * max_blocks..];
        let attended = (0..context as usize)
            .filter(|&e| !(skip_start as usize..skip_end as usize).contains(&e));
        for head in 0..num_heads {
            let kv_head = head / group;
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            for entry in attended.clone() {
                let block_entry =
                    table[entry / block_size] as usize * block_size + entry % block_size;
                let at = layout.index(block_entry, kv_head, 0);
                ks.push(widen(&layer.keys[at..at + head_dim]));
                vs.push(widen(&layer.values[at..at + head_dim]));
            }
            let row = (seq * num_heads + head) * head_dim;
            let want = reference(&q[row..row + head_dim], &ks, &vs, f64::from(scale));
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
