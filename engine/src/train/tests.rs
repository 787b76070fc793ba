//! Training is tested where it can go wrong silently: gradients (autograd against central
//! differences in f64), agreement of the training objective's scores with the engine's inference
//! scoring (a module must be trained on the function it runs under), a short run lowering the
//! loss on the real stories260K model, and checkpoints resuming exactly.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor, Var};

use super::data::{Example, greedy_answers};
use super::objective::{kl_loss, lookahead_scores};
use super::*;
use crate::batch::LogitsRequest;
use crate::config::KvCacheDtype;
use crate::eviction::{EvictionPolicy, Policy, top_k};
use crate::lookahead::{LookaheadModule, RandomInit};
use crate::model::Model;
use crate::runner::{OfflineRunner, RunnerSequence};

fn model(relative: &str) -> Model {
    Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}

fn random_module(model: &Model, num_tokens: usize, rank: usize) -> LookaheadModule {
    LookaheadModule::random(
        &model.config,
        model.identity().unwrap(),
        RandomInit {
            seed: 3,
            num_tokens,
            rank,
            alpha: 8.0,
        },
    )
}

/// Deterministic pseudo-random tokens in `1..vocab`.
fn tokens(count: usize, salt: u32, vocab: usize) -> Vec<u32> {
    (0..count as u32)
        .map(|i| {
            1 + (i.wrapping_mul(2_654_435_761).wrapping_add(salt * 97) >> 7) % (vocab as u32 - 1)
        })
        .collect()
}

fn value(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn element(var: &Var, index: usize) -> f64 {
    var.as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[index]
}

fn set_element(var: &Var, index: usize, x: f64) {
    let mut values: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    values[index] = x;
    let t = Tensor::from_vec(values, var.dims(), var.device()).unwrap();
    var.set(&t).unwrap();
}

#[test]
fn autograd_gradients_match_central_differences() {
    let model = model("tests/fixtures/llama_gqa");
    let frozen = FrozenModel::load(&model, Precision::F64, 64).unwrap();
    let module = TrainableModule::new(&random_module(&model, 4, 2), Precision::F64, true).unwrap();
    let vocab = model.config.vocab_size;
    let target =
        AttentionTarget::compute(&frozen, &tokens(13, 1, vocab), &tokens(6, 2, vocab)).unwrap();
    let loss = kl_loss(&frozen, &module, &target).unwrap();
    let grads = loss.backward().unwrap();
    let vars = module.trainable();
    // Embeddings and both halves of every projection's pair in layer 0 (the last layer's o and
    // MLP adapters cannot affect its attention, so their gradient is legitimately zero).
    let checked: Vec<&(String, &Var)> = vars
        .iter()
        .filter(|(name, _)| name.starts_with("lookahead") || name.starts_with("layers.0."))
        .collect();
    assert_eq!(checked.len(), 1 + 14);
    let h = 1e-6;
    for (name, var) in checked {
        let grad: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            grad.iter().any(|g| g.abs() > 1e-6),
            "{name}: every gradient entry is ~0, the check would be vacuous"
        );
        for index in [0, grad.len() / 2, grad.len() - 1] {
            let x = element(var, index);
            set_element(var, index, x + h);
            let up = value(&kl_loss(&frozen, &module, &target).unwrap());
            set_element(var, index, x - h);
            let down = value(&kl_loss(&frozen, &module, &target).unwrap());
            set_element(var, index, x);
            let numeric = (up - down) / (2.0 * h);
            let err = (numeric - grad[index]).abs();
            assert!(
                err <= 1e-6 + 1e-4 * numeric.abs(),
                "{name}[{index}]: autograd {} vs central difference {numeric}",
                grad[index]
            );
        }
    }
}

#[test]
fn training_scores_select_what_the_engine_keeps() {
    // The engine's LookaheadKV eviction on a random module keeps exactly the top entries of the
    // training objective's prediction, per layer and KV head.
    let model = model("tests/fixtures/llama_gqa");
    let module = random_module(&model, 8, 4);
    let prompt = tokens(40, 5, model.config.vocab_size);
    let budget = 12;
    let mut runner = OfflineRunner::cpu(
        &model,
        4,
        64,
        KvCacheDtype::F32,
        Some(Arc::new(module.clone())),
    )
    .unwrap();
    let mut seq = RunnerSequence::default();
    let evicted = runner
        .prefill_evicting(
            &mut seq,
            &prompt,
            LogitsRequest::Last,
            EvictionPolicy {
                policy: Policy::Lookahead {
                    num_tokens: 8,
                    window: 0,
                },
                budget,
            },
        )
        .unwrap()
        .expect("the prompt is longer than the budget");

    let frozen = FrozenModel::load(&model, Precision::F32, 64).unwrap();
    let trainable = TrainableModule::new(&module, Precision::F32, true).unwrap();
    // Any answer gives the prompt K/V; only those matter for the prediction.
    let target = AttentionTarget::compute(&frozen, &prompt, &[1]).unwrap();
    let scores = lookahead_scores(&frozen, &trainable, &target).unwrap();
    for (layer, (predicted, kept)) in scores.iter().zip(&evicted.report.selections).enumerate() {
        let rows: Vec<Vec<f32>> = predicted.to_vec2().unwrap();
        for (head, row) in rows.iter().enumerate() {
            assert_eq!(
                top_k(row, budget),
                kept.kept[head],
                "layer {layer}, KV head {head}"
            );
        }
    }
}

fn stories_examples(model: &Model, count: usize) -> Vec<Example> {
    let prompts = (0..count as u32)
        .map(|i| {
            let mut p = vec![1];
            p.extend(tokens(60 + 7 * i as usize, 10 + i, model.config.vocab_size));
            p
        })
        .collect();
    greedy_answers(model, prompts, 16, || {}).unwrap()
}

fn targets(frozen: &FrozenModel, examples: &[Example]) -> Vec<AttentionTarget> {
    examples
        .iter()
        .map(|e| AttentionTarget::compute(frozen, &e.prompt, &e.answer).unwrap())
        .collect()
}

fn options() -> TrainOptions {
    TrainOptions {
        batch_size: 4,
        seed: 9,
        adam: AdamOptions {
            learning_rate: 1e-2,
            ..AdamOptions::default()
        },
    }
}

#[test]
fn a_short_run_lowers_the_validation_loss_on_stories260k() {
    let model = model("../models/stories260K");
    let examples = stories_examples(&model, 10);
    assert!(examples.iter().all(|e| !e.answer.is_empty()));
    let frozen = FrozenModel::load(&model, Precision::F32, model.config.max_model_len).unwrap();
    let module = TrainableModule::new(&random_module(&model, 8, 4), Precision::F32, true).unwrap();
    let mut trainer = Trainer::new(
        &frozen,
        module,
        targets(&frozen, &examples[..8]),
        targets(&frozen, &examples[8..]),
        options(),
    )
    .unwrap();
    let before = trainer.validation_loss().unwrap().unwrap();
    for _ in 0..25 {
        let report = trainer.step().unwrap();
        assert!(report.loss.is_finite() && report.grad_norm.is_finite());
    }
    let after = trainer.validation_loss().unwrap().unwrap();
    assert!(
        after < 0.8 * before,
        "validation loss went from {before} to {after}"
    );
}

#[test]
fn a_resumed_run_continues_exactly() {
    let model = model("tests/fixtures/llama_gqa");
    let frozen = FrozenModel::load(&model, Precision::F32, 64).unwrap();
    let vocab = model.config.vocab_size;
    let train: Vec<(Vec<u32>, Vec<u32>)> = (0..5)
        .map(|i| {
            (
                tokens(20 + i, i as u32, vocab),
                tokens(4, 50 + i as u32, vocab),
            )
        })
        .collect();
    let targets = || -> Vec<AttentionTarget> {
        train
            .iter()
            .map(|(p, a)| AttentionTarget::compute(&frozen, p, a).unwrap())
            .collect()
    };
    let start = random_module(&model, 4, 2);
    let fresh = || TrainableModule::new(&start, Precision::F32, true).unwrap();
    let options = TrainOptions {
        batch_size: 2,
        ..options()
    };

    let mut continuous = Trainer::new(&frozen, fresh(), targets(), vec![], options).unwrap();
    for _ in 0..5 {
        continuous.step().unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(&frozen, fresh(), targets(), vec![], options).unwrap();
    for _ in 0..3 {
        first.step().unwrap();
    }
    first.save_checkpoint(dir.path()).unwrap();
    let saved = LookaheadModule::load(&checkpoint_module_path(dir.path()), &model).unwrap();
    let mut resumed = Trainer::new(
        &frozen,
        TrainableModule::new(&saved, Precision::F32, true).unwrap(),
        targets(),
        vec![],
        options,
    )
    .unwrap()
    .resume(dir.path())
    .unwrap();
    assert_eq!(resumed.step_count(), 3);
    for _ in 0..2 {
        resumed.step().unwrap();
    }
    assert_eq!(
        resumed.module().unwrap(),
        continuous.module().unwrap(),
        "resuming must continue bit for bit"
    );
}

#[test]
fn an_embeddings_only_module_keeps_its_adapters_at_zero() {
    let model = model("tests/fixtures/llama_gqa");
    let frozen = FrozenModel::load(&model, Precision::F32, 64).unwrap();
    let vocab = model.config.vocab_size;
    let target =
        AttentionTarget::compute(&frozen, &tokens(20, 1, vocab), &tokens(5, 2, vocab)).unwrap();
    let module = TrainableModule::new(&random_module(&model, 4, 2), Precision::F32, false).unwrap();
    assert_eq!(module.trainable().len(), 1);
    let mut trainer = Trainer::new(&frozen, module, vec![target], vec![], options()).unwrap();
    trainer.step().unwrap();
    let trained = trainer.module().unwrap();
    for (l, layer) in trained.layers.iter().enumerate() {
        for p in crate::lookahead::Projection::ALL {
            assert!(
                layer.get(p).b.iter().all(|&b| b == 0.0),
                "layer {l} {}: B must stay zero",
                p.name()
            );
        }
    }
    assert_ne!(
        trained.embeddings,
        random_module(&model, 4, 2).embeddings,
        "the embeddings must have trained"
    );
}
