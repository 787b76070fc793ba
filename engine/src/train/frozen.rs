//! The base model as candle tensors, frozen: the weights training reads but never updates, and the
//! decoder layer written with the differentiable ops of [`super::ops`], so the same code runs the
//! gradient-free target pass and the differentiated lookahead pass.
//!
//! Weights are the model's checkpoint tensors ([`ModelWeights`], the one table of tensor names),
//! unfused (q, k, v and gate, up apart), transposed once to `[in, out]` so every projection is a
//! plain `x · Wᵀ` matmul. Only what the attention of every layer needs is kept: the embeddings and
//! decoder layers, not the final norm or the LM head.

use candle_core::{D, DType, Device, Tensor};

use super::Precision;
use super::adapters::{LayerLora, LoraVars};
use super::ops::{rms_norm, rope, silu, softmax_last_dim};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::loader::CheckpointTensor;
use crate::lookahead::Projection;
use crate::model::{LayerWeights, LinearWeights, Model, RopeTables};

/// A frozen projection `y = x · Wᵀ + b`.
pub(crate) struct FrozenLinear {
    /// `Wᵀ`, `[in, out]`.
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl FrozenLinear {
    fn new(linear: &LinearWeights, dtype: DType) -> Result<Self> {
        Ok(Self {
            weight_t: tensor(&linear.weight, dtype)?.t()?.contiguous()?,
            bias: linear.bias.as_ref().map(|b| tensor(b, dtype)).transpose()?,
        })
    }

    /// `x · Wᵀ + b`, plus `scale · (x · Aᵀ) · Bᵀ` when a LoRA pair is given.
    fn forward(&self, x: &Tensor, lora: Option<(&LoraVars, f64)>) -> Result<Tensor> {
        let mut y = x.matmul(&self.weight_t)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some((pair, scale)) = lora {
            let delta = x
                .matmul(&pair.a.as_tensor().t()?)?
                .matmul(&pair.b.as_tensor().t()?)?;
            y = (y + (delta * scale)?)?;
        }
        Ok(y)
    }
}

/// One frozen decoder layer.
pub(crate) struct FrozenLayer {
    input_norm: Tensor,
    q: FrozenLinear,
    k: FrozenLinear,
    v: FrozenLinear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: FrozenLinear,
    post_norm: Tensor,
    gate: FrozenLinear,
    up: FrozenLinear,
    down: FrozenLinear,
}

impl FrozenLayer {
    fn new(w: &LayerWeights, dtype: DType) -> Result<Self> {
        let linear = |l: &LinearWeights| FrozenLinear::new(l, dtype);
        let norm = |t: &Option<CheckpointTensor>| t.as_ref().map(|t| tensor(t, dtype)).transpose();
        Ok(Self {
            input_norm: tensor(&w.input_layernorm, dtype)?,
            q: linear(&w.q_proj)?,
            k: linear(&w.k_proj)?,
            v: linear(&w.v_proj)?,
            q_norm: norm(&w.q_norm)?,
            k_norm: norm(&w.k_norm)?,
            o: linear(&w.o_proj)?,
            post_norm: tensor(&w.post_attention_layernorm, dtype)?,
            gate: linear(&w.gate_proj)?,
            up: linear(&w.up_proj)?,
            down: linear(&w.down_proj)?,
        })
    }
}

/// A checkpoint tensor as a candle tensor of its shape in `dtype` (widened to f32 first, exactly).
fn tensor(t: &CheckpointTensor, dtype: DType) -> Result<Tensor> {
    Ok(Tensor::from_vec(t.to_f32(), t.shape(), &Device::Cpu)?.to_dtype(dtype)?)
}

/// What one layer computed for a block of rows.
pub(crate) struct LayerPass {
    /// The residual stream after the layer, `[rows, hidden]`; `None` when not asked for (the last
    /// layer's attention is all the targets and scores need).
    pub hidden: Option<Tensor>,
    /// The rows' keys (RoPE'd, `k_norm`'d) and values, `[kv_heads, rows, head_dim]`.
    pub keys: Tensor,
    pub values: Tensor,
    /// Attention probabilities of every query head, `[heads, rows, past + rows]`: columns
    /// `0..past` are the cached context, then the rows themselves (causal).
    pub probs: Tensor,
}

/// The rows a layer runs on and the context they see.
pub(crate) struct LayerInput<'a> {
    pub hidden: &'a Tensor,
    /// RoPE position of the first row; rows are consecutive.
    pub first_position: usize,
    /// Keys and values of earlier positions, `[kv_heads, past, head_dim]`, seen by every row.
    pub past: Option<(&'a Tensor, &'a Tensor)>,
    /// The adapters active on these rows (lookahead rows only) and their scale `α / r`.
    pub lora: Option<(&'a LayerLora, f64)>,
    pub want_hidden: bool,
}

/// The base model's frozen weights as candle tensors.
pub struct FrozenModel {
    pub(crate) config: ModelConfig,
    pub(crate) dtype: DType,
    pub(crate) embeddings: Tensor,
    pub(crate) layers: Vec<FrozenLayer>,
    cos: Tensor,
    sin: Tensor,
}

impl FrozenModel {
    /// Converts `model`'s checkpoint tensors to candle tensors in `precision` (F32 to train; F64
    /// for gradient checks), with RoPE tables for `max_positions` positions (prompt, answer and
    /// lookahead rows).
    ///
    /// Fails only if candle cannot build a tensor (the shapes were checked when `model` loaded).
    pub fn load(model: &Model, precision: Precision, max_positions: usize) -> Result<Self> {
        let dtype = precision.dtype();
        let c = model.config.clone();
        let weights = &model.weights;
        let layers = weights
            .layers
            .iter()
            .map(|w| FrozenLayer::new(w, dtype))
            .collect::<Result<Vec<_>>>()?;
        let embeddings = tensor(&weights.embed_tokens, dtype)?;
        let tables = RopeTables::new(&c.rope, c.head_dim, max_positions)?;
        let half = tables.half_dim;
        let cos =
            Tensor::from_vec(tables.cos, (max_positions, half), &Device::Cpu)?.to_dtype(dtype)?;
        let sin =
            Tensor::from_vec(tables.sin, (max_positions, half), &Device::Cpu)?.to_dtype(dtype)?;
        Ok(Self {
            config: c,
            dtype,
            embeddings,
            layers,
            cos,
            sin,
        })
    }

    /// Positions the RoPE tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// The embedding rows of `tokens`, `[tokens, hidden]`.
    pub(crate) fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        Ok(self.embeddings.index_select(&ids, 0)?)
    }

    /// Runs decoder layer `layer` on `input`'s rows.
    pub(crate) fn layer(&self, layer: usize, input: LayerInput<'_>) -> Result<LayerPass> {
        let c = &self.config;
        let w = &self.layers[layer];
        let lora = |p: Projection| input.lora.map(|(l, scale)| (l.get(p), scale));
        let rows = input.hidden.dim(0)?;
        let x = rms_norm(input.hidden, &w.input_norm, c.rms_norm_eps as f64)?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((rows, n, c.head_dim))?
                .transpose(0, 1)?
                .contiguous()?)
        };
        let mut q = heads(w.q.forward(&x, lora(Projection::Q))?, c.num_heads)?;
        let mut k = heads(w.k.forward(&x, lora(Projection::K))?, c.num_kv_heads)?;
        let v = heads(w.v.forward(&x, lora(Projection::V))?, c.num_kv_heads)?;
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            q = rms_norm(&q, qn, c.rms_norm_eps as f64)?;
            k = rms_norm(&k, kn, c.rms_norm_eps as f64)?;
        }
        let cos = self.cos.narrow(0, input.first_position, rows)?;
        let sin = self.sin.narrow(0, input.first_position, rows)?;
        let q = rope(&q, &cos, &sin)?;
        let k = rope(&k, &cos, &sin)?;

        let past = input.past.map_or(0, |(pk, _)| pk.dims()[1]);
        let (all_k, all_v) = match input.past {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 1)?, Tensor::cat(&[pv, &v], 1)?),
            None => (k.clone(), v.clone()),
        };
        let group = c.num_heads / c.num_kv_heads;
        let expand = |t: &Tensor| -> Result<Tensor> {
            let (kvh, n, d) = t.dims3()?;
            Ok(t.unsqueeze(1)?
                .expand((kvh, group, n, d))?
                .reshape((kvh * group, n, d))?)
        };
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let scores = (q.matmul(&expand(&all_k)?.t()?)? * scale)?;
        let mask = causal_mask(rows, past, self.dtype)?;
        let probs = softmax_last_dim(&scores.broadcast_add(&mask)?)?;

        let hidden = if input.want_hidden {
            let attn = probs
                .matmul(&expand(&all_v)?)?
                .transpose(0, 1)?
                .reshape((rows, c.num_heads * c.head_dim))?;
            let h = (input.hidden + w.o.forward(&attn, lora(Projection::O))?)?;
            let x = rms_norm(&h, &w.post_norm, c.rms_norm_eps as f64)?;
            let gate = silu(&w.gate.forward(&x, lora(Projection::Gate))?)?;
            let up = w.up.forward(&x, lora(Projection::Up))?;
            Some((h + w.down.forward(&(gate * up)?, lora(Projection::Down))?)?)
        } else {
            None
        };
        Ok(LayerPass {
            hidden,
            keys: k,
            values: v,
            probs,
        })
    }
}

/// `[rows, past + rows]`: 0 where row `i` may look (every past column, and its own rows up to
/// `i`), `−∞` elsewhere.
fn causal_mask(rows: usize, past: usize, dtype: DType) -> Result<Tensor> {
    let mask: Vec<f32> = (0..rows)
        .flat_map(|i| {
            (0..past + rows).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (rows, past + rows), &Device::Cpu)?.to_dtype(dtype)?)
}

/// Mean over each GQA group's query heads: `[heads, n]` → `[kv_heads, n]`.
pub(crate) fn group_mean(per_head: &Tensor, num_kv_heads: usize) -> Result<Tensor> {
    let (heads, n) = per_head.dims2()?;
    Ok(per_head
        .reshape((num_kv_heads, heads / num_kv_heads, n))?
        .mean(1)?)
}

/// Normalises each row of `[rows, n]` to sum 1 (the paper's L1 normalisation).
pub(crate) fn normalise_rows(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_div(&x.sum_keepdim(D::Minus1)?)?)
}
