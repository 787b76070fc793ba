//! Unit tests for the eviction module. Parity with kvpress on the committed fixtures is in
//! `engine/tests/kvpress_parity.rs`.

use super::*;
use crate::error::EngineError;

fn snapkv(window: usize, kernel: usize, pool: Pool, budget: usize) -> EvictionPolicy {
    EvictionPolicy {
        policy: Policy::SnapKv {
            window,
            kernel,
            pool,
        },
        budget,
    }
}

/// A deterministic pseudo-random vector (xorshift), values in [-1, 1).
fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

#[test]
fn defaults_follow_the_design() {
    assert_eq!(EvictionPolicy::default().policy, Policy::Full);
    assert_eq!(Policy::streaming_llm(), Policy::StreamingLlm { sinks: 4 });
    assert_eq!(
        Policy::snapkv(),
        Policy::SnapKv {
            window: 32,
            kernel: 7,
            pool: Pool::Max
        }
    );
    assert!(matches!(
        Policy::pyramidkv(),
        Policy::PyramidKv {
            beta: 20,
            window: 32,
            kernel: 7,
            pool: Pool::Max
        }
    ));
    assert_eq!(
        Policy::lookahead(),
        Policy::Lookahead {
            num_tokens: 32,
            window: 0
        }
    );
}

#[test]
fn validation_names_field_limit_and_value() {
    let cases = [
        (snapkv(32, 7, Pool::Max, 0), "eviction.budget", "0"),
        (snapkv(32, 7, Pool::Max, 32), "eviction.window", "32"),
        (snapkv(0, 7, Pool::Max, 32), "eviction.window", "0"),
        (snapkv(8, 6, Pool::Max, 32), "eviction.kernel", "6"),
        (
            EvictionPolicy {
                policy: Policy::StreamingLlm { sinks: 4 },
                budget: 4,
            },
            "eviction.sinks",
            "4",
        ),
        (
            EvictionPolicy {
                policy: Policy::PyramidKv {
                    window: 8,
                    kernel: 7,
                    pool: Pool::Avg,
                    beta: 0,
                },
                budget: 32,
            },
            "eviction.beta",
            "0",
        ),
        (
            EvictionPolicy {
                policy: Policy::Lookahead {
                    num_tokens: 0,
                    window: 0,
                },
                budget: 32,
            },
            "eviction.num_tokens",
            "0",
        ),
    ];
    for (policy, want_field, value) in cases {
        match policy.validate() {
            Err(EngineError::InvalidParameter { field, message }) => {
                assert_eq!(field, want_field, "{policy:?}");
                assert!(message.ends_with(value), "{field}: {message}");
            }
            other => panic!("{policy:?} validated as {other:?}"),
        }
    }
    for policy in [
        EvictionPolicy::default(),
        snapkv(32, 7, Pool::Max, 64),
        EvictionPolicy {
            policy: Policy::lookahead(),
            budget: 1,
        },
    ] {
        policy.validate().expect("valid policy");
    }
}

#[test]
fn prompts_within_budget_are_untouched() {
    let policy = snapkv(4, 3, Pool::Max, 16);
    assert_eq!(policy.for_prompt(16), None);
    assert!(policy.for_prompt(17).is_some());
    let full = EvictionPolicy::default();
    assert_eq!(full.for_prompt(100_000), None);
}

#[test]
fn streaming_keeps_sinks_and_recent() {
    let policy = EvictionPolicy {
        policy: Policy::streaming_llm(),
        budget: 10,
    };
    let selection = policy
        .for_prompt(50)
        .expect("over budget")
        .select_layer(10, 3, None)
        .expect("streaming");
    let want: Vec<usize> = (0..4).chain(44..50).collect();
    assert_eq!(selection.kept, vec![want; 3]);
}

#[test]
fn snapkv_always_keeps_the_window() {
    let (n, window, budget) = (40, 8, 12);
    let policy = snapkv(window, 7, Pool::Max, budget);
    // Window scores would lose to everything else if they were ranked: they are not ranked.
    let mut scores = vec![1.0f32; n - window];
    scores[3] = 5.0;
    let scores = KvHeadScores::from_vec(1, n - window, scores).expect("shape");
    let kept = policy
        .for_prompt(n)
        .expect("over budget")
        .select_layer(budget, 1, Some(&scores))
        .expect("select");
    let kept = &kept.kept[0];
    assert_eq!(kept.len(), budget);
    assert!((n - window..n).all(|i| kept.contains(&i)));
    assert!(kept.contains(&3));
}

#[test]
fn ties_prefer_the_lower_index() {
    let scores = [0.5, 1.0, 0.5, 1.0, 0.5, 0.2];
    assert_eq!(top_k(&scores, 3), vec![0, 1, 3]);
    assert_eq!(top_k(&scores, 4), vec![0, 1, 2, 3]);
    assert_eq!(top_k(&scores, 0), Vec::<usize>::new());
    assert_eq!(top_k(&scores, 9), (0..6).collect::<Vec<_>>());
}

#[test]
fn max_pool_matches_torch_padding_semantics() {
    // torch.nn.functional.max_pool1d(x, 3, stride=1, padding=1) and kernel 5, padding 2.
    let x = [1.0, 3.0, 2.0, 5.0, 4.0, -1.0];
    let mut out = [0.0; 6];
    max_pool1d(&x, 3, &mut out);
    assert_eq!(out, [3.0, 3.0, 5.0, 5.0, 5.0, 4.0]);
    max_pool1d(&x, 5, &mut out);
    assert_eq!(out, [3.0, 5.0, 5.0, 5.0, 5.0, 5.0]);
    // Padding is −∞, never 0: an all-negative row keeps its values at the edges.
    let negative = [-3.0, -1.0, -2.0];
    let mut out = [0.0; 3];
    max_pool1d(&negative, 3, &mut out);
    assert_eq!(out, [-1.0, -1.0, -1.0]);
}

#[test]
fn avg_pool_matches_torch_padding_semantics() {
    // torch avg_pool1d(x, 3, stride=1, padding=1, count_include_pad=True / False).
    let x = [1.0, 3.0, 2.0, 5.0, 4.0];
    let mut out = [0.0; 5];
    avg_pool1d(&x, 3, true, &mut out);
    assert_eq!(out, [4.0 / 3.0, 2.0, 10.0 / 3.0, 11.0 / 3.0, 3.0]);
    avg_pool1d(&x, 3, false, &mut out);
    assert_eq!(out, [2.0, 2.0, 10.0 / 3.0, 11.0 / 3.0, 4.5]);
    pool1d(
        &x,
        Pooling {
            pool: Pool::Avg,
            kernel: 1,
        },
        &mut out,
    );
    assert_eq!(out, x);
}

#[test]
fn pyramid_budgets_sum_to_uniform_total() {
    for (budget, window, beta, n, layers) in [
        (32, 8, 20, 64, 2),
        (24, 4, 2, 80, 2),
        (128, 32, 20, 4096, 32),
        (100, 8, 3, 1000, 7),
        (2048, 32, 20, 8000, 28),
    ] {
        let per_layer = pyramid_budgets(budget, window, beta, n, layers);
        assert_eq!(per_layer.len(), layers);
        assert_eq!(
            per_layer.iter().sum::<usize>(),
            budget * layers,
            "{per_layer:?}"
        );
        assert!(per_layer.windows(2).all(|w| w[0] >= w[1]), "{per_layer:?}");
        assert!(per_layer.iter().all(|&b| b >= window && b <= n));
    }
    assert_eq!(pyramid_budgets(32, 8, 20, 64, 2), vec![56, 8]);
    assert_eq!(pyramid_budgets(24, 4, 2, 80, 2), vec![36, 12]);
}

#[test]
fn pyramid_falls_back_to_uniform_when_the_shape_does_not_fit() {
    // min = 24/20 < window 8, and max = 46.8 < n − w: kvpress keeps SnapKV's uniform budget.
    assert_eq!(pyramid_budgets(24, 8, 20, 64, 3), vec![24; 3]);
}

fn scores_for(
    layout: HeadLayout,
    queries: &[f32],
    keys: &[f32],
    rows: QueryRows<'_>,
    reduction: QueryReduction,
    pooling: Option<Pooling>,
    scored_entries: usize,
) -> KvHeadScores {
    let keys = ContiguousKeys::new(keys, layout.num_kv_heads, layout.head_dim).expect("keys");
    let request = ScoringRequest {
        queries,
        rows,
        scored_entries,
        reduction,
        pooling,
        dots: None,
    };
    score_prompt(layout, &request, &keys).expect("scores")
}

#[test]
fn gqa_scores_are_the_mean_of_the_group() {
    let (n, nq, d) = (20, 3, 4);
    let grouped = HeadLayout {
        num_heads: 2,
        num_kv_heads: 1,
        head_dim: d,
    };
    let single = HeadLayout {
        num_heads: 1,
        ..grouped
    };
    let queries = pseudo_random(nq * 2 * d, 1);
    let keys = pseudo_random(n * d, 2);
    let pooling = Some(Pooling {
        pool: Pool::Max,
        kernel: 3,
    });
    let rows = QueryRows::PromptSuffix;
    let both = scores_for(
        grouped,
        &queries,
        &keys,
        rows,
        QueryReduction::Sum,
        pooling,
        n - nq,
    );
    let head_queries = |h: usize| -> Vec<f32> {
        (0..nq)
            .flat_map(|i| queries[(i * 2 + h) * d..(i * 2 + h + 1) * d].to_vec())
            .collect()
    };
    let h0 = scores_for(
        single,
        &head_queries(0),
        &keys,
        rows,
        QueryReduction::Sum,
        pooling,
        n - nq,
    );
    let h1 = scores_for(
        single,
        &head_queries(1),
        &keys,
        rows,
        QueryReduction::Sum,
        pooling,
        n - nq,
    );
    for j in 0..n - nq {
        let mean = (h0.head(0)[j] + h1.head(0)[j]) / 2.0;
        assert!((both.head(0)[j] - mean).abs() <= 1e-6, "entry {j}");
    }
}

/// Keys scattered over fixed-size blocks in a shuffled order, as a paged cache holds them.
struct BlockKeys {
    blocks: Vec<Vec<f32>>,
    block_table: Vec<usize>,
    block_size: usize,
    num_entries: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl KeySource for BlockKeys {
    fn num_entries(&self) -> usize {
        self.num_entries
    }

    fn read_key(&self, kv_head: usize, entry: usize, out: &mut [f32]) {
        let block = &self.blocks[self.block_table[entry / self.block_size]];
        let start = ((entry % self.block_size) * self.num_kv_heads + kv_head) * self.head_dim;
        out.copy_from_slice(&block[start..start + self.head_dim]);
    }
}

#[test]
fn scoring_reads_keys_in_place_from_paged_blocks() {
    let (n, block_size, d) = (22, 4, 4);
    let layout = HeadLayout {
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: d,
    };
    let contiguous = pseudo_random(n * 2 * d, 8);
    let block_table = vec![5, 0, 3, 1, 4, 2];
    let mut blocks = vec![vec![0.0; block_size * 2 * d]; block_table.len()];
    for (logical, &physical) in block_table.iter().enumerate() {
        let rows = (n - logical * block_size).min(block_size) * 2 * d;
        let src = logical * block_size * 2 * d;
        blocks[physical][..rows].copy_from_slice(&contiguous[src..src + rows]);
    }
    let paged = BlockKeys {
        blocks,
        block_table,
        block_size,
        num_entries: n,
        num_kv_heads: 2,
        head_dim: d,
    };
    let queries = pseudo_random(5 * 4 * d, 9);
    let request = ScoringRequest {
        queries: &queries,
        rows: QueryRows::PromptSuffix,
        scored_entries: n - 5,
        reduction: QueryReduction::Sum,
        pooling: Some(Pooling {
            pool: Pool::Max,
            kernel: 7,
        }),
        dots: None,
    };
    let from_blocks = score_prompt(layout, &request, &paged).expect("paged scores");
    let keys = ContiguousKeys::new(&contiguous, 2, d).expect("keys");
    assert_eq!(
        from_blocks,
        score_prompt(layout, &request, &keys).expect("scores")
    );
}

/// Dot products lent by the caller (as the CPU backend lends the lookahead rows' from their
/// attention) give the scores the key source's own dot products give, bit for bit, and a lent
/// buffer of the wrong size is refused.
#[test]
fn lent_dot_products_score_like_the_key_source() {
    let (n, nq, d) = (19, 3, 4);
    let layout = HeadLayout {
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: d,
    };
    let keys = pseudo_random(n * 2 * d, 21);
    let keys = ContiguousKeys::new(&keys, 2, d).expect("keys");
    let queries = pseudo_random(nq * 4 * d, 22);
    let extra = pseudo_random(nq * 2 * d, 23);
    let scale = 1.0 / (d as f32).sqrt();
    let mut lent = vec![0.0; nq * 4 * n];
    for head in 0..4 {
        let head_queries: Vec<f32> = (0..nq)
            .flat_map(|q| queries[(q * 4 + head) * d..][..d].to_vec())
            .collect();
        let mut dots = vec![0.0; nq * n];
        keys.scaled_dots(head / 2, &head_queries, d, scale, &mut dots);
        for (q, row) in dots.chunks_exact(n).enumerate() {
            lent[(q * 4 + head) * n..][..n].copy_from_slice(row);
        }
    }
    let mut request = ScoringRequest {
        queries: &queries,
        rows: QueryRows::AfterPrompt {
            extra_keys: Some(&extra),
        },
        scored_entries: n - 2,
        reduction: QueryReduction::Mean,
        pooling: None,
        dots: None,
    };
    let own = score_prompt(layout, &request, &keys).expect("scores");
    request.dots = Some(&lent);
    assert_eq!(score_prompt(layout, &request, &keys).expect("scores"), own);
    request.dots = Some(&lent[1..]);
    let error = score_prompt(layout, &request, &keys).expect_err("short lent dots");
    assert!(error.to_string().contains("lent dot products"), "{error}");
}

#[test]
fn window_queries_see_only_keys_up_to_their_position() {
    let (n, d) = (6, 2);
    let layout = HeadLayout {
        num_heads: 1,
        num_kv_heads: 1,
        head_dim: d,
    };
    // Zero queries: uniform attention over whatever each query sees.
    let queries = vec![0.0; 2 * d];
    let keys = pseudo_random(n * d, 3);
    let s = scores_for(
        layout,
        &queries,
        &keys,
        QueryRows::PromptSuffix,
        QueryReduction::Sum,
        None,
        n,
    );
    // Query 0 sits at position 4 (sees 5 keys), query 1 at position 5 (sees 6).
    let want = [1.0 / 5.0 + 1.0 / 6.0; 5];
    for (got, want) in s.head(0)[..5].iter().zip(want) {
        assert!((got - want).abs() < 1e-6);
    }
    assert!((s.head(0)[5] - 1.0 / 6.0).abs() < 1e-6);
}

#[test]
fn lookahead_keys_enter_the_denominator_but_are_never_scored() {
    let (n, m, d) = (5, 3, 2);
    let layout = HeadLayout {
        num_heads: 1,
        num_kv_heads: 1,
        head_dim: d,
    };
    let queries = vec![0.0; m * d];
    let keys = pseudo_random(n * d, 4);
    let extra = pseudo_random(m * d, 5);
    let mean = QueryReduction::Mean;
    let without = scores_for(
        layout,
        &queries,
        &keys,
        QueryRows::AfterPrompt { extra_keys: None },
        mean,
        None,
        n,
    );
    let with = scores_for(
        layout,
        &queries,
        &keys,
        QueryRows::AfterPrompt {
            extra_keys: Some(&extra),
        },
        mean,
        None,
        n,
    );
    // Lookahead query i sees all 5 prompt keys and i + 1 lookahead keys.
    let want_with = (0..m).map(|i| 1.0 / (n + i + 1) as f32).sum::<f32>() / m as f32;
    for j in 0..n {
        assert!((without.head(0)[j] - 0.2).abs() < 1e-6);
        assert!((with.head(0)[j] - want_with).abs() < 1e-6);
    }
}

#[test]
fn sum_and_mean_over_queries_select_the_same_entries() {
    let (n, nq, d, budget) = (48, 6, 8, 20);
    let layout = HeadLayout {
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: d,
    };
    let queries = pseudo_random(nq * 4 * d, 6);
    let keys = pseudo_random(n * 2 * d, 7);
    let pooling = Some(Pooling {
        pool: Pool::Avg,
        kernel: 5,
    });
    let policy = snapkv(nq, 5, Pool::Avg, budget);
    let select = |reduction| {
        let s = scores_for(
            layout,
            &queries,
            &keys,
            QueryRows::PromptSuffix,
            reduction,
            pooling,
            n - nq,
        );
        let prompt = policy.for_prompt(n).expect("over budget");
        prompt.select_layer(budget, 2, Some(&s)).expect("select")
    };
    assert_eq!(select(QueryReduction::Sum), select(QueryReduction::Mean));
}

#[test]
fn scoring_rejects_inconsistent_shapes() {
    let layout = HeadLayout {
        num_heads: 3,
        num_kv_heads: 2,
        head_dim: 4,
    };
    let keys = vec![0.0; 10 * 2 * 4];
    let keys = ContiguousKeys::new(&keys, 2, 4).expect("keys");
    let request = ScoringRequest {
        queries: &[0.0; 12],
        rows: QueryRows::PromptSuffix,
        scored_entries: 10,
        reduction: QueryReduction::Sum,
        pooling: None,
        dots: None,
    };
    assert!(score_prompt(layout, &request, &keys).is_err());
    assert!(ContiguousKeys::new(&[0.0; 7], 2, 4).is_err());
    let policy = snapkv(4, 3, Pool::Max, 8);
    let prompt = policy.for_prompt(20).expect("over budget");
    assert!(prompt.select_layer(8, 2, None).is_err());
}

#[test]
fn every_policy_kind_parses_back_from_its_name_and_builds_its_policy() {
    for kind in PolicyKind::ALL {
        assert_eq!(kind.name().parse::<PolicyKind>().unwrap(), kind);
        let policy = kind.with_knobs(PolicyKnobs::default());
        assert_eq!((policy.kind(), policy.name()), (kind, kind.name()));
    }
    assert_eq!(
        PolicyKind::SnapKv.with_knobs(PolicyKnobs::default()),
        Policy::snapkv()
    );
    assert!(matches!(
        "snap".parse::<PolicyKind>(),
        Err(EngineError::InvalidParameter { field: "eviction.policy", ref message })
            if message.contains("streaming_llm") && message.ends_with("`snap`")
    ));
}

#[test]
fn knobs_replace_only_the_defaults_they_name() {
    let knobs = PolicyKnobs {
        window: Some(8),
        beta: Some(3),
        ..PolicyKnobs::default()
    };
    assert_eq!(
        PolicyKind::PyramidKv.with_knobs(knobs),
        Policy::PyramidKv {
            window: 8,
            kernel: 7,
            pool: Pool::Max,
            beta: 3
        }
    );
    assert_eq!(
        PolicyKind::StreamingLlm.with_knobs(knobs),
        Policy::streaming_llm()
    );
}

#[test]
fn the_scoring_plan_says_what_the_last_chunk_holds() {
    let window = snapkv(4, 3, Pool::Max, 16)
        .for_prompt(40)
        .and_then(|prompt| prompt.scoring_plan())
        .unwrap();
    assert_eq!(
        (window.min_last_chunk_tokens(), window.extra_rows()),
        (4, 0)
    );
    assert_eq!(window.query_rows(10, 20), 26..30);
    let lookahead = EvictionPolicy {
        policy: Policy::lookahead(),
        budget: 16,
    }
    .for_prompt(40)
    .and_then(|prompt| prompt.scoring_plan())
    .unwrap();
    assert_eq!(
        (lookahead.min_last_chunk_tokens(), lookahead.extra_rows()),
        (0, 32)
    );
    assert_eq!(lookahead.query_rows(10, 20), 30..62);
}

#[test]
fn only_lookahead_needs_a_matching_module() {
    let lookahead = EvictionPolicy {
        policy: Policy::lookahead(),
        budget: 16,
    };
    assert_eq!(
        lookahead.check_lookahead_module(None),
        Err(LookaheadMismatch::NotLoaded)
    );
    assert_eq!(
        lookahead.check_lookahead_module(Some(16)),
        Err(LookaheadMismatch::TokenCount {
            loaded: 16,
            requested: 32
        })
    );
    assert_eq!(lookahead.check_lookahead_module(Some(32)), Ok(()));
    assert_eq!(
        snapkv(4, 3, Pool::Max, 16).check_lookahead_module(None),
        Ok(())
    );
}
