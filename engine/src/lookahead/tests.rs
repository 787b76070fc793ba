//! Random modules are reproducible and shaped like the model they are made for.

use std::path::Path;

use super::*;
use crate::model::Model;

fn model(relative: &str) -> Model {
    Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}

fn stories() -> Model {
    model("../models/stories260K")
}

fn random_for(model: &Model, options: RandomInit) -> LookaheadModule {
    LookaheadModule::random(&model.config, model.identity().unwrap(), options)
}

/// Every value of the module as raw bits, with the tensor it belongs to, so a comparison fails on
/// the first differing bit and says where.
fn bits(module: &LookaheadModule) -> Vec<(String, Vec<u32>)> {
    let to_bits = |values: &[f32]| values.iter().map(|x| x.to_bits()).collect();
    let mut all = vec![("embeddings".to_string(), to_bits(&module.embeddings))];
    for (l, layer) in module.layers.iter().enumerate() {
        for projection in Projection::ALL {
            let pair = layer.get(projection);
            all.push((format!("{l}.{}.a", projection.name()), to_bits(&pair.a)));
            all.push((format!("{l}.{}.b", projection.name()), to_bits(&pair.b)));
        }
    }
    all
}

fn assert_bit_identical(left: &LookaheadModule, right: &LookaheadModule) {
    assert_eq!(
        (
            left.num_tokens,
            left.rank,
            left.alpha.to_bits(),
            left.hidden_size
        ),
        (
            right.num_tokens,
            right.rank,
            right.alpha.to_bits(),
            right.hidden_size
        )
    );
    assert_eq!(left.identity, right.identity);
    for ((name, l), (_, r)) in bits(left).iter().zip(&bits(right)) {
        assert!(l == r, "tensor {name} differs");
    }
    assert_eq!(left, right);
}

#[test]
fn random_is_deterministic_per_seed() {
    let model = stories();
    let seeded = |seed| {
        random_for(
            &model,
            RandomInit {
                seed,
                ..RandomInit::default()
            },
        )
    };
    assert_bit_identical(&seeded(7), &seeded(7));
    assert_ne!(seeded(7).embeddings, seeded(8).embeddings);
    assert_ne!(seeded(7).layers[3].gate.b, seeded(8).layers[3].gate.b);
}

#[test]
fn random_module_has_the_model_shapes_and_a_nonzero_b() {
    let model = stories();
    let module = random_for(&model, RandomInit::default());
    assert_eq!(
        (module.num_tokens, module.rank, module.alpha),
        (32, 8, 32.0)
    );
    assert_eq!(module.scale(), 4.0);
    assert_eq!(module.embeddings.len(), 32 * 64);
    assert_eq!(module.layers.len(), 5);
    // stories260K: hidden 64, 8 query heads and 4 KV heads of 8, intermediate 172.
    let expected = [
        (Projection::Q, 64, 64),
        (Projection::K, 64, 32),
        (Projection::V, 64, 32),
        (Projection::O, 64, 64),
        (Projection::Gate, 64, 172),
        (Projection::Up, 64, 172),
        (Projection::Down, 172, 64),
    ];
    for layer in &module.layers {
        for (projection, inp, out) in expected {
            let pair = layer.get(projection);
            assert_eq!((pair.in_features, pair.out_features), (inp, out));
            assert_eq!((pair.a.len(), pair.b.len()), (8 * inp, out * 8));
            let bound = 1.0 / (inp as f32).sqrt();
            assert!(pair.a.iter().all(|x| x.abs() <= bound));
            assert!(pair.b.iter().all(|x| x.abs() <= 0.02));
            assert!(pair.b.iter().any(|&x| x != 0.0), "B must not be zero");
        }
    }
    let std = (module.embeddings.iter().map(|x| x * x).sum::<f32>() / (32.0 * 64.0)).sqrt();
    assert!((0.015..0.025).contains(&std), "embedding std {std}");
}
