//! LookaheadKV's selections with a bf16 KV pool stay close to the f32 ones: with the shipped
//! stories260K module, on prompts of its committed evaluation set, the bf16 run keeps most of the
//! entries the f32 run keeps. Not all: the scores read the prompt keys rounded to bf16, and every
//! layer's queries come from attention over rounded K/V, so entries whose scores are within that
//! rounding of each other can swap. `glimpse eval --kv-cache-dtype bf16` measures the same on the
//! whole evaluation sets (docs/quality.md "KV cache in bf16").

mod support;

use std::sync::Arc;

use glimpse_engine::batch::LogitsRequest;
use glimpse_engine::config::KvCacheDtype;
use glimpse_engine::eviction::{EvictionPolicy, Policy};
use glimpse_engine::lookahead::LookaheadModule;
use glimpse_engine::model::Model;
use glimpse_engine::runner::{OfflineRunner, RunnerSequence};
use glimpse_engine::tokenizer::Tokenizer;
use support::repo_root;

/// The kept entries of every (layer, KV head) when `prompt` is prefilled with LookaheadKV at
/// `budget` into a pool of `kv_dtype`.
fn kept_sets(
    model: &Model,
    module: &Arc<LookaheadModule>,
    prompt: &[u32],
    budget: usize,
    kv_dtype: KvCacheDtype,
) -> Vec<Vec<usize>> {
    let entries = prompt.len() + module.num_tokens + 16;
    let mut runner =
        OfflineRunner::cpu(model, 16, entries, kv_dtype, Some(Arc::clone(module))).unwrap();
    let policy = EvictionPolicy {
        policy: Policy::Lookahead {
            num_tokens: module.num_tokens,
            window: 0,
        },
        budget,
    };
    let mut seq = RunnerSequence::default();
    let evicted = runner
        .prefill_evicting(&mut seq, prompt, LogitsRequest::Last, policy)
        .unwrap()
        .expect("the prompts are longer than the budget");
    evicted
        .report
        .selections
        .into_iter()
        .flat_map(|layer| layer.kept)
        .collect()
}

#[test]
fn lookahead_keeps_nearly_the_same_entries_with_a_bf16_kv_cache() {
    let root = repo_root();
    let dir = root.join("models/stories260K");
    let model = Model::load(&dir).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let path = root.join("models/stories260K-lookahead/lookahead.safetensors");
    let module = Arc::new(LookaheadModule::load(&path, &model).unwrap());
    let prompts =
        std::fs::read_to_string(root.join("data/lookahead-eval/stories260k-eval.jsonl")).unwrap();
    let (mut kept, mut shared) = (0, 0);
    for line in prompts.lines().take(4) {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = line["prompt"].as_str().unwrap();
        let prompt = tokenizer.encode(text, true).unwrap();
        let f32_sets = kept_sets(&model, &module, &prompt, 32, KvCacheDtype::F32);
        let bf16_sets = kept_sets(&model, &module, &prompt, 32, KvCacheDtype::Bf16);
        for (want, got) in f32_sets.iter().zip(&bf16_sets) {
            kept += want.len();
            shared += want.iter().filter(|e| got.binary_search(e).is_ok()).count();
        }
    }
    let fraction = shared as f64 / kept as f64;
    eprintln!("{shared} of {kept} entries kept with an f32 KV cache are kept with bf16");
    assert!(fraction >= 0.95, "{shared} of {kept} kept entries shared");
}
