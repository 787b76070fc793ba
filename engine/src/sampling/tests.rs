//! Behaviour of [`Sampler`] as a whole: parity with the reference distributions, seeded
//! determinism, sampling frequencies, filters never leaking excluded tokens, and log probabilities.

use serde::Deserialize;

use super::*;

const FIXTURE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/sampling/processors.json"
));

#[derive(Deserialize)]
struct Fixture {
    vocab_size: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    logits: Vec<f32>,
    previous_tokens: Vec<u32>,
    params: CaseParams,
    probs: Vec<f64>,
}

#[derive(Deserialize)]
struct CaseParams {
    temperature: Option<f32>,
    top_k: Option<u32>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
}

impl CaseParams {
    fn to_params(&self) -> SamplingParams {
        let d = SamplingParams::default();
        SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            seed: Some(0),
            ..d
        }
    }
}

fn seeded(params: SamplingParams, seed: u64, vocab_size: usize) -> Sampler {
    Sampler::new(
        SamplingParams {
            seed: Some(seed),
            ..params
        },
        &[],
        vocab_size,
    )
    .unwrap()
}

/// A fixed pseudo-random row (no RNG crate involved, so rows never change under the tests).
fn row(vocab_size: usize, salt: u32) -> Vec<f32> {
    (0..vocab_size as u32)
        .map(|i| {
            let h = (i ^ salt).wrapping_mul(2_654_435_761).rotate_left(13) % 10_000;
            h as f32 / 1000.0 - 5.0
        })
        .collect()
}

fn draw_many(sampler: &mut Sampler, logits: &[f32], n: usize) -> Vec<u32> {
    (0..n).map(|_| sampler.sample(logits).token_id).collect()
}

#[test]
fn distributions_match_transformers_logits_processors() {
    let fixture: Fixture = serde_json::from_str(FIXTURE).unwrap();
    assert!(fixture.cases.len() >= 10);
    let mut probs = Vec::new();
    for case in &fixture.cases {
        let params = case.params.to_params();
        let mut sampler = Sampler::new(params, &case.previous_tokens, fixture.vocab_size).unwrap();
        sampler.distribution(&case.logits, &mut probs);
        for (id, (&got, &want)) in probs.iter().zip(&case.probs).enumerate() {
            assert!(
                (got as f64 - want).abs() < 1e-6,
                "{}: token {id}: got {got}, reference {want}",
                case.name
            );
        }
    }
}

#[test]
fn same_seed_gives_the_same_tokens_and_different_seeds_differ() {
    let logits = row(1000, 1);
    let params = SamplingParams {
        temperature: 1.5,
        ..Default::default()
    };
    let a = draw_many(&mut seeded(params.clone(), 42, 1000), &logits, 64);
    let b = draw_many(&mut seeded(params.clone(), 42, 1000), &logits, 64);
    let c = draw_many(&mut seeded(params, 43, 1000), &logits, 64);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn a_samplers_draws_are_unaffected_by_other_samplers_in_the_batch() {
    let params = SamplingParams {
        temperature: 1.2,
        top_p: 0.9,
        ..Default::default()
    };
    let rows: Vec<Vec<f32>> = (0..32).map(|i| row(512, i)).collect();
    let mut alone = seeded(params.clone(), 7, 512);
    let expected: Vec<u32> = rows.iter().map(|r| alone.sample(r).token_id).collect();

    let mut batched = seeded(params.clone(), 7, 512);
    let mut neighbours: Vec<Sampler> = (0..3).map(|s| seeded(params.clone(), s, 512)).collect();
    let mut got = Vec::new();
    for (step, r) in rows.iter().enumerate() {
        for neighbour in neighbours.iter_mut().take(step % 4) {
            neighbour.sample(&row(512, 99));
        }
        got.push(batched.sample(r).token_id);
    }
    assert_eq!(got, expected);
}

#[test]
fn unseeded_samplers_draw_their_own_streams() {
    let logits = vec![0.0; 1 << 16];
    let params = SamplingParams::default();
    let a = draw_many(
        &mut Sampler::new(params.clone(), &[], logits.len()).unwrap(),
        &logits,
        8,
    );
    let b = draw_many(
        &mut Sampler::new(params, &[], logits.len()).unwrap(),
        &logits,
        8,
    );
    assert_ne!(a, b);
}

#[test]
fn greedy_applies_penalties_before_the_argmax() {
    let params = SamplingParams {
        repetition_penalty: 4.0,
        ..SamplingParams::greedy()
    };
    let mut sampler = Sampler::new(params, &[0], 3).unwrap();
    let logits = [2.0, 1.0, 0.0];
    // Token 0 is in the prompt: 2.0 / 4 = 0.5 < 1.0.
    assert_eq!(sampler.sample(&logits).token_id, 1);
    // Token 1 is now generated: 1.0 / 4 = 0.25 < 0.5.
    assert_eq!(sampler.sample(&logits).token_id, 0);
}

#[test]
fn sampling_frequencies_match_the_distribution() {
    let probs = [0.5f32, 0.3, 0.15, 0.05];
    let logits = probs.map(f32::ln);
    let mut sampler = seeded(SamplingParams::default(), 2024, 4);
    let n = 20_000;
    let mut counts = [0usize; 4];
    for token in draw_many(&mut sampler, &logits, n) {
        counts[token as usize] += 1;
    }
    for (id, &p) in probs.iter().enumerate() {
        let freq = counts[id] as f32 / n as f32;
        // Four standard deviations of a binomial proportion at p = 0.5 is 0.014.
        assert!(
            (freq - p).abs() < 0.015,
            "token {id}: frequency {freq}, probability {p}"
        );
    }
}

#[test]
fn temperature_sharpens_and_flattens_as_expected() {
    let logits = [1.0f32, 0.0];
    let mut probs = Vec::new();
    for (temperature, expected) in [(0.5f32, 2.0f32), (1.0, 1.0), (2.0, 0.5)] {
        let mut s = seeded(
            SamplingParams {
                temperature,
                ..Default::default()
            },
            0,
            2,
        );
        s.distribution(&logits, &mut probs);
        let want = 1.0 / (1.0 + (-expected).exp());
        assert!((probs[0] - want).abs() < 1e-6, "T = {temperature}");
    }
}

#[test]
fn top_k_never_returns_a_token_outside_the_top_k() {
    let logits = row(2000, 11);
    let mut ranked: Vec<u32> = (0..2000).collect();
    ranked.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    let allowed = &ranked[..10];
    let params = SamplingParams {
        top_k: 10,
        temperature: 5.0,
        ..Default::default()
    };
    let mut sampler = seeded(params, 3, 2000);
    let drawn = draw_many(&mut sampler, &logits, 2000);
    assert!(drawn.iter().all(|t| allowed.contains(t)));
    // A hot temperature spreads draws over all ten.
    assert!(allowed.iter().all(|t| drawn.contains(t)));
}

#[test]
fn top_p_and_min_p_never_return_excluded_tokens() {
    let logits = row(3000, 5);
    for params in [
        SamplingParams {
            top_p: 0.3,
            ..Default::default()
        },
        SamplingParams {
            min_p: 0.2,
            ..Default::default()
        },
        SamplingParams {
            top_p: 0.8,
            min_p: 0.05,
            top_k: 50,
            temperature: 0.7,
            ..Default::default()
        },
    ] {
        let mut sampler = seeded(params.clone(), 17, 3000);
        let mut probs = Vec::new();
        sampler.distribution(&logits, &mut probs);
        let kept = probs.iter().filter(|&&p| p > 0.0).count();
        assert!(kept > 1 && kept < 3000, "{params:?} kept {kept}");
        for token in draw_many(&mut sampler, &logits, 3000) {
            assert!(
                probs[token as usize] > 0.0,
                "{params:?} drew excluded token {token}"
            );
        }
    }
}

#[test]
fn logprobs_are_of_the_raw_distribution_and_sorted() {
    let logits = row(300, 8);
    let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let params = SamplingParams {
        temperature: 0.3,
        repetition_penalty: 1.5,
        top_k: 5,
        logprobs: Some(20),
        ..Default::default()
    };
    let mut sampler = Sampler::new(
        SamplingParams {
            seed: Some(1),
            ..params
        },
        &[1, 2, 3],
        300,
    )
    .unwrap();
    for _ in 0..10 {
        let out = sampler.sample(&logits);
        let want = logits[out.token_id as usize] as f64 - lse;
        assert!((out.logprob.unwrap() as f64 - want).abs() < 1e-5);
        assert_eq!(out.top_logprobs.len(), 20);
        assert!(
            out.top_logprobs
                .windows(2)
                .all(|w| w[0].logprob >= w[1].logprob)
        );
        for t in &out.top_logprobs {
            assert!((t.logprob as f64 - (logits[t.token_id as usize] as f64 - lse)).abs() < 1e-5);
        }
        assert!((out.top_logprobs[0].logprob as f64 - (max - lse)).abs() < 1e-5);
    }
    let chosen_only = SamplingParams {
        logprobs: Some(0),
        ..Default::default()
    };
    let out = seeded(chosen_only, 1, 300).sample(&logits);
    assert!(out.logprob.is_some() && out.top_logprobs.is_empty());
    let out = seeded(SamplingParams::default(), 1, 300).sample(&logits);
    assert!(out.logprob.is_none() && out.top_logprobs.is_empty());
}

#[test]
fn construction_rejects_bad_parameters_and_prompt_ids() {
    let bad = SamplingParams {
        top_p: 0.0,
        ..Default::default()
    };
    assert!(matches!(
        Sampler::new(bad, &[], 10),
        Err(crate::EngineError::InvalidParameter { field: "top_p", .. })
    ));
    assert!(matches!(
        Sampler::new(SamplingParams::default(), &[3, 10], 10),
        Err(crate::EngineError::InvalidParameter {
            field: "prompt_token_ids",
            ..
        })
    ));
    assert!(matches!(
        Sampler::new(SamplingParams::default(), &[], 0),
        Err(crate::EngineError::InvalidParameter {
            field: "vocab_size",
            ..
        })
    ));
}

#[test]
fn a_large_vocabulary_with_every_filter_samples_valid_tokens() {
    let vocab = 152_064;
    let logits = row(vocab, 21);
    let params = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        min_p: 0.01,
        presence_penalty: 0.5,
        frequency_penalty: 0.5,
        logprobs: Some(5),
        ..Default::default()
    };
    let mut sampler = seeded(params, 9, vocab);
    for _ in 0..4 {
        let out = sampler.sample(&logits);
        assert!((out.token_id as usize) < vocab);
        let logprob = out.logprob.unwrap();
        assert!(logprob.is_finite() && logprob <= 0.0);
    }
}

#[test]
#[should_panic(expected = "one entry per vocabulary token")]
fn a_row_of_the_wrong_length_is_a_caller_bug() {
    seeded(SamplingParams::default(), 0, 4).sample(&[0.0; 3]);
}

fn arbitrary_params() -> impl proptest::strategy::Strategy<Value = SamplingParams> {
    use proptest::prelude::*;
    (
        prop_oneof![Just(0.0f32), Just(1e-6), Just(2e-5), 0.05f32..3.0],
        prop_oneof![Just(0u32), 1u32..40],
        prop_oneof![Just(1.0f32), 0.01f32..1.0],
        prop_oneof![Just(0.0f32), 0.0f32..1.0],
        prop_oneof![Just(1.0f32), 0.5f32..2.0],
        -2.0f32..2.0,
        -2.0f32..2.0,
        any::<u64>(),
    )
        .prop_map(
            |(temperature, top_k, top_p, min_p, rep, presence, frequency, seed)| SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                repetition_penalty: rep,
                presence_penalty: presence,
                frequency_penalty: frequency,
                seed: Some(seed),
                logprobs: Some(3),
            },
        )
}

proptest::proptest! {
    #[test]
    fn every_drawn_token_lies_in_the_reported_distribution(
        params in arbitrary_params(),
        logits in proptest::collection::vec(-20.0f32..20.0, 2..64),
        prompt_len in 0usize..8,
    ) {
        let vocab = logits.len();
        let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| i * 7 % vocab as u32).collect();
        let mut sampler = Sampler::new(params.clone(), &prompt, vocab).unwrap();
        let mut probs = Vec::new();
        for _ in 0..4 {
            sampler.distribution(&logits, &mut probs);
            let sum: f32 = probs.iter().sum();
            proptest::prop_assert!((sum - 1.0).abs() < 1e-5, "probabilities sum to {}", sum);
            proptest::prop_assert!(probs.iter().all(|&p| (0.0..=1.0).contains(&p)));
            let out = sampler.sample(&logits);
            proptest::prop_assert!(probs[out.token_id as usize] > 0.0);
            proptest::prop_assert!(out.logprob.unwrap() <= 1e-6);
        }
        let mut twin = Sampler::new(params, &prompt, vocab).unwrap();
        let mut first = Sampler::new(twin.params().clone(), &prompt, vocab).unwrap();
        for _ in 0..4 {
            proptest::prop_assert_eq!(twin.sample(&logits), first.sample(&logits));
        }
    }
}
