//! The bundled stories260K model reproduces `golden.json` (a float64 reference of the original
//! llama2.c model): prompt logits, top-5 last-position logits and greedy continuations.

mod support;

use glimpse_engine::batch::LogitsRequest;
use glimpse_engine::model::Model;
use glimpse_engine::runner::RunnerSequence;
use serde_json::Value;
use support::*;

fn golden() -> Value {
    let path = repo_root().join("models/stories260K/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn prompt_logits_and_greedy_ids_match_golden() {
    let model = Model::load(&repo_root().join("models/stories260K")).unwrap();
    for case in golden()["generation_cases"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let expected = ids(&case["greedy_new_ids"]);
        let mut runner = scrambled_runner(&model, 16, 64, None);
        let mut seq = RunnerSequence::default();
        runner
            .step(&mut [(&mut seq, &prompt[..], LogitsRequest::All)])
            .unwrap();
        if let Some(rows) = case["logits_prompt_positions"].as_array() {
            for (pos, row) in rows.iter().enumerate() {
                let want: Vec<f32> = row
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                let diff = max_abs_diff(runner.output().row(0, pos), &want);
                assert!(
                    diff < 1e-4,
                    "{:?} position {pos}: max diff {diff}",
                    case["prompt"]
                );
            }
        }
        let last = runner.output().last_row(0).to_vec();
        for pair in case["last_position_logits_top5"].as_array().unwrap() {
            let (id, logit) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            assert!(
                (last[id] - logit).abs() < 1e-4,
                "top-5 logit of {id}: {} vs {logit}",
                last[id]
            );
        }
        let mut generated = vec![argmax(&last)];
        while generated.len() < expected.len() {
            let next = [*generated.last().unwrap()];
            runner
                .step(&mut [(&mut seq, &next[..], LogitsRequest::Last)])
                .unwrap();
            generated.push(argmax(runner.output().last_row(0)));
        }
        assert_eq!(
            generated, expected,
            "greedy continuation of {:?}",
            case["prompt"]
        );
    }
}
