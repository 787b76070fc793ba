//! The Llama-family weight tree of a checkpoint: the one table of tensor names and the shapes the
//! configuration gives them. Fields keep checkpoint names and hold [`CheckpointTensor`]s in the
//! file's dtype, still memory-mapped, so the tree belongs to no device: each backend converts it
//! into its own weights type at construction (the CPU backend packs it for its GEMM), and training
//! reads the same tensors into candle.

use crate::config::{ModelConfig, WeightsDtype};
use crate::error::{EngineError, Result};
use crate::loader::{CheckpointTensor, WeightFiles};

/// A linear layer `y = x·Wᵀ + b`, `W [out_features, in_features]` as stored by HF.
#[derive(Debug, Clone)]
pub struct LinearWeights {
    pub weight: CheckpointTensor,
    /// `[out_features]`.
    pub bias: Option<CheckpointTensor>,
}

impl LinearWeights {
    /// Loads `{name}.weight` of shape `[out, inp]` and, when `bias`, `{name}.bias`.
    fn load(files: &WeightFiles, name: &str, out: usize, inp: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: files.tensor(&format!("{name}.weight"), &[out, inp])?,
            bias: bias
                .then(|| files.tensor(&format!("{name}.bias"), &[out]))
                .transpose()?,
        })
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    fn num_parameters(&self) -> usize {
        self.weight.num_elements() + self.bias.as_ref().map_or(0, |b| b.num_elements())
    }
}

/// One decoder layer, `model.layers.{l}`.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// `[hidden]`.
    pub input_layernorm: CheckpointTensor,
    /// `self_attn.q_proj`: `[heads·head_dim, hidden]`.
    pub q_proj: LinearWeights,
    /// `self_attn.k_proj`, `self_attn.v_proj`: `[kv_heads·head_dim, hidden]`.
    pub k_proj: LinearWeights,
    pub v_proj: LinearWeights,
    /// Qwen3's per-head RMSNorm weights for queries and keys (`[head_dim]` each).
    pub q_norm: Option<CheckpointTensor>,
    pub k_norm: Option<CheckpointTensor>,
    /// `self_attn.o_proj`: `[hidden, heads·head_dim]`.
    pub o_proj: LinearWeights,
    /// `[hidden]`.
    pub post_attention_layernorm: CheckpointTensor,
    /// `mlp.gate_proj`, `mlp.up_proj`: `[intermediate, hidden]`.
    pub gate_proj: LinearWeights,
    pub up_proj: LinearWeights,
    /// `mlp.down_proj`: `[hidden, intermediate]`.
    pub down_proj: LinearWeights,
}

impl LayerWeights {
    /// Loads layer `l`, checking every shape against `c`.
    fn load(c: &ModelConfig, files: &WeightFiles, l: usize) -> Result<Self> {
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q_width, kv_width) = (c.num_heads * d, c.num_kv_heads * d);
        let p = format!("model.layers.{l}");
        let attn = |n: &str| format!("{p}.self_attn.{n}");
        let mlp = |n: &str| format!("{p}.mlp.{n}");
        let norm = |name: String| c.qk_norm.then(|| files.tensor(&name, &[d])).transpose();
        Ok(Self {
            input_layernorm: files.tensor(&format!("{p}.input_layernorm.weight"), &[h])?,
            q_proj: LinearWeights::load(files, &attn("q_proj"), q_width, h, c.qkv_bias)?,
            k_proj: LinearWeights::load(files, &attn("k_proj"), kv_width, h, c.qkv_bias)?,
            v_proj: LinearWeights::load(files, &attn("v_proj"), kv_width, h, c.qkv_bias)?,
            q_norm: norm(attn("q_norm.weight"))?,
            k_norm: norm(attn("k_norm.weight"))?,
            o_proj: LinearWeights::load(files, &attn("o_proj"), h, q_width, c.o_bias)?,
            post_attention_layernorm: files
                .tensor(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            gate_proj: LinearWeights::load(files, &mlp("gate_proj"), i, h, c.mlp_bias)?,
            up_proj: LinearWeights::load(files, &mlp("up_proj"), i, h, c.mlp_bias)?,
            down_proj: LinearWeights::load(files, &mlp("down_proj"), h, i, c.mlp_bias)?,
        })
    }

    fn num_parameters(&self) -> usize {
        let linears = [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ];
        let vectors = [
            Some(&self.input_layernorm),
            Some(&self.post_attention_layernorm),
            self.q_norm.as_ref(),
            self.k_norm.as_ref(),
        ];
        linears.iter().map(|l| l.num_parameters()).sum::<usize>()
            + vectors
                .iter()
                .flatten()
                .map(|v| v.num_elements())
                .sum::<usize>()
    }
}

/// All weights of a model.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// `model.embed_tokens.weight`, `[vocab, hidden]`; also the LM head when `lm_head` is `None`.
    pub embed_tokens: CheckpointTensor,
    pub layers: Vec<LayerWeights>,
    /// `model.norm.weight`, `[hidden]`.
    pub norm: CheckpointTensor,
    /// `lm_head`, `[vocab, hidden]`; `None` when the output projection is tied to `embed_tokens`.
    pub lm_head: Option<LinearWeights>,
}

impl ModelWeights {
    /// Finds every tensor the configuration requires, checking each shape and dtype.
    ///
    /// Fails with an error naming the file and the tensor that is missing, misshapen or of a dtype
    /// Glimpse does not load.
    pub fn load(c: &ModelConfig, files: &WeightFiles) -> Result<Self> {
        check_head_widths(c, files)?;
        check_no_extra_layers(c, files)?;
        let layers = (0..c.num_layers)
            .map(|l| LayerWeights::load(c, files, l))
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens =
            files.tensor("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
        // Some tied checkpoints still ship `lm_head.weight`; an untied one must.
        let lm_head = if c.tie_word_embeddings && !files.contains("lm_head.weight") {
            None
        } else {
            Some(LinearWeights::load(
                files,
                "lm_head",
                c.vocab_size,
                c.hidden_size,
                false,
            )?)
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm: files.tensor("model.norm.weight", &[c.hidden_size])?,
            lm_head,
        })
    }

    /// Total number of scalar parameters (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        self.layers
            .iter()
            .map(LayerWeights::num_parameters)
            .sum::<usize>()
            + self.embed_tokens.num_elements()
            + self.norm.num_elements()
            + self
                .lm_head
                .as_ref()
                .map_or(0, LinearWeights::num_parameters)
    }

    /// Bytes read from memory per decode step with weights in `dtype`: every parameter once
    /// (the few f32 vectors of a bf16 or Q8_0 model counted at the matrices' rate, a rounding
    /// error).
    pub fn num_bytes(&self, dtype: WeightsDtype) -> usize {
        dtype.bytes_for(self.num_parameters())
    }
}

/// The attention widths are products of config fields (`heads × head_dim`); when layer 0's q or k
/// projection disagrees, the error names those fields, which is where the mistake usually is.
fn check_head_widths(c: &ModelConfig, files: &WeightFiles) -> Result<()> {
    let heads = [
        ("q_proj", "num_attention_heads", c.num_heads),
        ("k_proj", "num_key_value_heads", c.num_kv_heads),
    ];
    for (projection, field, num_heads) in heads {
        let tensor = format!("model.layers.0.self_attn.{projection}.weight");
        let width = num_heads * c.head_dim;
        if let Some(shape) = files.shape(&tensor)
            && shape.first() != Some(&width)
        {
            return Err(EngineError::config(
                files.description(),
                format!(
                    "tensor `{tensor}` has shape {shape:?}, but config.json's `head_dim` {} × `{field}` {num_heads} expects {:?}",
                    c.head_dim,
                    [width, c.hidden_size]
                ),
            ));
        }
    }
    Ok(())
}

/// A checkpoint with more decoder layers than `num_hidden_layers` belongs to another
/// configuration; serving its first layers only would produce garbage without an error. (Fewer
/// layers than declared is caught as the first missing tensor.)
fn check_no_extra_layers(c: &ModelConfig, files: &WeightFiles) -> Result<()> {
    let beyond = |name: &&str| {
        name.strip_prefix("model.layers.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|layer| layer.parse::<usize>().ok())
            .is_some_and(|layer| layer >= c.num_layers)
    };
    match files.names().filter(beyond).min() {
        Some(tensor) => Err(EngineError::ExtraLayer {
            path: files.description().to_path_buf(),
            tensor: tensor.to_string(),
            num_layers: c.num_layers,
        }),
        None => Ok(()),
    }
}
