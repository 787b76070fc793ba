//! Seeded random lookahead modules, for tests and benchmarks that need a module of the right shape
//! before one has been trained. Unlike PEFT's initialisation, `B` is not zero: a zero `B` makes
//! every LoRA delta vanish, and tests of the forward pass must be able to see the adapters act.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    BaseModelIdentity, DEFAULT_NUM_TOKENS, LayerAdapters, LookaheadModule, LoraPair, Projection,
};
use crate::config::ModelConfig;

/// How [`LookaheadModule::random`] draws a module. The defaults are the paper's sizes (32 tokens,
/// rank 8, α 32) with seed 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomInit {
    pub seed: u64,
    pub num_tokens: usize,
    pub rank: usize,
    pub alpha: f32,
}

impl Default for RandomInit {
    fn default() -> Self {
        Self {
            seed: 0,
            num_tokens: DEFAULT_NUM_TOKENS,
            rank: 8,
            alpha: 32.0,
        }
    }
}

/// Standard deviation of the embeddings: Llama's `initializer_range`, so lookahead rows start at
/// the scale of real token embeddings.
const EMBEDDING_STD: f32 = 0.02;
/// Half-width of `B`'s uniform range: small, so deltas stay perturbations, but never all zero.
const B_BOUND: f32 = 0.02;

impl LookaheadModule {
    /// A module for `config`'s model with values drawn from a ChaCha8 stream seeded by
    /// `options.seed`: the same seed, options and config give the same module bit for bit, on every
    /// platform. Values are drawn in this order, which is part of that promise: embeddings row by
    /// row, then for each layer and each projection in [`Projection::ALL`] order, `A` then `B`.
    ///
    /// - embeddings: uniform on `±0.02·√3`, i.e. mean 0 and standard deviation 0.02 like a
    ///   `N(0, 0.02)` initialisation (uniform keeps this free of a distributions dependency);
    /// - `A`: uniform on `±1/√in_features` (the bound of PEFT's Kaiming-uniform `lora_A`);
    /// - `B`: uniform on `±0.02`, deliberately non-zero so tests can see the adapters act.
    ///
    /// # Panics
    /// If `options.num_tokens` or `options.rank` is 0, or `options.alpha` is not finite: such a
    /// module could not be saved and loaded back, so asking for one is a caller bug.
    pub fn random(config: &ModelConfig, identity: BaseModelIdentity, options: RandomInit) -> Self {
        assert!(
            options.num_tokens > 0 && options.rank > 0 && options.alpha.is_finite(),
            "RandomInit needs positive num_tokens and rank and a finite alpha, got {options:?}"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let hidden_size = config.hidden_size;
        let embeddings = uniform(
            &mut rng,
            EMBEDDING_STD * 3f32.sqrt(),
            options.num_tokens * hidden_size,
        );
        let layers = (0..config.num_layers)
            .map(|_| {
                let Ok(layer) = LayerAdapters::try_build(|projection| {
                    Ok::<_, std::convert::Infallible>(random_pair(
                        &mut rng,
                        config,
                        projection,
                        options.rank,
                    ))
                });
                layer
            })
            .collect();
        Self {
            num_tokens: options.num_tokens,
            rank: options.rank,
            alpha: options.alpha,
            hidden_size,
            embeddings,
            layers,
            identity,
        }
    }
}

fn random_pair(
    rng: &mut ChaCha8Rng,
    config: &ModelConfig,
    projection: Projection,
    rank: usize,
) -> LoraPair {
    let in_features = projection.in_features(config);
    let out_features = projection.out_features(config);
    let a = uniform(rng, 1.0 / (in_features as f32).sqrt(), rank * in_features);
    let b = uniform(rng, B_BOUND, out_features * rank);
    LoraPair {
        in_features,
        out_features,
        a,
        b,
    }
}

/// `len` values uniform on `[-bound, bound)`.
fn uniform(rng: &mut ChaCha8Rng, bound: f32, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-bound..bound)).collect()
}
