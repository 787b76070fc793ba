//! Eviction scoring and selection, run through the host shim, against the CPU's
//! `eviction::score_prompt` and `eviction::select_with_window`: the selection bit for bit on
//! random scores full of ties (signed zeros, infinities, NaN), the pooling and GQA mean bit for
//! bit on the same reduced rows, and the whole scoring within a stated tolerance (its dot products
//! and exponentials round differently). SnapKV/PyramidKV (window queries at the end of the prompt,
//! sum, max or average pooling) and LookaheadKV (queries after the prompt whose own keys enter the
//! denominator, mean, no pooling); block sizes 1/16/32, GQA groups 1/2/4/8, head_dim 64/128.

mod common;

use common::PagedPool;
use glimpse_cuda_kernels::{
    KvLayout, QkvRows, ScorePool, ScoringPlan, eviction_scores, score_pool, top_k,
};
use glimpse_engine::eviction::{
    ContiguousKeys, HeadLayout, Pool, Pooling, QueryReduction, QueryRows, ScoringRequest, pool1d,
    score_prompt, select_with_window,
};
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;

/// Scores drawn from a few values, so most of them tie.
const TIED: [f32; 9] = [
    0.0,
    -0.0,
    0.25,
    0.5,
    -1.0,
    1e-30,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
];

#[test]
fn top_k_selects_what_the_cpu_selects_bit_for_bit_including_ties() {
    let mut rng = ChaCha8Rng::seed_from_u64(30);
    let cases: [(usize, usize, usize, u32); 10] = [
        (0, 0, 2, 32),
        (1, 0, 0, 1),
        (1, 1, 3, 32),
        (5, 2, 1, 4),
        (31, 10, 0, 32),
        (100, 99, 4, 64),
        (100, 100, 0, 32),
        (100, 130, 2, 16),
        (700, 200, 8, 256),
        (1000, 1, 0, 128),
    ];
    for (scored, k, window, threads) in cases {
        for tied in [true, false] {
            let num_kv_heads = 3;
            let scores: Vec<f32> = (0..num_kv_heads * scored)
                .map(|_| match tied {
                    true => TIED[rng.random_range(0..TIED.len())],
                    false => rng.random_range(-1.0..1.0),
                })
                .collect();
            let kept = top_k(&scores, num_kv_heads, k, window, threads);
            let per_head = k.min(scored) + window;
            for (head, got) in kept.chunks(per_head.max(1)).enumerate().take(num_kv_heads) {
                let row = &scores[head * scored..(head + 1) * scored];
                let want = select_with_window(row, scored + window, k + window, window);
                let got: Vec<usize> = got.iter().map(|&e| e as usize).collect();
                assert_eq!(
                    got, want,
                    "head {head}: {scored} scores, k {k}, window {window}, {threads} threads, tied {tied}"
                );
            }
        }
    }
}

#[test]
fn pooling_and_the_gqa_mean_equal_the_cpu_bit_for_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    for (scored, num_heads, num_kv_heads, pool, threads) in [
        (1, 2, 1, ScorePool::Max(7), 32),
        (50, 8, 2, ScorePool::Avg(5), 16),
        (130, 8, 1, ScorePool::Max(3), 64),
        (77, 4, 4, ScorePool::None, 32),
        (40, 4, 2, ScorePool::Avg(1), 1),
    ] {
        let reduced: Vec<f32> = (0..num_heads * scored)
            .map(|_| rng.random_range(0.0..1.0))
            .collect();
        let mut got = vec![f32::NAN; num_kv_heads * scored];
        score_pool(&reduced, num_heads, num_kv_heads, pool, threads, &mut got);
        let group = num_heads / num_kv_heads;
        let mut want = vec![0.0f32; num_kv_heads * scored];
        for (head, row) in reduced.chunks(scored).enumerate() {
            let pooled = match cpu_pooling(pool) {
                Some(pooling) => {
                    let mut pooled = vec![0.0; scored];
                    pool1d(row, pooling, &mut pooled);
                    pooled
                }
                None => row.to_vec(),
            };
            let dst = &mut want[head / group * scored..][..scored];
            dst.iter_mut().zip(&pooled).for_each(|(w, p)| *w += p);
        }
        let inv_group = 1.0 / group as f32;
        want.iter_mut().for_each(|w| *w *= inv_group);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&got),
            bits(&want),
            "{pool:?}, {num_heads}/{num_kv_heads} heads"
        );
    }
}

fn cpu_pooling(pool: ScorePool) -> Option<Pooling> {
    match pool {
        ScorePool::None => None,
        ScorePool::Max(kernel) => Some(Pooling {
            pool: Pool::Max,
            kernel,
        }),
        ScorePool::Avg(kernel) => Some(Pooling {
            pool: Pool::Avg,
            kernel,
        }),
    }
}

/// |kernel − CPU| ≤ RELATIVE · |CPU| + ABSOLUTE per score: each probability carries the rounding
/// of an f32 dot product over `head_dim` terms (another order than the CPU's eight partial sums),
/// of `expf` against the CPU's polynomial (a few ulp), and of the softmax sum over the prompt;
/// the absolute term covers scores near zero. Measured on these cases: at most 5.4e-7 relative.
const RELATIVE: f32 = 5e-6;
const ABSOLUTE: f32 = 1e-9;

#[derive(Debug, Clone, Copy)]
struct Case {
    block_size: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    prompt_len: usize,
    n_q: usize,
    /// SnapKV/PyramidKV's window (`Some`), else LookaheadKV (with or without its own keys).
    window: Option<usize>,
    with_extra: bool,
    pool: ScorePool,
    threads: u32,
}

fn check_scores(case: Case, rng: &mut ChaCha8Rng) {
    let layout = KvLayout {
        num_kv_heads: case.num_kv_heads,
        head_dim: case.head_dim,
        block_size: case.block_size,
    };
    let prompt_len = i32::try_from(case.prompt_len).unwrap();
    let mut pool = PagedPool::new(layout, &[prompt_len], rng);
    let (q_width, kv_width) = (
        case.num_heads * case.head_dim,
        case.num_kv_heads * case.head_dim,
    );
    let rows = QkvRows {
        row_stride: q_width + 2 * kv_width,
        k_offset: q_width,
        v_offset: q_width + kv_width,
    };
    let qkv: Vec<f32> = (0..case.n_q * rows.row_stride)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let scored = case.prompt_len - case.window.unwrap_or(0);
    let plan = ScoringPlan {
        prompt_len: case.prompt_len,
        scored,
        suffix: case.window.is_some(),
        with_extra: case.with_extra,
        mean: case.window.is_none(),
        pool: case.pool,
        num_heads: case.num_heads,
        threads: case.threads,
    };
    let block_table = pool.block_tables[..pool.max_blocks].to_vec();
    let mut got = vec![f32::NAN; case.num_kv_heads * scored];
    eviction_scores(&qkv, rows, &pool.layer(), &block_table, plan, &mut got);

    let keys: Vec<f32> = (0..case.prompt_len)
        .flat_map(|e| (0..case.num_kv_heads).map(move |h| (e, h)))
        .flat_map(|(e, h)| pool.entry(0, e, h).0)
        .map(|k| k as f32)
        .collect();
    let queries: Vec<f32> = qkv
        .chunks(rows.row_stride)
        .flat_map(|row| &row[..q_width])
        .copied()
        .collect();
    let extra: Vec<f32> = qkv
        .chunks(rows.row_stride)
        .flat_map(|row| &row[rows.k_offset..rows.k_offset + kv_width])
        .copied()
        .collect();
    let request = ScoringRequest {
        queries: &queries,
        rows: match case.window {
            Some(_) => QueryRows::PromptSuffix,
            None => QueryRows::AfterPrompt {
                extra_keys: case.with_extra.then_some(extra.as_slice()),
            },
        },
        scored_entries: scored,
        reduction: match case.window {
            Some(_) => QueryReduction::Sum,
            None => QueryReduction::Mean,
        },
        pooling: cpu_pooling(case.pool),
        dots: None,
    };
    let head_layout = HeadLayout {
        num_heads: case.num_heads,
        num_kv_heads: case.num_kv_heads,
        head_dim: case.head_dim,
    };
    let source = ContiguousKeys::new(&keys, case.num_kv_heads, case.head_dim).unwrap();
    let want = score_prompt(head_layout, &request, &source).unwrap();
    for head in 0..case.num_kv_heads {
        for (e, (&g, &w)) in got[head * scored..(head + 1) * scored]
            .iter()
            .zip(want.head(head))
            .enumerate()
        {
            assert!(
                (g - w).abs() <= RELATIVE * w.abs() + ABSOLUTE,
                "KV head {head}, entry {e}: {g} vs {w}; {case:?}"
            );
        }
    }
}

#[test]
fn eviction_scores_match_the_cpu_scoring_within_a_tolerance() {
    let mut rng = ChaCha8Rng::seed_from_u64(32);
    let base = Case {
        block_size: 16,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        prompt_len: 100,
        n_q: 8,
        window: Some(8),
        with_extra: false,
        pool: ScorePool::Max(7),
        threads: 32,
    };
    let cases = [
        base,
        Case {
            block_size: 1,
            num_heads: 2,
            num_kv_heads: 2,
            head_dim: 128,
            prompt_len: 37,
            n_q: 5,
            window: Some(5),
            pool: ScorePool::Avg(5),
            threads: 16,
            ..base
        },
        Case {
            block_size: 32,
            num_heads: 8,
            num_kv_heads: 1,
            prompt_len: 300,
            n_q: 6,
            window: None,
            with_extra: true,
            pool: ScorePool::None,
            threads: 64,
            ..base
        },
        Case {
            num_heads: 16,
            num_kv_heads: 4,
            head_dim: 128,
            prompt_len: 70,
            n_q: 3,
            window: None,
            with_extra: false,
            pool: ScorePool::None,
            threads: 1,
            ..base
        },
        Case {
            prompt_len: 4,
            n_q: 4,
            window: Some(3),
            pool: ScorePool::Avg(3),
            ..base
        },
    ];
    for case in cases {
        check_scores(case, &mut rng);
    }
}
