//! Parity on a second real, trained model: the long-context retrieval model (models/retrieval-byte-6l,
//! bf16 weights, byte-level vocabulary) on a 1024-token held-out needle prompt matches `transformers`
//! (scripts/fixtures/make_retrieval_reference.py) within 1e-4 at the last 16 prompt positions, and
//! greedy decoding through the paged cache gives the same 8 tokens; a held-out sample of every task
//! is answered through the engine exactly as `transformers` answers it, and the shipped lookahead
//! module keeps the needles at a 32-entry budget.

mod support;

use std::sync::Arc;

use glimpse_engine::batch::LogitsRequest;
use glimpse_engine::eviction::{EvictionPolicy, Policy};
use glimpse_engine::lookahead::LookaheadModule;
use glimpse_engine::model::Model;
use glimpse_engine::runner::{OfflineRunner, RunnerSequence};
use glimpse_engine::tokenizer::Tokenizer;
use safetensors::SafeTensors;
use support::*;

#[test]
fn retrieval_model_matches_transformers_on_a_long_needle_prompt() {
    let model = Model::load(&repo_root().join("models/retrieval-byte-6l")).unwrap();
    let bytes = std::fs::read(fixture_dir("retrieval_byte_6l_reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> Vec<u32> {
        let t = reference.tensor(name).unwrap();
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect()
    };
    let prompt = ints("prompt_ids");
    let greedy = ints("greedy_ids");
    let last_logits = reference.tensor("last_logits").unwrap();
    let vocab = last_logits.shape()[1];
    let rows: Vec<f32> = last_logits
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();

    let mut runner = scrambled_runner(&model, 16, 128, None);
    let mut seq = RunnerSequence::default();
    runner
        .step(&mut [(&mut seq, &prompt[..], LogitsRequest::All)])
        .unwrap();
    let first = prompt.len() - 16;
    for (i, want) in rows.chunks(vocab).enumerate() {
        let diff = max_abs_diff(runner.output().row(0, first + i), want);
        assert!(diff < 1e-4, "position {}: max diff {diff}", first + i);
    }
    let mut generated = vec![argmax(runner.output().last_row(0))];
    while generated.len() < greedy.len() {
        let next = [*generated.last().unwrap()];
        runner
            .step(&mut [(&mut seq, &next[..], LogitsRequest::Last)])
            .unwrap();
        generated.push(argmax(runner.output().last_row(0)));
    }
    assert_eq!(generated, greedy);
}

/// One held-out task instance with what `transformers` answered to it.
struct ScoredPrompt {
    id: String,
    task: String,
    prompt: String,
    answers: Vec<String>,
    transformers_answer: String,
}

/// The first `per_task` instances of every task in a committed evaluation file
/// (`retrieval-1024.jsonl`, `retrieval-2048.jsonl`), with the greedy answers of `transformers`
/// committed beside them (`scripts/retrieval/eval_transformers.py --match contains
/// --max-new-tokens 40`).
fn held_out_sample(file: &str, per_task: usize) -> Vec<ScoredPrompt> {
    let root = repo_root().join("data/retrieval-eval");
    let lines = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(root.join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let predictions = lines("transformers-predictions.jsonl");
    let mut taken = std::collections::BTreeMap::<String, usize>::new();
    let mut sample = Vec::new();
    for line in lines(file) {
        let task = line["task"].as_str().unwrap().to_string();
        let count = taken.entry(task.clone()).or_default();
        if *count == per_task {
            continue;
        }
        *count += 1;
        let id = line["id"].as_str().unwrap().to_string();
        let reference = predictions
            .iter()
            .find(|p| p["id"] == line["id"])
            .unwrap_or_else(|| panic!("no transformers prediction for {id}"));
        sample.push(ScoredPrompt {
            id,
            task,
            prompt: line["prompt"].as_str().unwrap().to_string(),
            answers: line["answers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect(),
            transformers_answer: reference["prediction"].as_str().unwrap().to_string(),
        });
    }
    sample
}

/// The small accuracy sample CI runs through the engine (the model is never retrained in CI;
/// `scripts/test.sh` checks its weights against `SHA256SUMS`): two held-out 1024-token instances
/// of every task, answered greedily through the paged cache (up to 40 tokens or `</s>`), give
/// exactly the text `transformers` gave, and single-needle retrieval — the model's
/// documented capability — is right.
#[test]
fn held_out_answers_through_the_engine_match_transformers() {
    let dir = repo_root().join("models/retrieval-byte-6l");
    let model = Model::load(&dir).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let eos = model.eos_token_ids();
    let sample = held_out_sample("retrieval-1024.jsonl", 2);
    assert_eq!(sample.len(), 10, "two instances of each of the five tasks");
    for instance in &sample {
        let prompt = tokenizer.encode(&instance.prompt, true).unwrap();
        let mut runner = scrambled_runner(&model, 16, (prompt.len() + 64).div_ceil(16), None);
        let mut seq = RunnerSequence::default();
        runner
            .step(&mut [(&mut seq, &prompt[..], LogitsRequest::Last)])
            .unwrap();
        let answer = greedy_answer(&mut runner, &mut seq, &eos);
        let text = tokenizer.decode(&answer, true).unwrap();
        assert_eq!(text, instance.transformers_answer, "{}", instance.id);
        let right = instance.answers.iter().all(|a| text.contains(a.as_str()));
        if instance.task == "niah_single" {
            assert!(
                right,
                "{}: {text:?} lacks {:?}",
                instance.id, instance.answers
            );
        }
    }
}

/// Greedy tokens from the logits of the last step on, up to 40 or an end-of-sequence token
/// (excluded), as `eval_transformers.py` decodes.
fn greedy_answer(runner: &mut OfflineRunner, seq: &mut RunnerSequence, eos: &[u32]) -> Vec<u32> {
    let mut answer = Vec::new();
    loop {
        let token = argmax(runner.output().last_row(0));
        if eos.contains(&token) || answer.len() == 40 {
            return answer;
        }
        answer.push(token);
        runner
            .step(&mut [(&mut *seq, &[token][..], LogitsRequest::Last)])
            .unwrap();
    }
}

/// The shipped lookahead module (`models/retrieval-byte-6l-lookahead`) through the engine's own
/// eviction: at budget 32 — 1.6 % of a 2048-token prompt per layer and KV head — the first held-out
/// single-needle and multi-value instances are still answered right, from the kept entries alone
/// (the sequence's other blocks are back in the pool). `docs/quality.md` measured 1.00 on all 20
/// of each at this budget, against SnapKV's 0.30 and 0.00.
#[test]
fn the_shipped_lookahead_module_keeps_the_needles_at_budget_32() {
    let dir = repo_root().join("models/retrieval-byte-6l");
    let model = Model::load(&dir).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let module_path = repo_root().join("models/retrieval-byte-6l-lookahead/lookahead.safetensors");
    let module = Arc::new(LookaheadModule::load(&module_path, &model).unwrap());
    let eos = model.eos_token_ids();
    let policy = EvictionPolicy {
        policy: Policy::lookahead(),
        budget: 32,
    };
    let sample: Vec<ScoredPrompt> = held_out_sample("retrieval-2048.jsonl", 1)
        .into_iter()
        .filter(|p| p.task == "niah_single" || p.task == "niah_multivalue")
        .collect();
    assert_eq!(sample.len(), 2);
    for instance in &sample {
        let prompt = tokenizer.encode(&instance.prompt, true).unwrap();
        let blocks = (prompt.len() + 64).div_ceil(16);
        let mut runner = scrambled_runner(&model, 16, blocks, Some(Arc::clone(&module)));
        let mut seq = RunnerSequence::default();
        let evicted = runner
            .prefill_evicting(&mut seq, &prompt, LogitsRequest::Last, policy)
            .unwrap()
            .expect("a 2048-token prompt is evicted at budget 32");
        assert_eq!(evicted.report.kept_entries, 32);
        assert_eq!(seq.block_table().len(), 2);
        let answer = greedy_answer(&mut runner, &mut seq, &eos);
        let text = tokenizer.decode(&answer, true).unwrap();
        assert!(
            instance.answers.iter().all(|a| text.contains(a.as_str())),
            "{}: {text:?} lacks {:?}",
            instance.id,
            instance.answers
        );
    }
}
