//! The training target of one prompt (DESIGN §4): the attention its answer pays to the prompt.
//!
//! One gradient-free pass of the frozen model over `prompt ++ answer` gives, per layer, the
//! prompt's keys and values (what the lookahead rows will attend to — identical to a prompt-only
//! pass, attention being causal) and the ground-truth importance per KV head: the mean over the
//! answer's queries and the group's query heads of their softmax attention to each prompt key,
//! normalised to sum 1.

use candle_core::{DType, Tensor};

use super::frozen::{FrozenModel, LayerInput, group_mean, normalise_rows};
use crate::error::{EngineError, Result};

/// What the lookahead rows of one prompt are trained to predict, and the context they see.
pub struct AttentionTarget {
    prompt_len: usize,
    /// Per layer, the prompt's keys and values, `[kv_heads, prompt_len, head_dim]`.
    pub(crate) keys: Vec<Tensor>,
    pub(crate) values: Vec<Tensor>,
    /// Per layer, ground-truth importance `[kv_heads, prompt_len]`, each row summing to 1.
    pub(crate) ground_truth: Vec<Tensor>,
    /// `Σ gt · ln gt` over every layer, head and entry (`0 · ln 0 = 0`): the constant half of the
    /// KL divergence.
    pub(crate) ground_truth_neg_entropy: f64,
}

impl AttentionTarget {
    /// Runs `prompt ++ answer` through `frozen` and keeps the prompt's K/V and the answer's
    /// attention to it.
    ///
    /// Fails with [`EngineError::InvalidParameter`] for an empty prompt or answer or one longer
    /// than the RoPE tables, and with candle's errors.
    pub fn compute(frozen: &FrozenModel, prompt: &[u32], answer: &[u32]) -> Result<Self> {
        let (n, m) = (prompt.len(), answer.len());
        if n == 0 || m == 0 || n + m > frozen.max_positions() {
            return Err(EngineError::InvalidParameter {
                field: "training example",
                message: format!(
                    "prompt ({n} tokens) and answer ({m} tokens) must be non-empty and fit in {} positions",
                    frozen.max_positions()
                ),
            });
        }
        let tokens: Vec<u32> = prompt.iter().chain(answer).copied().collect();
        let mut hidden = frozen.embed(&tokens)?;
        let num_layers = frozen.layers.len();
        let mut target = Self {
            prompt_len: n,
            keys: Vec::with_capacity(num_layers),
            values: Vec::with_capacity(num_layers),
            ground_truth: Vec::with_capacity(num_layers),
            ground_truth_neg_entropy: 0.0,
        };
        for layer in 0..num_layers {
            let pass = frozen.layer(
                layer,
                LayerInput {
                    hidden: &hidden,
                    first_position: 0,
                    past: None,
                    lora: None,
                    want_hidden: layer + 1 < num_layers,
                },
            )?;
            // Answer rows (n..n+m) over prompt columns (0..n), mean over the answer's queries.
            let answer_to_prompt = pass.probs.narrow(1, n, m)?.narrow(2, 0, n)?.mean(1)?;
            let gt = normalise_rows(&group_mean(&answer_to_prompt, frozen.config.num_kv_heads)?)?;
            target.ground_truth_neg_entropy += neg_entropy(&gt)?;
            target.ground_truth.push(gt);
            target.keys.push(pass.keys.narrow(1, 0, n)?.contiguous()?);
            target
                .values
                .push(pass.values.narrow(1, 0, n)?.contiguous()?);
            if let Some(next) = pass.hidden {
                hidden = next;
            }
        }
        Ok(target)
    }

    /// Prompt tokens.
    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// Ground-truth importance as plain numbers: `[layer][kv_head][entry]`, each row summing to 1.
    pub fn ground_truth(&self) -> Result<Vec<Vec<Vec<f32>>>> {
        self.ground_truth
            .iter()
            .map(|gt| Ok(gt.to_dtype(DType::F32)?.to_vec2()?))
            .collect()
    }
}

/// `Σ p · ln p` over every entry of `p`, with `0 · ln 0 = 0`.
fn neg_entropy(p: &Tensor) -> Result<f64> {
    let values: Vec<f64> = p.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    Ok(values
        .iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| x * x.ln())
        .sum())
}
