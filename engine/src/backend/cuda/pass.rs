//! One forward pass on the device once its buffers are sized ([`Pass`]: every address the pass
//! reads or writes, fixed for the pass), and the work it does per decoder layer: the attention
//! block, that layer's eviction, the MLP block, each linear layer a cuBLAS GEMM over the flat
//! batch plus its bias and, on the lookahead rows only, its LoRA delta. Shapes: `T` rows, `H`
//! and `KV` query and KV heads of width `D`, `I` intermediate width.

use std::ops::Range;

use super::activations::ActivationLayout;
use super::evict::{EvictionScratch, LayerInput};
use super::gemm::{Operands, RowMajorGemm};
use super::gpu::{DevPtr, Gpu};
use super::kernels::{Kernels, PrefillIndex, QkvRows, RmsNorm, Rotation};
use super::launch::{DecodeSplit, PrefillTiling};
use super::pool::DevicePool;
use super::weights::{
    DeviceFusedLora, DeviceLayer, DeviceLayerLora, DeviceLinear, DeviceLookahead,
};
use crate::backend::eviction_pass::SequenceRows;
use crate::batch::ForwardBatch;
use crate::config::ModelConfig;
use crate::error::Result;

/// Which attention kernel a pass runs.
#[derive(Debug, Clone, Copy)]
pub enum Attention {
    /// Varlen prefill attention: any rows, lookahead rows included.
    Prefill(PrefillTiling),
    /// Decode attention, split over long contexts, with its partial results' buffer: every
    /// sequence has exactly one row.
    Decode(DecodeSplit, DevPtr<f32>),
}

/// The device addresses and sizes of one pass.
#[derive(Debug, Clone, Copy)]
pub struct PassBuffers {
    pub layout: ActivationLayout,
    /// The f32 step buffer [`ActivationLayout`] cuts up.
    pub f32s: DevPtr<f32>,
    /// bf16 GEMM inputs.
    pub rounded: DevPtr<u16>,
    /// `T` ones (the bias GEMM's left factor).
    pub ones: DevPtr<f32>,
    /// Rows of the flat batch (`T`).
    pub rows: usize,
    pub ids: DevPtr<i32>,
    /// Each row's position and the RoPE tables.
    pub rope: Rotation,
    pub slots: DevPtr<i32>,
    pub prefill: PrefillIndex,
    pub attention: Attention,
}

/// One pass: its buffers and what it reads from the backend.
pub struct Pass<'a> {
    pub gpu: &'a Gpu,
    pub kernels: &'a Kernels,
    pub config: &'a ModelConfig,
    /// Each sequence's lookahead rows, for the sequences with some (LoRA runs on these only).
    pub lora_rows: &'a [Range<usize>],
    pub lookahead: Option<&'a DeviceLookahead>,
    pub b: PassBuffers,
}

/// A matrix to multiply by: bf16 bits `[out, in]` and an optional f32 bias `[out]`.
pub struct Matrix {
    pub weight: DevPtr<u16>,
    pub bias: Option<DevPtr<f32>>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Matrix {
    pub fn of(gpu: &Gpu, linear: &DeviceLinear) -> Self {
        Self {
            weight: gpu.ptr(&linear.weight),
            bias: linear.bias.as_ref().map(|b| gpu.ptr(b)),
            in_features: linear.in_features,
            out_features: linear.out_features,
        }
    }
}

/// What one layer's eviction mutates: each sequence's rows (their pending evictions) and the
/// eviction scratch.
pub struct Evicting<'a> {
    pub sequences: &'a mut [SequenceRows],
    pub scratch: &'a mut EvictionScratch,
}

impl Pass<'_> {
    /// Element `offset` of the f32 step buffer.
    pub fn at(&self, offset: usize) -> DevPtr<f32> {
        self.b.f32s.at(offset)
    }

    fn qkv(&self) -> QkvRows {
        QkvRows {
            qkv: self.at(self.b.layout.qkv),
            rows: self.b.rows,
            row_stride: self.config.qkv_width(),
        }
    }

    /// RMSNorm of `rows` whole rows of `hidden_size`.
    pub fn rms_norm(
        &self,
        x: DevPtr<f32>,
        weight: DevPtr<f32>,
        out: DevPtr<f32>,
        rows: usize,
    ) -> Result<()> {
        let h = self.config.hidden_size;
        self.kernels.rms_norm(RmsNorm {
            x,
            weight,
            out,
            rows,
            pieces: 1,
            row_stride: h,
            width: h,
            eps: self.config.rms_norm_eps,
        })
    }

    /// Decoder layer `l` (weights `w`, adapters `lora`): the attention block, this layer's
    /// eviction (its cache is final once its attention ran), then the MLP block.
    pub fn layer(
        &self,
        (w, lora): (&DeviceLayer, Option<&DeviceLayerLora>),
        (pool, l): (&DevicePool, usize),
        batch: &ForwardBatch<'_>,
        evicting: Evicting<'_>,
    ) -> Result<()> {
        self.attention_block(w, lora, pool, l)?;
        self.evict_layer(pool, l, batch, evicting)?;
        self.mlp_block(w, lora)
    }

    /// `hidden += o_proj(attention(rope(qkv_proj(rms_norm(hidden)))))`, storing each token
    /// row's K/V in layer `l` of `pool`.
    fn attention_block(
        &self,
        w: &DeviceLayer,
        lora: Option<&DeviceLayerLora>,
        pool: &DevicePool,
        l: usize,
    ) -> Result<()> {
        let (gpu, k, a, t) = (self.gpu, self.kernels, &self.b.layout, self.b.rows);
        let (hidden, normed, qkv) = (self.at(a.hidden), self.at(a.normed), self.qkv());
        // 1. normed = rms_norm(hidden): [T, hidden].
        self.rms_norm(hidden, gpu.ptr(&w.input_layernorm), normed, t)?;
        // 2. qkv = qkv_proj(normed): [T, (H + 2·KV)·D], rows [q | k | v].
        let qkv_proj = Matrix::of(gpu, &w.qkv_proj);
        self.linear(normed, t, &qkv_proj, qkv.qkv, false, lora.map(|l| &l.qkv))?;
        // 3. q/k norm and RoPE in place; K/V into the pool (lookahead rows have no slot: their
        //    K/V stay in qkv, where attention and scoring read them).
        if let Some((q_norm, k_norm)) = &w.qk_norm {
            k.qk_norm(
                qkv,
                (gpu.ptr(q_norm), gpu.ptr(k_norm)),
                self.config.rms_norm_eps,
            )?;
        }
        k.rope(qkv, self.b.rope)?;
        let cache = pool.layer(gpu, l);
        k.cache_write(qkv, self.b.slots, cache)?;
        // 4. attention = softmax(q·Kᵀ/√D)·V over each row's entries: [T, H·D].
        let p = &self.b.prefill;
        let index = PrefillIndex {
            skip_starts: p.skip_starts.at(l * p.num_seqs),
            skip_ends: p.skip_ends.at(l * p.num_seqs),
            ..*p
        };
        let attention = self.at(a.attention);
        match self.b.attention {
            Attention::Prefill(tiling) => {
                k.prefill_attention(qkv, cache, &index, tiling, attention)?
            }
            Attention::Decode(split, partials) => {
                // The queries, contiguous, into the output rows: the reduce overwrites them only
                // after the first launch has read them all.
                let q_width = k.shape.q_width();
                gpu.copy_rows((qkv.qkv, qkv.row_stride), (attention, q_width), q_width, t)?;
                k.decode_attention(attention, cache, &index, (split, partials), attention)?
            }
        }
        // 5. hidden += o_proj(attention): [T, hidden].
        let o_proj = Matrix::of(gpu, &w.o_proj);
        self.linear(attention, t, &o_proj, hidden, true, lora.map(|l| &l.o))
    }

    /// Scores, selects and compacts layer `l` of every sequence that evicts in this pass, from
    /// the layer's RoPE'd queries (and lookahead keys) in qkv.
    fn evict_layer(
        &self,
        pool: &DevicePool,
        l: usize,
        batch: &ForwardBatch<'_>,
        evicting: Evicting<'_>,
    ) -> Result<()> {
        let p = &self.b.prefill;
        for (s, (seq, rows)) in batch
            .sequences
            .iter()
            .zip(evicting.sequences.iter_mut())
            .enumerate()
        {
            let Some(mut pending) = rows.eviction.take() else {
                continue;
            };
            let input = LayerInput {
                layer: l,
                qkv: self.qkv(),
                cache: pool.layer(self.gpu, l),
                block_table: p.block_tables.at(s * p.max_blocks_per_seq),
            };
            let device = (self.gpu, self.kernels);
            let done = evicting
                .scratch
                .run_layer(device, &mut pending, seq, rows, &input);
            rows.eviction = Some(pending);
            done?;
        }
        Ok(())
    }

    /// `hidden += down_proj(silu(gate_proj(x)) · up_proj(x))` with `x = rms_norm(hidden)`.
    fn mlp_block(&self, w: &DeviceLayer, lora: Option<&DeviceLayerLora>) -> Result<()> {
        let (gpu, a, t) = (self.gpu, &self.b.layout, self.b.rows);
        let (hidden, normed) = (self.at(a.hidden), self.at(a.normed));
        let (gate_up, activated) = (self.at(a.gate_up), self.at(a.activated));
        // 1. normed = rms_norm(hidden): [T, hidden].
        self.rms_norm(hidden, gpu.ptr(&w.post_attention_layernorm), normed, t)?;
        // 2. gate_up = gate_up_proj(normed): [T, 2·I], rows [gate | up].
        let gate_up_proj = Matrix::of(gpu, &w.gate_up_proj);
        self.linear(
            normed,
            t,
            &gate_up_proj,
            gate_up,
            false,
            lora.map(|l| &l.gate_up),
        )?;
        // 3. activated = silu(gate) · up: [T, I].
        self.kernels
            .silu_mul(gate_up, activated, t, self.config.intermediate_size)?;
        // 4. hidden += down_proj(activated): [T, hidden].
        let down_proj = Matrix::of(gpu, &w.down_proj);
        self.linear(
            activated,
            t,
            &down_proj,
            hidden,
            true,
            lora.map(|l| &l.down),
        )
    }

    /// `y (+)= x·Wᵀ + b` over `rows` rows of `x`, plus the LoRA delta of `lora` on the
    /// lookahead rows.
    pub fn linear(
        &self,
        x: DevPtr<f32>,
        rows: usize,
        m: &Matrix,
        y: DevPtr<f32>,
        accumulate: bool,
        lora: Option<&DeviceFusedLora>,
    ) -> Result<()> {
        let (gpu, rounded) = (self.gpu, self.b.rounded);
        self.kernels
            .round_to_bf16(x, rounded, rows * m.in_features)?;
        let gemm = RowMajorGemm::dense(rows, m.in_features, m.out_features);
        let gemm = if accumulate { gemm.accumulate() } else { gemm };
        gemm.run(gpu, Operands::Bf16, rounded, m.weight, y)?;
        if let Some(bias) = m.bias {
            let add = RowMajorGemm {
                ldx: 1,
                ldw: 1,
                ..RowMajorGemm::dense(rows, 1, m.out_features).accumulate()
            };
            add.run(gpu, Operands::F32, self.b.ones, bias, y)?;
        }
        match (lora, self.lookahead) {
            (Some(lora), Some(module)) => self.lora(x, m.out_features, y, lora, module),
            _ => Ok(()),
        }
    }

    /// `y[r] += scale·(x[r]·Aᵀ)·Bᵀ` for the lookahead rows `r` only, one sequence at a time.
    fn lora(
        &self,
        x: DevPtr<f32>,
        width: usize,
        y: DevPtr<f32>,
        lora: &DeviceFusedLora,
        module: &DeviceLookahead,
    ) -> Result<()> {
        let gpu = self.gpu;
        let rank = module.rank;
        let low_width = lora.b.len() * rank;
        let low = self.at(self.b.layout.low_rank);
        for rows in self.lora_rows {
            let (first, n) = (rows.start, rows.len());
            let down = RowMajorGemm::dense(n, lora.in_features, low_width);
            let a = gpu.ptr(&lora.a);
            down.run(gpu, Operands::F32, x.at(first * lora.in_features), a, low)?;
            let mut column = 0;
            for (t, (b, out_features)) in lora.b.iter().enumerate() {
                let up = RowMajorGemm {
                    ldx: low_width,
                    ldy: width,
                    alpha: module.scale,
                    ..RowMajorGemm::dense(n, rank, *out_features).accumulate()
                };
                let target = y.at(first * width + column);
                up.run(gpu, Operands::F32, low.at(t * rank), gpu.ptr(b), target)?;
                column += out_features;
            }
        }
        Ok(())
    }
}
