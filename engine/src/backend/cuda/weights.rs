//! The model on the device: every matrix uploaded once, in bf16, from the device-neutral
//! [`ModelWeights`] (checkpoint tensors in their file dtype), with q/k/v and gate/up stacked
//! into one matrix each as the CPU backend fuses them (one GEMM per fused linear layer over the
//! whole varlen batch); norm weights, biases, RoPE tables and the LookaheadKV module in f32.
//!
//! A matrix is converted a chunk of rows at a time ([`CHUNK_ROWS`]) and each chunk copied to its
//! place in the device buffer, so the host never holds a whole converted matrix (a large
//! vocabulary's embedding table is gigabytes). An f32 or f16 checkpoint is rounded to bf16 (to
//! nearest, ties to even: the bits `glimpse_f32_to_bf16` gives on the device); a bf16 one
//! uploads exactly its bits.

use cudarc::driver::CudaSlice;

use super::gpu::Gpu;
use crate::backend::fused::{DOWN, GATE_UP, O, QKV};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::loader::CheckpointTensor;
use crate::lookahead::{LookaheadModule, Projection};
use crate::model::{LayerWeights, LinearWeights, ModelWeights, RopeTables};

/// Rows converted and copied at a time.
const CHUNK_ROWS: usize = 1024;

/// A linear layer `y = x·Wᵀ + b` on the device.
pub struct DeviceLinear {
    /// `W`, `[out_features, in_features]` row-major bf16 bits.
    pub weight: CudaSlice<u16>,
    pub bias: Option<CudaSlice<f32>>,
    pub in_features: usize,
    pub out_features: usize,
}

/// One decoder layer on the device (fields as the CPU backend's `CpuLayer`).
pub struct DeviceLayer {
    pub input_layernorm: CudaSlice<f32>,
    /// Output rows `[q | k | v]`.
    pub qkv_proj: DeviceLinear,
    /// Qwen3's per-head norms (`[head_dim]`), both or neither.
    pub qk_norm: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
    pub o_proj: DeviceLinear,
    pub post_attention_layernorm: CudaSlice<f32>,
    /// Output rows `[gate | up]`.
    pub gate_up_proj: DeviceLinear,
    pub down_proj: DeviceLinear,
}

/// All weights of a model on the device.
pub struct DeviceWeights {
    /// `[vocab, hidden]` bf16: the embedding table, and the LM head when it is tied.
    pub embed_tokens: CudaSlice<u16>,
    pub layers: Vec<DeviceLayer>,
    pub norm: CudaSlice<f32>,
    /// `None` when the output projection is tied to `embed_tokens`.
    pub lm_head: Option<DeviceLinear>,
    /// `cos` and `sin`, `[positions, head_dim / 2]`.
    pub rope_cos: CudaSlice<f32>,
    pub rope_sin: CudaSlice<f32>,
    /// Bytes the matrices take on the device.
    pub matrix_bytes: usize,
}

impl DeviceWeights {
    /// Uploads `w` and the RoPE tables `rope`.
    pub fn upload(gpu: &Gpu, w: &ModelWeights, rope: &RopeTables) -> Result<Self> {
        let embed_tokens = upload_stacked(gpu, &[&w.embed_tokens], "embed_tokens")?;
        let layers = w
            .layers
            .iter()
            .map(|layer| DeviceLayer::upload(gpu, layer))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = w
            .lm_head
            .as_ref()
            .map(|l| DeviceLinear::upload(gpu, &[l], "lm_head"))
            .transpose()?;
        let matrix_bytes = 2
            * (embed_tokens.len()
                + layers
                    .iter()
                    .map(DeviceLayer::matrix_elements)
                    .sum::<usize>()
                + lm_head.as_ref().map_or(0, |l| l.weight.len()));
        Ok(Self {
            embed_tokens,
            layers,
            norm: gpu.upload(&w.norm.to_f32(), "norm")?,
            lm_head,
            rope_cos: gpu.upload(&rope.cos, "RoPE cos table")?,
            rope_sin: gpu.upload(&rope.sin, "RoPE sin table")?,
            matrix_bytes,
        })
    }
}

impl DeviceLayer {
    fn upload(gpu: &Gpu, w: &LayerWeights) -> Result<Self> {
        let qk_norm = match (&w.q_norm, &w.k_norm) {
            (Some(q), Some(k)) => Some((
                gpu.upload(&q.to_f32(), "q_norm")?,
                gpu.upload(&k.to_f32(), "k_norm")?,
            )),
            _ => None,
        };
        Ok(Self {
            input_layernorm: gpu.upload(&w.input_layernorm.to_f32(), "input_layernorm")?,
            qkv_proj: DeviceLinear::upload(gpu, &[&w.q_proj, &w.k_proj, &w.v_proj], "qkv_proj")?,
            qk_norm,
            o_proj: DeviceLinear::upload(gpu, &[&w.o_proj], "o_proj")?,
            post_attention_layernorm: gpu.upload(
                &w.post_attention_layernorm.to_f32(),
                "post_attention_layernorm",
            )?,
            gate_up_proj: DeviceLinear::upload(gpu, &[&w.gate_proj, &w.up_proj], "gate_up_proj")?,
            down_proj: DeviceLinear::upload(gpu, &[&w.down_proj], "down_proj")?,
        })
    }

    fn matrix_elements(&self) -> usize {
        [
            &self.qkv_proj,
            &self.o_proj,
            &self.gate_up_proj,
            &self.down_proj,
        ]
        .iter()
        .map(|l| l.weight.len())
        .sum()
    }
}

impl DeviceLinear {
    /// Stacks `parts` (same input width) along the output axis, biases likewise.
    fn upload(gpu: &Gpu, parts: &[&LinearWeights], what: &str) -> Result<Self> {
        let tensors: Vec<&CheckpointTensor> = parts.iter().map(|p| &p.weight).collect();
        let bias = match parts[0].bias.is_some() {
            true => {
                let stacked: Vec<f32> = parts
                    .iter()
                    .flat_map(|p| p.bias.as_ref().map(|b| b.to_f32()).unwrap_or_default())
                    .collect();
                Some(gpu.upload(&stacked, what)?)
            }
            false => None,
        };
        Ok(Self {
            weight: upload_stacked(gpu, &tensors, what)?,
            bias,
            in_features: parts[0].in_features(),
            out_features: parts.iter().map(|p| p.out_features()).sum(),
        })
    }
}

/// Uploads the row-major matrices `parts` (same width) stacked along their rows, as bf16 bits,
/// converting and copying [`CHUNK_ROWS`] rows at a time.
fn upload_stacked(gpu: &Gpu, parts: &[&CheckpointTensor], what: &str) -> Result<CudaSlice<u16>> {
    let width: usize = parts[0].shape()[1..].iter().product();
    let rows: usize = parts.iter().map(|t| t.shape()[0]).sum();
    let mut device = gpu.zeros::<u16>(rows * width, what)?;
    let (mut staging, mut bits) = (Vec::new(), Vec::new());
    let mut first_row = 0;
    for tensor in parts {
        let tensor_rows = tensor.shape()[0];
        for start in (0..tensor_rows).step_by(CHUNK_ROWS) {
            let end = (start + CHUNK_ROWS).min(tensor_rows);
            tensor.rows_to_f32(start..end, &mut staging);
            to_bf16_bits(&staging, &mut bits);
            let at = (first_row + start) * width;
            let mut chunk = device.slice_mut(at..at + bits.len());
            gpu.stream
                .memcpy_htod(&bits, &mut chunk)
                .map_err(super::gpu::driver_error(gpu.ordinal, "cuMemcpyHtoDAsync"))?;
            // The copy reads `bits` asynchronously: wait before the next chunk reuses it.
            gpu.sync()?;
        }
        first_row += tensor_rows;
    }
    Ok(device)
}

/// `values` rounded to bf16 (to nearest, ties to even; NaN stays NaN), as raw bits, into `out`
/// (cleared first).
pub fn to_bf16_bits(values: &[f32], out: &mut Vec<u16>) {
    out.clear();
    out.extend(values.iter().map(|&v| half::bf16::from_f32(v).to_bits()));
}

/// A lookahead module's adapters and rows on the device, in f32 (they touch the lookahead rows
/// only: a few small GEMMs per layer).
pub struct DeviceLookahead {
    pub num_tokens: usize,
    pub rank: usize,
    /// `α / r`.
    pub scale: f32,
    /// `[num_tokens, hidden]`: layer 0's input rows for the lookahead positions.
    pub embeddings: CudaSlice<f32>,
    pub layers: Vec<DeviceLayerLora>,
}

/// The adapters of one fused linear layer: its targets' `A`s stacked `[targets·rank, in]` (they
/// read the same input rows, so one GEMM gives every target's low-rank product) and each
/// target's `B` `[out_features, rank]`, in the order the fused output stacks its columns.
pub struct DeviceFusedLora {
    pub a: CudaSlice<f32>,
    pub in_features: usize,
    pub b: Vec<(CudaSlice<f32>, usize)>,
}

/// One decoder layer's adapters, one per fused linear layer.
pub struct DeviceLayerLora {
    pub qkv: DeviceFusedLora,
    pub o: DeviceFusedLora,
    pub gate_up: DeviceFusedLora,
    pub down: DeviceFusedLora,
}

impl DeviceLookahead {
    /// Uploads `module` (its shapes were checked against `config` when it was loaded).
    pub fn upload(gpu: &Gpu, module: &LookaheadModule, config: &ModelConfig) -> Result<Self> {
        let fused = |layer: &crate::lookahead::LayerAdapters, targets: &[Projection]| {
            let stacked: Vec<f32> = targets
                .iter()
                .flat_map(|&p| layer.get(p).a.iter().copied())
                .collect();
            Ok::<_, crate::error::EngineError>(DeviceFusedLora {
                a: gpu.upload(&stacked, "LoRA A")?,
                in_features: targets[0].in_features(config),
                b: targets
                    .iter()
                    .map(|&p| {
                        Ok((
                            gpu.upload(&layer.get(p).b, "LoRA B")?,
                            p.out_features(config),
                        ))
                    })
                    .collect::<Result<_>>()?,
            })
        };
        let layers = module
            .layers
            .iter()
            .map(|layer| {
                Ok(DeviceLayerLora {
                    qkv: fused(layer, QKV)?,
                    o: fused(layer, O)?,
                    gate_up: fused(layer, GATE_UP)?,
                    down: fused(layer, DOWN)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            num_tokens: module.num_tokens,
            rank: module.rank,
            scale: module.scale(),
            embeddings: gpu.upload(&module.embeddings, "lookahead embeddings")?,
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_bits_round_to_nearest_even_and_keep_bf16_values_exact() {
        let mut bits = Vec::new();
        // 1 + 2⁻⁸ is halfway between bf16 1.0 and the next value: ties to the even 1.0;
        // 1 + 3·2⁻⁸ is halfway to an odd and an even neighbour: up to the even one.
        let tie_down = 1.0 + 2f32.powi(-8);
        let tie_up = 1.0 + 3.0 * 2f32.powi(-8);
        to_bf16_bits(&[1.0, -2.5, tie_down, tie_up, 0.0], &mut bits);
        assert_eq!(bits, [0x3f80, 0xc020, 0x3f80, 0x3f82, 0x0000]);
        to_bf16_bits(&[f32::NAN], &mut bits);
        assert!(half::bf16::from_bits(bits[0]).is_nan());
    }
}
