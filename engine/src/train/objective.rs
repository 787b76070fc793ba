//! The lookahead rows' prediction and the training loss (docs/design.md §4, paper eq. 4).
//!
//! The module's embeddings run through every layer after the prompt (positions `n..n+T`), with
//! the LoRA pairs active on them and the prompt's frozen K/V as context. Their prediction per
//! (layer, KV head) is the softmax attention of the lookahead queries to the prompt keys —
//! normalised over every key they see, their own causal ones included, exactly as inference
//! scores them — averaged over the `T` queries and the group's query heads and normalised to sum
//! 1. The loss is the mean over layers and KV heads of `KL(ground truth ‖ prediction)`.

use candle_core::Tensor;

use super::adapters::TrainableModule;
use super::frozen::{FrozenModel, LayerInput, group_mean, normalise_rows};
use super::target::AttentionTarget;
use crate::error::Result;

/// Added to a predicted probability before its logarithm, so an entry the prediction drives to 0
/// costs a large but finite loss and a finite gradient.
const LOG_FLOOR: f64 = 1e-12;

/// The lookahead rows' normalised scores, per layer `[kv_heads, prompt_len]`.
pub fn lookahead_scores(
    frozen: &FrozenModel,
    module: &TrainableModule,
    target: &AttentionTarget,
) -> Result<Vec<Tensor>> {
    let n = target.prompt_len();
    let num_layers = frozen.layers.len();
    let mut hidden = module.embeddings.as_tensor().clone();
    let mut scores = Vec::with_capacity(num_layers);
    for layer in 0..num_layers {
        let pass = frozen.layer(
            layer,
            LayerInput {
                hidden: &hidden,
                first_position: n,
                past: Some((&target.keys[layer], &target.values[layer])),
                lora: Some((&module.layers[layer], module.scale())),
                want_hidden: layer + 1 < num_layers,
            },
        )?;
        let to_prompt = pass.probs.narrow(2, 0, n)?.mean(1)?;
        debug_assert_eq!(to_prompt.dims(), [frozen.config.num_heads, n]);
        scores.push(normalise_rows(&group_mean(
            &to_prompt,
            frozen.config.num_kv_heads,
        )?)?);
        if let Some(next) = pass.hidden {
            hidden = next;
        }
    }
    Ok(scores)
}

/// Mean over layers and KV heads of `KL(ground truth ‖ lookahead prediction)` for one prompt: a
/// scalar tensor that carries gradients to the module's variables.
pub fn kl_loss(
    frozen: &FrozenModel,
    module: &TrainableModule,
    target: &AttentionTarget,
) -> Result<Tensor> {
    let predictions = lookahead_scores(frozen, module, target)?;
    let mut cross = None::<Tensor>;
    for (prediction, gt) in predictions.iter().zip(&target.ground_truth) {
        let term = (gt * (prediction + LOG_FLOOR)?.log()?)?.sum_all()?;
        cross = Some(match cross {
            Some(sum) => (sum + term)?,
            None => term,
        });
    }
    let cross = cross.expect("a model has at least one layer");
    let heads = (frozen.layers.len() * frozen.config.num_kv_heads) as f64;
    // KL = Σ gt·ln gt − Σ gt·ln pred, averaged over (layer, KV head).
    Ok(cross.affine(-1.0 / heads, target.ground_truth_neg_entropy / heads)?)
}
