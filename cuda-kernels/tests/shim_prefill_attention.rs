//! The paged varlen prefill attention kernel, run through the host shim, against a float64
//! reference on the same bf16 cache entries and f32 lookahead keys and values. One launch mixes
//! sequences with and without a cached prefix (context 0 and 1, partial blocks, several tiles),
//! a row-less sequence, skipped ranges (PyramidKV's per-layer kept lengths), and lookahead rows
//! (with and without prompt rows in the pass) that see the whole prompt and the lookahead rows up
//! to their own, while the prompt rows never see them; block sizes 1/16/32, GQA groups 1/2/4/8,
//! head_dim 64/128, tiles of rows that do and do not divide the sequences.

mod common;
#[path = "common/attention.rs"]
mod reference;

use common::PagedPool;
use glimpse_cuda_kernels::{
    KvLayout, PrefillBuild, PrefillParams, PrefillSequences, QkvRows, prefill_attention,
};
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use reference::attention_reference;

/// |kernel − reference|: f32 dot products over `head_dim` terms and an f32 online softmax, on
/// values of magnitude ≤ 1 (as for decode attention).
const TOLERANCE: f64 = 5e-5;

/// One sequence of a launch: cached prefix, new prompt rows, lookahead rows, skipped range.
#[derive(Debug, Clone, Copy)]
struct Sequence {
    prefix: i32,
    prompt_rows: i32,
    lookahead: i32,
    skip: (i32, i32),
}

const fn seq(prefix: i32, prompt_rows: i32, lookahead: i32, skip: (i32, i32)) -> Sequence {
    Sequence {
        prefix,
        prompt_rows,
        lookahead,
        skip,
    }
}

const SEQUENCES: [Sequence; 10] = [
    seq(0, 0, 0, (0, 0)),
    seq(0, 1, 0, (0, 0)),
    seq(5, 1, 0, (0, 0)),
    seq(0, 17, 0, (0, 0)),
    seq(20, 13, 0, (4, 9)),
    seq(0, 40, 5, (0, 0)),
    seq(33, 30, 3, (10, 30)),
    seq(64, 6, 0, (16, 60)),
    seq(12, 0, 2, (0, 0)),
    seq(16, 16, 1, (3, 16)),
];

#[derive(Debug, Clone, Copy)]
struct Case {
    block_size: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    threads: u32,
    rows_per_block: usize,
}

/// Runs `build` on `sequences` and returns, per output element, (kernel, reference) with a
/// description of where it is.
fn run(
    case: Case,
    sequences: &[Sequence],
    build: PrefillBuild,
    rng: &mut ChaCha8Rng,
) -> Vec<(f32, f64, String)> {
    let Case {
        block_size,
        num_heads,
        num_kv_heads,
        head_dim,
        threads,
        rows_per_block,
    } = case;
    let layout = KvLayout {
        num_kv_heads,
        head_dim,
        block_size,
    };
    let context_lens: Vec<i32> = sequences.iter().map(|s| s.prefix + s.prompt_rows).collect();
    let mut pool = PagedPool::new(layout, &context_lens, rng);
    // A copy: the launch borrows the pool's keys and values mutably.
    let block_tables = pool.block_tables.clone();
    let mut cu_seqlens = vec![0];
    for s in sequences {
        cu_seqlens.push(cu_seqlens.last().unwrap() + s.prompt_rows + s.lookahead);
    }
    let total_rows = *cu_seqlens.last().unwrap() as usize;
    let (q_width, kv_width) = (num_heads * head_dim, num_kv_heads * head_dim);
    let rows = QkvRows {
        row_stride: q_width + 2 * kv_width,
        k_offset: q_width,
        v_offset: q_width + kv_width,
    };
    let qkv: Vec<f32> = (0..total_rows * rows.row_stride)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let column = |f: fn(&Sequence) -> i32| sequences.iter().map(f).collect::<Vec<i32>>();
    let (num_lookahead, skip_starts, skip_ends) = (
        column(|s| s.lookahead),
        column(|s| s.skip.0),
        column(|s| s.skip.1),
    );
    let launch = PrefillSequences {
        cu_seqlens: &cu_seqlens,
        block_tables: &block_tables,
        max_blocks_per_seq: pool.max_blocks,
        context_lens: &context_lens,
        num_lookahead: &num_lookahead,
        skip_starts: &skip_starts,
        skip_ends: &skip_ends,
    };
    let scale = 1.0 / (head_dim as f32).sqrt();
    let params = PrefillParams {
        num_heads,
        scale,
        rows_per_block,
        threads,
    };
    let mut out = vec![f32::NAN; total_rows * q_width];
    prefill_attention(&qkv, rows, &pool.layer(), &launch, params, build, &mut out);

    let group = num_heads / num_kv_heads;
    let side = |row: usize, offset: usize, kv_head: usize| -> Vec<f64> {
        let at = row * rows.row_stride + offset + kv_head * head_dim;
        qkv[at..at + head_dim]
            .iter()
            .map(|&x| f64::from(x))
            .collect()
    };
    let mut results = Vec::new();
    for (s, sequence) in sequences.iter().enumerate() {
        let context = context_lens[s] as usize;
        let skip = sequence.skip.0 as usize..sequence.skip.1 as usize;
        let first_row = cu_seqlens[s] as usize;
        let first_side_row = first_row + sequence.prompt_rows as usize;
        for i in 0..(sequence.prompt_rows + sequence.lookahead) as usize {
            let lookahead_row = i.checked_sub(sequence.prompt_rows as usize);
            let entries = match lookahead_row {
                None => sequence.prefix as usize + i + 1,
                Some(_) => context,
            };
            for head in 0..num_heads {
                let kv_head = head / group;
                let (mut ks, mut vs): (Vec<_>, Vec<_>) = (0..entries)
                    .filter(|e| !skip.contains(e))
                    .map(|entry| pool.entry(s, entry, kv_head))
                    .unzip();
                for j in 0..lookahead_row.map_or(0, |j| j + 1) {
                    ks.push(side(first_side_row + j, rows.k_offset, kv_head));
                    vs.push(side(first_side_row + j, rows.v_offset, kv_head));
                }
                let row = first_row + i;
                let q = &qkv[row * rows.row_stride + head * head_dim..][..head_dim];
                let want = attention_reference(q, &ks, &vs, f64::from(scale));
                let got = &out[row * q_width + head * head_dim..][..head_dim];
                for (d, (&got, want)) in got.iter().zip(want).enumerate() {
                    let at = format!(
                        "sequence {s} {sequence:?}, row {i}, head {head}, dim {d}; {case:?}"
                    );
                    results.push((got, want, at));
                }
            }
        }
    }
    results
}

#[test]
fn prefill_attention_matches_a_float64_reference_over_paged_entries_and_lookahead_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    // Sized to stay within the sanitizers' time bound: every block starts its threads.
    let cases = [
        Case {
            block_size: 1,
            num_heads: 2,
            num_kv_heads: 2,
            head_dim: 64,
            threads: 32,
            rows_per_block: 8,
        },
        Case {
            block_size: 16,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 128,
            threads: 64,
            rows_per_block: 8,
        },
        Case {
            block_size: 32,
            num_heads: 8,
            num_kv_heads: 1,
            head_dim: 64,
            threads: 32,
            rows_per_block: 3,
        },
        Case {
            block_size: 16,
            num_heads: 16,
            num_kv_heads: 4,
            head_dim: 128,
            threads: 64,
            rows_per_block: 16,
        },
        Case {
            block_size: 16,
            num_heads: 4,
            num_kv_heads: 4,
            head_dim: 64,
            threads: 1,
            rows_per_block: 5,
        },
    ];
    for case in cases {
        for (got, want, at) in run(case, &SEQUENCES, PrefillBuild::Shipped, &mut rng) {
            assert!(
                (f64::from(got) - want).abs() <= TOLERANCE,
                "{at}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn prefill_attention_with_a_causal_off_by_one_is_caught() {
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    let case = Case {
        block_size: 16,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        threads: 32,
        rows_per_block: 4,
    };
    // A context that ends inside its last block, so the broken mask's extra entry is still a
    // pool entry (stale, never written by this sequence) rather than a read past the table.
    let sequences = [seq(3, 10, 0, (0, 0))];
    let wrong = run(case, &sequences, PrefillBuild::CausalOffByOne, &mut rng)
        .into_iter()
        .filter(|(got, want, _)| (f64::from(*got) - want).abs() > TOLERANCE)
        .count();
    assert!(
        wrong > 0,
        "the broken kernel matched the reference: the shim tests would not catch a causal off-by-one"
    );
}
