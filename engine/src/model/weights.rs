//! The Llama-family weight tree in host memory. Fields keep checkpoint names; q/k/v and gate/up are
//! fused into one matrix each so the forward pass does one matmul where the checkpoint has two or
//! three (DESIGN §2: each linear layer is one GEMM over the whole varlen batch).

use crate::backend::cpu::linear::PackedMatrix;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::loader::WeightFiles;

/// A linear layer `y = x·Wᵀ + b` with `W [out_features, in_features]` as stored by HF.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `W`, packed at load into the CPU GEMM's panel layout (instead of HF's row-major one, not
    /// beside it) so the forward pass never repacks it.
    pub weight: PackedMatrix,
    pub bias: Option<Vec<f32>>,
    pub out_features: usize,
    pub in_features: usize,
}

impl Linear {
    fn load(files: &WeightFiles, name: &str, out: usize, inp: usize, bias: bool) -> Result<Self> {
        Self::fuse(files, &[(name, out)], inp, bias)
    }

    /// Stacks several checkpoint matrices with the same input width along the output axis.
    fn fuse(files: &WeightFiles, parts: &[(&str, usize)], inp: usize, bias: bool) -> Result<Self> {
        let out_features: usize = parts.iter().map(|(_, out)| out).sum();
        // Packed part by part: the row-major form of only one part is held at a time.
        let mut weight = PackedMatrix::zeros(out_features, inp);
        let mut biases = bias.then(|| Vec::with_capacity(out_features));
        let mut first_row = 0;
        for &(name, out) in parts {
            weight.set_rows(
                first_row,
                &files.load(&format!("{name}.weight"), &[out, inp])?.data,
            );
            first_row += out;
            if let Some(b) = biases.as_mut() {
                b.extend(files.load(&format!("{name}.bias"), &[out])?.data);
            }
        }
        Ok(Self {
            weight,
            bias: biases,
            out_features,
            in_features: inp,
        })
    }

    fn num_parameters(&self) -> usize {
        self.weight.rows() * self.weight.cols() + self.bias.as_ref().map_or(0, Vec::len)
    }
}

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub input_layernorm: Vec<f32>,
    /// `q_proj`, `k_proj`, `v_proj` stacked: output rows `[q | k | v]`.
    pub qkv_proj: Linear,
    /// Qwen3's per-head RMSNorm weights for queries and keys (`[head_dim]` each).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub o_proj: Linear,
    pub post_attention_layernorm: Vec<f32>,
    /// `gate_proj` and `up_proj` stacked: output rows `[gate | up]`.
    pub gate_up_proj: Linear,
    pub down_proj: Linear,
}

/// All weights of a model.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// `[vocab, hidden]`, packed like a [`Linear`] weight: with tied embeddings it is also the LM
    /// head, and one packed copy serves both — the embedding lookup reads a row back with
    /// [`PackedMatrix::copy_row`] — so the table is held once, not twice.
    pub embed_tokens: PackedMatrix,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    /// `None` when the output projection is tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
}

impl ModelWeights {
    /// Loads every tensor the configuration requires, checking each shape.
    pub fn load(c: &ModelConfig, files: &WeightFiles) -> Result<Self> {
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let vector =
            |name: &str, len: usize| -> Result<Vec<f32>> { Ok(files.load(name, &[len])?.data) };
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let attn = format!("{p}.self_attn");
            let mlp = format!("{p}.mlp");
            let qkv_parts = [
                (format!("{attn}.q_proj"), c.num_heads * d),
                (format!("{attn}.k_proj"), c.num_kv_heads * d),
                (format!("{attn}.v_proj"), c.num_kv_heads * d),
            ];
            let qkv_refs: Vec<(&str, usize)> =
                qkv_parts.iter().map(|(n, o)| (n.as_str(), *o)).collect();
            let gate_up = [
                (format!("{mlp}.gate_proj"), i),
                (format!("{mlp}.up_proj"), i),
            ];
            let gate_up_refs: Vec<(&str, usize)> =
                gate_up.iter().map(|(n, o)| (n.as_str(), *o)).collect();
            layers.push(LayerWeights {
                input_layernorm: vector(&format!("{p}.input_layernorm.weight"), h)?,
                qkv_proj: Linear::fuse(files, &qkv_refs, h, c.qkv_bias)?,
                q_norm: c
                    .qk_norm
                    .then(|| vector(&format!("{attn}.q_norm.weight"), d))
                    .transpose()?,
                k_norm: c
                    .qk_norm
                    .then(|| vector(&format!("{attn}.k_norm.weight"), d))
                    .transpose()?,
                o_proj: Linear::load(
                    files,
                    &format!("{attn}.o_proj"),
                    h,
                    c.num_heads * d,
                    c.o_bias,
                )?,
                post_attention_layernorm: vector(
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                )?,
                gate_up_proj: Linear::fuse(files, &gate_up_refs, h, c.mlp_bias)?,
                down_proj: Linear::load(files, &format!("{mlp}.down_proj"), h, i, c.mlp_bias)?,
            });
        }
        let embed_tokens = PackedMatrix::pack(
            &files
                .load("model.embed_tokens.weight", &[c.vocab_size, h])?
                .data,
            c.vocab_size,
            h,
        );
        // Some tied checkpoints still ship `lm_head.weight`; an untied one must.
        let lm_head = if c.tie_word_embeddings && !files.contains("lm_head.weight") {
            None
        } else {
            Some(Linear::load(files, "lm_head", c.vocab_size, h, false)?)
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm: vector("model.norm.weight", h)?,
            lm_head,
        })
    }

    /// Total number of scalar parameters held (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                l.input_layernorm.len()
                    + l.post_attention_layernorm.len()
                    + l.qkv_proj.num_parameters()
                    + l.o_proj.num_parameters()
                    + l.gate_up_proj.num_parameters()
                    + l.down_proj.num_parameters()
                    + l.q_norm.as_ref().map_or(0, Vec::len)
                    + l.k_norm.as_ref().map_or(0, Vec::len)
            })
            .sum();
        per_layer
            + self.embed_tokens.rows() * self.embed_tokens.cols()
            + self.norm.len()
            + self.lm_head.as_ref().map_or(0, Linear::num_parameters)
    }

    /// Bytes read from memory per decode step at f32: every parameter once.
    pub fn num_bytes_f32(&self) -> usize {
        self.num_parameters() * std::mem::size_of::<f32>()
    }
}
