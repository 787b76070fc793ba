//! Eviction selections against kvpress 0.5.5 (and the fixture script's numpy reference where
//! kvpress cannot be configured to coincide), on the committed fixtures of
//! `tests/data/eviction/` (`scripts/fixtures/make_kvpress_fixtures.py`; knobs and tie-breaking
//! in that folder's README).
//!
//! Two levels, same cases:
//! - **Selection**: the scoring and selection functions fed kvpress's own queries and keys
//!   (recorded by the script) keep exactly kvpress's entries, lookahead cases included.
//! - **Engine**: the fixture's seeded prompt runs through the CPU forward pass with each case's
//!   policy, so the queries are the engine's own and the keys are read from its paged blocks;
//!   the kept positions it reports must be kvpress's, for every layer and KV head. Lookahead
//!   cases score with synthetic queries no model produces and are checked at the first level.

mod support;

use glimpse_engine::batch::LogitsRequest;
use glimpse_engine::eviction::{
    ContiguousKeys, EvictionPolicy, HeadLayout, Policy, Pool, QueryRows, ScoringQueries,
    ScoringRequest, score_prompt,
};
use glimpse_engine::model::Model;
use glimpse_engine::runner::RunnerSequence;
use serde_json::Value;
use support::{fixture_dir, scrambled_runner};

const MODELS: [&str; 3] = ["llama_gqa", "qwen3_qknorm", "llama3_rope_tied"];
const BLOCK_SIZES: [usize; 3] = [1, 4, 16];

#[test]
fn selections_on_kvpress_queries_and_keys_match_kvpress() {
    for model in MODELS {
        let fixture = Fixture::load(model);
        for case in fixture.cases() {
            check_selection(&fixture, case);
        }
        let checked = fixture.cases().len();
        assert!(checked >= 20, "{model}: only {checked} cases");
    }
}

#[test]
fn engine_selections_match_kvpress() {
    for model in MODELS {
        let fixture = Fixture::load(model);
        let model = Model::load(&fixture_dir(model)).unwrap();
        let c = &model.config;
        assert_eq!(
            ["num_layers", "num_heads", "num_kv_heads", "head_dim"].map(|k| fixture.usize(k)),
            [c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim],
            "{}: fixture and model shapes differ",
            fixture.name
        );
        let mut checked = 0;
        for (index, case) in fixture.cases().iter().enumerate() {
            if case["policy"] == "lookahead" {
                continue; // synthetic queries: checked by the selection-level test
            }
            check_engine(
                &fixture,
                &model,
                case,
                BLOCK_SIZES[index % BLOCK_SIZES.len()],
            );
            checked += 1;
        }
        assert!(checked >= 15, "{}: only {checked} cases", fixture.name);
    }
}

struct Fixture {
    name: &'static str,
    doc: Value,
    tensors: Vec<u8>,
}

impl Fixture {
    fn load(name: &'static str) -> Fixture {
        let dir = format!("{}/tests/data/eviction", env!("CARGO_MANIFEST_DIR"));
        let json = std::fs::read_to_string(format!("{dir}/kvpress_{name}.json")).unwrap();
        Fixture {
            name,
            doc: serde_json::from_str(&json).unwrap(),
            tensors: std::fs::read(format!("{dir}/kvpress_{name}.safetensors")).unwrap(),
        }
    }

    fn tensor(&self, name: &str) -> Vec<f32> {
        let st = safetensors::SafeTensors::deserialize(&self.tensors).unwrap();
        let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    fn usize(&self, key: &str) -> usize {
        as_usize(&self.doc[key])
    }

    fn cases(&self) -> &Vec<Value> {
        as_array(&self.doc["cases"])
    }

    fn prompt(&self) -> Vec<u32> {
        as_array(&self.doc["prompt_ids"])
            .iter()
            .map(|id| as_usize(id) as u32)
            .collect()
    }

    fn layout(&self) -> HeadLayout {
        HeadLayout {
            num_heads: self.usize("num_heads"),
            num_kv_heads: self.usize("num_kv_heads"),
            head_dim: self.usize("head_dim"),
        }
    }
}

/// Selection level: scores from the fixture's queries and keys, then the policy's selection.
fn check_selection(fixture: &Fixture, case: &Value) {
    let policy = case_policy(case);
    policy.validate().unwrap();
    let n = fixture.usize("prompt_len");
    let prompt = policy
        .for_prompt(n)
        .expect("the fixture prompt exceeds the budget");
    let budgets = prompt.layer_budgets(fixture.usize("num_layers"));
    check_layer_budgets(case, &budgets, &label(fixture, case));
    for (layer, &budget) in budgets.iter().enumerate() {
        let scores = prompt.scoring_plan().map(|plan| {
            let keys = fixture.tensor(&format!("layers.{layer}.keys"));
            let extra = fixture.tensor(&format!("layers.{layer}.lookahead_keys"));
            let (queries, rows) = match plan.queries {
                ScoringQueries::PromptWindow { .. } => (
                    fixture.tensor(&format!("layers.{layer}.window_queries")),
                    QueryRows::PromptSuffix,
                ),
                ScoringQueries::Lookahead { .. } => (
                    fixture.tensor(&format!("layers.{layer}.lookahead_queries")),
                    QueryRows::AfterPrompt {
                        extra_keys: (case["with_lookahead_keys"] == true)
                            .then_some(extra.as_slice()),
                    },
                ),
            };
            let layout = fixture.layout();
            let keys = ContiguousKeys::new(&keys, layout.num_kv_heads, layout.head_dim).unwrap();
            let request = ScoringRequest {
                queries: &queries,
                rows,
                scored_entries: plan.scored_entries,
                reduction: plan.reduction,
                pooling: plan.pooling,
                dots: None,
            };
            score_prompt(layout, &request, &keys).unwrap()
        });
        let got = prompt
            .select_layer(budget, fixture.usize("num_kv_heads"), scores.as_ref())
            .unwrap();
        assert_eq!(
            got.kept,
            kept(case, layer),
            "{} layer {layer}",
            label(fixture, case)
        );
    }
}

/// Engine level: the fixture prompt through the forward pass with the case's policy.
fn check_engine(fixture: &Fixture, model: &Model, case: &Value, block_size: usize) {
    let label = format!("{} bs={block_size}", label(fixture, case));
    let prompt = fixture.prompt();
    assert_eq!(prompt.len(), fixture.usize("prompt_len"));
    let mut runner = scrambled_runner(model, block_size, prompt.len().div_ceil(block_size), None);
    let mut seq = RunnerSequence::default();
    let evicted = runner
        .prefill_evicting(&mut seq, &prompt, LogitsRequest::Last, case_policy(case))
        .unwrap()
        .unwrap_or_else(|| panic!("{label}: not evicted"));
    let selections = &evicted.report.selections;
    assert_eq!(selections.len(), fixture.usize("num_layers"), "{label}");
    for (layer, selection) in selections.iter().enumerate() {
        assert_eq!(selection.kept, kept(case, layer), "{label}: layer {layer}");
    }
    check_layer_budgets(case, &evicted.report.layer_kept, &label);
}

/// The engine policy of a fixture case (knob mapping in the fixtures' README).
fn case_policy(case: &Value) -> EvictionPolicy {
    let pool = || match case["pool"].as_str() {
        Some("max") => Pool::Max,
        Some("avg") => Pool::Avg,
        other => panic!("pool {other:?}"),
    };
    let policy = match case["policy"].as_str().expect("policy") {
        "snapkv" => Policy::SnapKv {
            window: as_usize(&case["window"]),
            kernel: as_usize(&case["kernel"]),
            pool: pool(),
        },
        "pyramidkv" => Policy::PyramidKv {
            window: as_usize(&case["window"]),
            kernel: as_usize(&case["kernel"]),
            pool: pool(),
            beta: as_usize(&case["beta"]),
        },
        "streaming_llm" => Policy::StreamingLlm {
            sinks: as_usize(&case["sinks"]),
        },
        "lookahead" => Policy::Lookahead {
            num_tokens: as_usize(&case["num_tokens"]),
            window: 0,
        },
        other => panic!("unknown fixture policy {other}"),
    };
    EvictionPolicy {
        policy,
        budget: as_usize(&case["budget"]),
    }
}

/// The fixture's kept positions of `layer`, per KV head.
fn kept(case: &Value, layer: usize) -> Vec<Vec<usize>> {
    as_array(&as_array(&case["kept"])[layer])
        .iter()
        .map(|head| as_array(head).iter().map(as_usize).collect())
        .collect()
}

/// PyramidKV cases record kvpress's per-layer budgets.
fn check_layer_budgets(case: &Value, budgets: &[usize], label: &str) {
    if let Some(want) = case["layer_budgets"].as_array() {
        let want: Vec<usize> = want.iter().map(as_usize).collect();
        assert_eq!(budgets, want, "{label}: layer budgets");
    }
}

/// A case's model and settings, without its kept indices.
fn label(fixture: &Fixture, case: &Value) -> String {
    let mut settings = case.as_object().expect("case").clone();
    settings.remove("kept");
    format!("{} {}", fixture.name, Value::Object(settings))
}

fn as_usize(value: &Value) -> usize {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not an integer: {value}")) as usize
}

fn as_array(value: &Value) -> &Vec<Value> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
}
