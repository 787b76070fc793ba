//! The CPU backend's weights: the matrices of a [`ModelWeights`] packed into the GEMM's panel
//! layout once, when the backend is built, in the model's [`WeightsDtype`] (f32, bf16 at half
//! the bytes, or Q8_0 blocks at 34 bytes per 32 values), so the forward pass never repacks; norm
//! weights and biases are widened to f32. q/k/v and gate/up are fused into one matrix each so the
//! pass does one matmul where the checkpoint has two or three (docs/design.md §2: each linear layer
//! is one GEMM over the whole varlen batch). Fields keep checkpoint names, fused ones the names
//! joined.

use super::linear::PackedMatrix;
use crate::config::WeightsDtype;
use crate::loader::CheckpointTensor;
use crate::model::{LayerWeights, LinearWeights, ModelWeights};

/// Rows of a checkpoint matrix widened to f32 at a time while packing: the staging buffer stays
/// a few MiB whatever the matrix (a large vocabulary's embedding table is gigabytes in f32).
const PACK_CHUNK_ROWS: usize = 1024;

/// Packs checkpoint matrix `tensor` into rows `first..` of `weight`, a chunk of rows at a time.
fn pack_rows(weight: &mut PackedMatrix, first: usize, tensor: &CheckpointTensor) {
    let rows = tensor.shape()[0];
    let mut staging = Vec::new();
    for start in (0..rows).step_by(PACK_CHUNK_ROWS) {
        let end = (start + PACK_CHUNK_ROWS).min(rows);
        tensor.rows_to_f32(start..end, &mut staging);
        weight.set_rows(first + start, &staging);
    }
}

/// A linear layer `y = x·Wᵀ + b` with `W [out_features, in_features]`.
pub struct Linear {
    /// `W`, packed instead of row-major, not beside it.
    pub weight: PackedMatrix,
    pub bias: Option<Vec<f32>>,
    pub out_features: usize,
}

impl Linear {
    /// Stacks the checkpoint matrices `parts` (same input width) along the output axis in
    /// `dtype`, packing a chunk of rows at a time so no matrix is held whole in both layouts.
    fn stack(parts: &[&LinearWeights], dtype: WeightsDtype) -> Self {
        let out_features = parts.iter().map(|p| p.out_features()).sum();
        let mut weight = PackedMatrix::zeros(out_features, parts[0].in_features(), dtype);
        let mut bias = parts[0]
            .bias
            .is_some()
            .then(|| Vec::with_capacity(out_features));
        let mut first_row = 0;
        for part in parts {
            pack_rows(&mut weight, first_row, &part.weight);
            first_row += part.out_features();
            if let (Some(b), Some(part_bias)) = (bias.as_mut(), &part.bias) {
                b.extend(part_bias.to_f32());
            }
        }
        Self {
            weight,
            bias,
            out_features,
        }
    }

    /// Bytes of the packed weight and the bias.
    fn size_bytes(&self) -> usize {
        self.weight.size_bytes() + self.bias.as_ref().map_or(0, |b| 4 * b.len())
    }
}

/// One decoder layer.
pub struct CpuLayer {
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

impl CpuLayer {
    fn new(w: &LayerWeights, dtype: WeightsDtype) -> Self {
        Self {
            input_layernorm: w.input_layernorm.to_f32(),
            qkv_proj: Linear::stack(&[&w.q_proj, &w.k_proj, &w.v_proj], dtype),
            q_norm: w.q_norm.as_ref().map(|t| t.to_f32()),
            k_norm: w.k_norm.as_ref().map(|t| t.to_f32()),
            o_proj: Linear::stack(&[&w.o_proj], dtype),
            post_attention_layernorm: w.post_attention_layernorm.to_f32(),
            gate_up_proj: Linear::stack(&[&w.gate_proj, &w.up_proj], dtype),
            down_proj: Linear::stack(&[&w.down_proj], dtype),
        }
    }

    fn size_bytes(&self) -> usize {
        let vectors = [
            Some(&self.input_layernorm),
            self.q_norm.as_ref(),
            self.k_norm.as_ref(),
            Some(&self.post_attention_layernorm),
        ];
        [
            &self.qkv_proj,
            &self.o_proj,
            &self.gate_up_proj,
            &self.down_proj,
        ]
        .iter()
        .map(|l| l.size_bytes())
        .sum::<usize>()
            + vectors.iter().flatten().map(|v| 4 * v.len()).sum::<usize>()
    }
}

/// All weights of a model, as the CPU forward pass reads them.
pub struct CpuWeights {
    /// `[vocab, hidden]`, packed like a [`Linear`] weight: with tied embeddings it is also the LM
    /// head, and one packed copy serves both — the embedding lookup reads a row back with
    /// [`PackedMatrix::copy_row`] — so the table is held once, not twice.
    pub embed_tokens: PackedMatrix,
    pub layers: Vec<CpuLayer>,
    pub norm: Vec<f32>,
    /// `None` when the output projection is tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
}

impl CpuWeights {
    /// Packs `w`'s matrices in `dtype` and widens its vectors (its shapes were checked when the
    /// model was loaded).
    pub fn new(w: &ModelWeights, dtype: WeightsDtype) -> Self {
        let shape = w.embed_tokens.shape();
        let mut embed_tokens = PackedMatrix::zeros(shape[0], shape[1], dtype);
        pack_rows(&mut embed_tokens, 0, &w.embed_tokens);
        Self {
            embed_tokens,
            layers: w.layers.iter().map(|l| CpuLayer::new(l, dtype)).collect(),
            norm: w.norm.to_f32(),
            lm_head: w.lm_head.as_ref().map(|l| Linear::stack(&[l], dtype)),
        }
    }

    /// Bytes the weights occupy in memory (panel padding included): what `--dtype` halves and
    /// `--quantize int8` takes to about 0.27×.
    pub fn size_bytes(&self) -> usize {
        self.embed_tokens.size_bytes()
            + self.layers.iter().map(CpuLayer::size_bytes).sum::<usize>()
            + 4 * self.norm.len()
            + self.lm_head.as_ref().map_or(0, Linear::size_bytes)
    }
}
