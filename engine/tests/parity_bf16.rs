//! Parity of `--dtype bf16` with Hugging Face `transformers` on the fixtures that carry
//! `reference_bf16.*` (scripts/fixtures/make_parity_fixtures.py):
//!
//! - against transformers run in float32 on the same bf16-rounded matrices — what the engine
//!   computes with bf16 weights and f32 activations — within the f32 parity tolerance 1e-4, with
//!   the same argmax at each of the 16 decode steps;
//! - against transformers run in bfloat16 (weights and activations) within the fixture's
//!   `bf16_atol`: 1.5 × the measured max |logit| difference between those two transformers runs
//!   (+ 1e-4), the generator's rule. The bf16 run rounds every activation, so its own greedy ids
//!   may part from the f32-activation ones where two logits are within its rounding; the decode
//!   steps feed its ids (teacher forcing) so both comparisons see the same prefixes.
//!
//! A bf16 checkpoint run in bf16 (the `auto` dtype) gives exactly the bits it gives widened to
//! f32: the GEMM widens bf16 exactly and accumulates in the f32 kernel's order.

mod support;

use std::path::Path;

use glimpse_engine::batch::LogitsRequest;
use glimpse_engine::config::{DtypeChoice, WeightsDtype};
use glimpse_engine::model::Model;
use support::*;

const F32_TOLERANCE: f32 = 1e-4;
const BF16_FIXTURES: [&str; 4] = [
    "llama_gqa",
    "llama3_rope_tied",
    "qwen3_qknorm",
    "llama_bf16",
];

/// The fixture's bf16 tolerance, from `reference_bf16.json`.
fn bf16_atol(dir: &Path) -> f32 {
    let text = std::fs::read_to_string(dir.join("reference_bf16.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["bf16_atol"].as_f64().unwrap() as f32
}

#[test]
fn bf16_weights_match_transformers_in_f32_on_bf16_matrices_and_in_bf16_within_tolerance() {
    for name in BF16_FIXTURES {
        let dir = fixture_dir(name);
        let model = Model::load_as(&dir, DtypeChoice::Bf16).unwrap();
        assert_eq!(model.dtype, WeightsDtype::Bf16);
        let path = dir.join("reference_bf16.safetensors");
        let bf16_refs = load_references_from(&path, "");
        let f32_refs = load_references_from(&path, "f32_");
        let atol = bf16_atol(&dir);
        for bs in [1, 16] {
            for (i, (bf16, f32)) in bf16_refs.iter().zip(&f32_refs).enumerate() {
                let label = format!("{name} bs={bs} prompt {i}");
                // A logits row against both references: the f32 run within the f32 tolerance, the
                // bf16 run within the fixture's.
                let check = |row: &[f32], f32_want: &[f32], bf16_want: &[f32], at: &str| {
                    let diff = max_abs_diff(row, f32_want);
                    assert!(diff < F32_TOLERANCE, "{label}: {at}: f32 diff {diff}");
                    let diff = max_abs_diff(row, bf16_want);
                    assert!(diff < atol, "{label}: {at}: bf16 diff {diff} ≥ {atol}");
                };
                let (mut runner, mut seq) = prefilled_runner(&model, bs, 128, &bf16.prompt);
                for pos in 0..bf16.prompt.len() {
                    let row = runner.output().row(0, pos);
                    let (f32_want, bf16_want) =
                        (&f32.prefill_logits[pos], &bf16.prefill_logits[pos]);
                    check(row, f32_want, bf16_want, &format!("prefill {pos}"));
                }
                for step in 0..bf16.greedy_ids.len() {
                    if step > 0 {
                        let fed = [bf16.greedy_ids[step - 1]];
                        runner
                            .step(&mut [(&mut seq, &fed[..], LogitsRequest::Last)])
                            .unwrap();
                    }
                    let row = runner.output().last_row(0);
                    let (f32_want, bf16_want) =
                        (&f32.decode_logits[step], &bf16.decode_logits[step]);
                    check(row, f32_want, bf16_want, &format!("step {step}"));
                    assert_eq!(argmax(row), f32.greedy_ids[step], "{label}: step {step}");
                }
            }
        }
    }
}

#[test]
fn a_bf16_checkpoint_runs_in_bf16_by_default_with_the_bits_of_f32() {
    let dir = fixture_dir("llama_bf16");
    let auto = Model::load(&dir).unwrap();
    assert_eq!(auto.dtype, WeightsDtype::Bf16);
    let f32 = Model::load_as(&dir, DtypeChoice::F32).unwrap();
    assert_eq!(f32.dtype, WeightsDtype::F32);
    let prompt = &load_references(&dir)[2].prompt;
    let logits = |model: &Model| {
        let (runner, _) = prefilled_runner(model, 16, 16, prompt);
        (0..prompt.len())
            .flat_map(|pos| runner.output().row(0, pos).to_vec())
            .map(f32::to_bits)
            .collect::<Vec<_>>()
    };
    assert_eq!(logits(&auto), logits(&f32));
}

#[test]
fn an_f32_checkpoint_runs_in_f32_by_default() {
    let model = Model::load(&fixture_dir("llama_gqa")).unwrap();
    assert_eq!(model.dtype, WeightsDtype::F32);
}
