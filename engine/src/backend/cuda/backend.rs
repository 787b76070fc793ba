//! [`CudaBackend`]: the Llama-family forward pass on one GPU, over a paged KV pool in device
//! memory, step for step what the CPU backend computes (`backend/cpu/mod.rs`).
//!
//! **This code has not yet run on a device**: it compiles, and its host logic is unit-tested,
//! on machines without a GPU; each kernel it launches is tested on the CPU through the host shim
//! of the `glimpse-cuda-kernels` crate. `scripts/gpu-check.sh` is the check that runs it on a
//! lent GPU against the CPU backend.
//!
//! One pass: the host validates the batch (the CPU backend's checks, [`BatchLimits`], plus the
//! launch limits of the kernels), lays out the flat varlen rows ([`plan_sequences`]) and uploads
//! the step's index arrays in one copy ([`StepIndex`]); then, on one stream, embedding gather,
//! and per layer RMSNorm, the fused qkv GEMM, q/k norm, RoPE, cache write by slot mapping, paged
//! attention (`decode_attention.cu`, split over long contexts, when every sequence has one row;
//! else varlen `prefill_attention.cu`, which serves prompt, decode and lookahead rows alike, the
//! last with their side K/V), the o GEMM into the residual, that layer's eviction
//! ([`super::evict`]), then the MLP (gate/up GEMM, SiLU·mul, down GEMM into the residual).
//! GEMMs are cuBLAS, bf16 × bf16 with f32 accumulation and f32 output, over the whole flat
//! batch: each GEMM's f32 input is rounded to bf16 first (`round_to_bf16.cu`; cuBLAS multiplies
//! bf16 by bf16 only), the one rounding the CPU backend's bf16 path does not do, so logits agree
//! with the CPU's within a tolerance, not bit for bit. The LoRA adapters run as small f32 GEMMs
//! on the lookahead rows only. Finally the rows that want logits are gathered, normalised,
//! projected and copied back to the host, where sampling runs. Moving sampling to the device
//! would copy back a token id per row instead of `vocab` floats: for a 128K vocabulary that is
//! 0.5 MB per row, 33 MB a step at 64 rows, about 1.3 ms at 25 GB/s over PCIe; the pass waits
//! for its result either way.
//!
//! Kernels run asynchronously on one stream: the pass's profile reports the eviction steps'
//! host times ([`super::evict`]) and everything else as `other`; per-kind device times would need
//! events around each launch.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::activations::ActivationLayout;
use super::evict::{EvictionScratch, LayerInput};
use super::gemm::{Operands, RowMajorGemm};
use super::gpu::{DevPtr, Gpu};
use super::launch::{
    DecodeSplit, HeadShape, Kernels, PrefillIndex, PrefillTiling, SHARED_MEMORY_LIMIT,
    score_reduce_shared_bytes,
};
use super::pool::DevicePool;
use super::scratch::Scratch;
use super::step::StepIndex;
use super::weights::{DeviceFusedLora, DeviceLinear, DeviceLookahead, DeviceWeights};
use crate::backend::eviction_pass::{EvictionTimes, SequenceRows, plan_sequences};
use crate::backend::validate::BatchLimits;
use crate::backend::{Backend, KvGeometry};
use crate::batch::{ForwardBatch, ForwardOutput, ForwardProfile, RowRange};
use crate::config::{KvCacheDtype, ModelConfig};
use crate::error::{EngineError, Result};
use crate::lookahead::LookaheadModule;
use crate::model::{Model, RopeTables};

/// Runs a model on one GPU with a paged KV pool in device memory.
pub struct CudaBackend {
    model: OnDevice,
    step: StepBuffers,
}

/// What stays on the device from pass to pass.
struct OnDevice {
    gpu: Gpu,
    kernels: Kernels,
    config: ModelConfig,
    weights: DeviceWeights,
    lookahead: Option<DeviceLookahead>,
    pool: DevicePool,
}

/// What a step reuses from the previous one.
struct StepBuffers {
    sequences: Vec<SequenceRows>,
    /// Each sequence's lookahead rows (the LoRA rows), for sequences that have some.
    lora_rows: Vec<Range<usize>>,
    index: StepIndex,
    indices: Scratch<i32>,
    activations: Scratch<f32>,
    rounded: Scratch<u16>,
    /// Ones for the bias GEMM, and how many of them it holds.
    ones: Scratch<f32>,
    ones_len: usize,
    eviction: EvictionScratch,
    /// Decode attention's partial results.
    decode_partials: Scratch<f32>,
    /// Per sequence: the first row and count of its logits rows.
    logits_rows: Vec<(usize, usize)>,
}

/// A matrix to multiply by: bf16 bits `[out, in]` and an optional f32 bias `[out]`.
struct Matrix {
    weight: DevPtr<u16>,
    bias: Option<DevPtr<f32>>,
    in_features: usize,
    out_features: usize,
}

/// One pass's device addresses, fixed once the step's buffers are sized.
struct Pass<'a> {
    gpu: &'a Gpu,
    kernels: &'a Kernels,
    lora_rows: &'a [Range<usize>],
    lookahead: Option<&'a DeviceLookahead>,
    layout: ActivationLayout,
    f32s: DevPtr<f32>,
    rounded: DevPtr<u16>,
    ones: DevPtr<f32>,
    /// Rows of the flat batch.
    rows: usize,
    positions: DevPtr<i32>,
    slots: DevPtr<i32>,
    prefill: PrefillIndex,
    /// How attention runs this pass.
    attention: Attention,
}

/// Which attention kernel a pass runs.
#[derive(Clone, Copy)]
enum Attention {
    /// Varlen prefill attention: any rows, lookahead rows included.
    Prefill(PrefillTiling),
    /// Decode attention, split over long contexts: every sequence has exactly one row.
    Decode(DecodeSplit, DevPtr<f32>),
}

impl CudaBackend {
    /// Places `model` on the GPU of `gpu` — matrices uploaded in bf16 — with the kernels
    /// `kernels` and a KV pool of `num_blocks` × `block_size` entries in `kv_dtype`, and
    /// `lookahead`'s rows and adapters for the LookaheadKV policy if given.
    ///
    /// Fails with [`EngineError::CudaUnsupported`] for an f32 KV pool (the kernels store bf16),
    /// with [`EngineError::InvalidParameter`] for a pool shape [`KvGeometry::new`] refuses, and
    /// with [`EngineError::CudaDriver`] when an upload or allocation fails.
    pub(super) fn new(
        gpu: Gpu,
        kernels: Kernels,
        model: &Model,
        block_size: usize,
        num_blocks: usize,
        kv_dtype: KvCacheDtype,
        lookahead: Option<Arc<LookaheadModule>>,
    ) -> Result<Self> {
        check_kv_dtype(gpu.ordinal, kv_dtype)?;
        let geometry = KvGeometry::new(&model.config, block_size, num_blocks, kv_dtype)?;
        // Lookahead rows sit after the longest prompt: their positions need rotary angles too.
        let lookahead_positions = lookahead.as_ref().map_or(0, |m| m.num_tokens);
        let rope = RopeTables::new(
            &model.config.rope,
            model.config.head_dim,
            model.config.max_model_len + lookahead_positions,
        )?;
        gpu.bind()?;
        let weights = DeviceWeights::upload(&gpu, &model.weights, &rope)?;
        let lookahead = lookahead
            .map(|module| DeviceLookahead::upload(&gpu, &module, &model.config))
            .transpose()?;
        let pool = DevicePool::new(&gpu, geometry)?;
        gpu.sync()?;
        tracing::info!(
            ordinal = gpu.ordinal,
            weight_bytes = weights.matrix_bytes,
            kv_pool_bytes = geometry.total_bytes(),
            "weights and KV pool on the GPU (bf16)"
        );
        Ok(Self {
            model: OnDevice {
                gpu,
                kernels,
                config: model.config.clone(),
                weights,
                lookahead,
                pool,
            },
            step: StepBuffers {
                sequences: Vec::new(),
                lora_rows: Vec::new(),
                index: StepIndex::default(),
                indices: Scratch::new("step indices"),
                activations: Scratch::new("activations"),
                rounded: Scratch::new("bf16 GEMM inputs"),
                ones: Scratch::new("bias ones"),
                ones_len: 0,
                eviction: EvictionScratch::default(),
                decode_partials: Scratch::new("decode attention partials"),
                logits_rows: Vec::new(),
            },
        })
    }
}

/// Refuses a KV pool dtype the kernels do not store.
pub(super) fn check_kv_dtype(ordinal: usize, kv_dtype: KvCacheDtype) -> Result<()> {
    match kv_dtype {
        KvCacheDtype::Bf16 => Ok(()),
        KvCacheDtype::F32 => Err(EngineError::CudaUnsupported {
            ordinal,
            what: "a KV cache in f32 (the CUDA kernels store keys and values in bf16; pass `--kv-cache-dtype bf16`)".into(),
        }),
    }
}

impl OnDevice {
    fn shape(&self) -> HeadShape {
        HeadShape {
            num_heads: self.config.num_heads,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
            block_size: self.pool.geometry().block_size,
        }
    }

    fn unsupported(&self, what: String) -> EngineError {
        EngineError::CudaUnsupported {
            ordinal: self.gpu.ordinal,
            what,
        }
    }

    /// The kernels' launch limits for a batch laid out as `sequences`, checked before anything
    /// is written: the attention tile's shared memory, and the scoring queries' (`n_q ·
    /// head_dim` floats).
    fn check_launch_limits(&self, sequences: &[SequenceRows]) -> Result<PrefillTiling> {
        let d = self.config.head_dim;
        for rows in sequences {
            let Some(pending) = &rows.eviction else {
                continue;
            };
            let n_q = pending.scoring_rows(rows.first_row, rows.num_tokens).len();
            if score_reduce_shared_bytes(n_q, d) > SHARED_MEMORY_LIMIT {
                return Err(self.unsupported(format!(
                    "eviction scoring with {n_q} queries of head_dim {d} (more than {SHARED_MEMORY_LIMIT} bytes of shared memory; use a smaller `eviction.window` or `eviction.num_tokens`)"
                )));
            }
        }
        let group = self.config.num_heads / self.config.num_kv_heads;
        let max_rows = sequences.iter().map(|r| r.rows().len()).max().unwrap_or(1);
        PrefillTiling::choose(max_rows, group, d).ok_or_else(|| {
            self.unsupported(format!(
                "attention with {group} query heads per KV head of head_dim {d} (one row's tile exceeds {SHARED_MEMORY_LIMIT} bytes of shared memory)"
            ))
        })
    }

    fn matrix(&self, linear: &DeviceLinear) -> Matrix {
        Matrix {
            weight: self.gpu.ptr(&linear.weight),
            bias: linear.bias.as_ref().map(|b| self.gpu.ptr(b)),
            in_features: linear.in_features,
            out_features: linear.out_features,
        }
    }

    /// Decoder layer `l`: the attention block, this layer's eviction (its cache is final once
    /// its attention ran), then the MLP block.
    fn layer(
        &self,
        pass: &Pass<'_>,
        batch: &ForwardBatch<'_>,
        (sequences, eviction): (&mut [SequenceRows], &mut EvictionScratch),
        l: usize,
    ) -> Result<()> {
        let (c, gpu, k) = (&self.config, pass.gpu, pass.kernels);
        let w = &self.weights.layers[l];
        let lora = self.lookahead.as_ref().map(|m| &m.layers[l]);
        let (t, h, d, eps) = (pass.rows, c.hidden_size, c.head_dim, c.rms_norm_eps);
        let (q_width, kv_width, qkv_width) = (c.num_heads * d, c.num_kv_heads * d, c.qkv_width());
        let a = &pass.layout;
        let (hidden, normed, qkv) = (pass.at(a.hidden), pass.at(a.normed), pass.at(a.qkv));
        let shape = self.shape();
        // 1. normed = rms_norm(hidden): [T, hidden].
        k.rms_norm(
            gpu,
            hidden,
            gpu.ptr(&w.input_layernorm),
            normed,
            t,
            1,
            h,
            h,
            eps,
        )?;
        // 2. qkv = qkv_proj(normed): [T, (H + 2·KV)·D], rows [q | k | v].
        let qkv_proj = self.matrix(&w.qkv_proj);
        pass.linear(normed, t, &qkv_proj, qkv, false, lora.map(|l| &l.qkv))?;
        // 3. q/k norm and RoPE in place; K/V into the pool (lookahead rows have no slot: their
        //    K/V stay in qkv, where attention and scoring read them).
        if let Some((q_norm, k_norm)) = &w.qk_norm {
            k.rms_norm(
                gpu,
                qkv,
                gpu.ptr(q_norm),
                qkv,
                t,
                c.num_heads,
                qkv_width,
                d,
                eps,
            )?;
            let keys = qkv.at(q_width);
            k.rms_norm(
                gpu,
                keys,
                gpu.ptr(k_norm),
                keys,
                t,
                c.num_kv_heads,
                qkv_width,
                d,
                eps,
            )?;
        }
        let (cos, sin) = (
            gpu.ptr(&self.weights.rope_cos),
            gpu.ptr(&self.weights.rope_sin),
        );
        let positions = pass.positions;
        k.rope(gpu, qkv, positions, cos, sin, t, qkv_width, c.num_heads, d)?;
        let keys = qkv.at(q_width);
        k.rope(
            gpu,
            keys,
            positions,
            cos,
            sin,
            t,
            qkv_width,
            c.num_kv_heads,
            d,
        )?;
        let cache = self.pool.layer(gpu, l);
        let kv_offsets = (q_width, q_width + kv_width);
        k.cache_write(gpu, qkv, pass.slots, cache, t, qkv_width, kv_offsets, shape)?;
        // 4. attention = softmax(q·Kᵀ/√D)·V over each row's entries: [T, H·D].
        let p = &pass.prefill;
        let layer_index = PrefillIndex {
            skip_starts: p.skip_starts.at(l * p.num_seqs),
            skip_ends: p.skip_ends.at(l * p.num_seqs),
            ..*p
        };
        let attention = pass.at(a.attention);
        match pass.attention {
            Attention::Prefill(tiling) => k.prefill_attention(
                gpu,
                qkv,
                qkv_width,
                cache,
                &layer_index,
                tiling,
                attention,
                shape,
            )?,
            Attention::Decode(split, partials) => {
                // The queries, contiguous, into the output rows: the reduce overwrites them only
                // after the first launch has read them all.
                gpu.copy_rows((qkv, qkv_width), (attention, q_width), q_width, t)?;
                k.decode_attention(
                    gpu,
                    attention,
                    cache,
                    &layer_index,
                    split,
                    partials,
                    attention,
                    shape,
                )?
            }
        }
        // 5. hidden += o_proj(attention): [T, hidden].
        let o_proj = self.matrix(&w.o_proj);
        pass.linear(attention, t, &o_proj, hidden, true, lora.map(|l| &l.o))?;
        // This layer's eviction, from its RoPE'd queries (and lookahead keys) in qkv.
        for (s, (seq, rows)) in batch.sequences.iter().zip(sequences.iter_mut()).enumerate() {
            let Some(mut pending) = rows.eviction.take() else {
                continue;
            };
            let input = LayerInput {
                layer: l,
                qkv,
                qkv_width,
                block_table: p.block_tables.at(s * p.max_blocks_per_seq),
                shape,
            };
            let done = eviction.run_layer((gpu, k, &self.pool), &mut pending, seq, rows, &input);
            rows.eviction = Some(pending);
            done?;
        }
        // MLP: hidden += down_proj(silu(gate) · up) of rms_norm(hidden).
        let (gate_up, activated) = (pass.at(a.gate_up), pass.at(a.activated));
        let post_norm = gpu.ptr(&w.post_attention_layernorm);
        k.rms_norm(gpu, hidden, post_norm, normed, t, 1, h, h, eps)?;
        let gate_up_proj = self.matrix(&w.gate_up_proj);
        pass.linear(
            normed,
            t,
            &gate_up_proj,
            gate_up,
            false,
            lora.map(|l| &l.gate_up),
        )?;
        k.silu_mul(gpu, gate_up, activated, t, c.intermediate_size)?;
        let down_proj = self.matrix(&w.down_proj);
        pass.linear(
            activated,
            t,
            &down_proj,
            hidden,
            true,
            lora.map(|l| &l.down),
        )
    }

    /// Token embeddings of every row, and the module's rows in place of a lookahead row's.
    fn embed(&self, pass: &Pass<'_>, ids: DevPtr<i32>) -> Result<()> {
        let (gpu, h) = (pass.gpu, self.config.hidden_size);
        let hidden = pass.at(pass.layout.hidden);
        let table = gpu.ptr(&self.weights.embed_tokens);
        pass.kernels
            .embedding(gpu, table, ids, hidden, pass.rows, h)?;
        if let Some(module) = &self.lookahead {
            let rows = gpu.ptr(&module.embeddings);
            for lookahead in pass.lora_rows {
                gpu.copy(rows, hidden.at(lookahead.start * h), lookahead.len() * h)?;
            }
        }
        Ok(())
    }

    /// The final norm and LM head of the rows `logits_rows` asks for, copied to `out`.
    fn logits(
        &self,
        pass: &Pass<'_>,
        logits_rows: &[(usize, usize)],
        out: &mut ForwardOutput,
    ) -> Result<()> {
        let (gpu, c) = (pass.gpu, &self.config);
        let (h, vocab) = (c.hidden_size, c.vocab_size);
        let a = &pass.layout;
        let (gathered, normed, logits) = (
            pass.at(a.logits_hidden),
            pass.at(a.logits_normed),
            pass.at(a.logits),
        );
        out.rows.clear();
        let mut next = 0;
        for &(first, count) in logits_rows {
            out.rows.push(RowRange { start: next, count });
            gpu.copy(
                pass.at(a.hidden + first * h),
                gathered.at(next * h),
                count * h,
            )?;
            next += count;
        }
        let norm = gpu.ptr(&self.weights.norm);
        pass.kernels
            .rms_norm(gpu, gathered, norm, normed, next, 1, h, h, c.rms_norm_eps)?;
        let head = match &self.weights.lm_head {
            Some(lm_head) => self.matrix(lm_head),
            None => Matrix {
                weight: gpu.ptr(&self.weights.embed_tokens),
                bias: None,
                in_features: h,
                out_features: vocab,
            },
        };
        pass.linear(normed, next, &head, logits, false, None)?;
        out.vocab_size = vocab;
        out.logits.resize(next * vocab, 0.0);
        gpu.read(logits, &mut out.logits)
    }
}

impl Pass<'_> {
    fn at(&self, offset: usize) -> DevPtr<f32> {
        self.f32s.at(offset)
    }

    /// `y (+)= x·Wᵀ + b` over `rows` rows of `x`, plus the LoRA delta of `lora` on the
    /// lookahead rows.
    fn linear(
        &self,
        x: DevPtr<f32>,
        rows: usize,
        m: &Matrix,
        y: DevPtr<f32>,
        accumulate: bool,
        lora: Option<&DeviceFusedLora>,
    ) -> Result<()> {
        let gpu = self.gpu;
        self.kernels
            .round_to_bf16(gpu, x, self.rounded, rows * m.in_features)?;
        let gemm = RowMajorGemm::dense(rows, m.in_features, m.out_features);
        let gemm = if accumulate { gemm.accumulate() } else { gemm };
        gemm.run(gpu, Operands::Bf16, self.rounded, m.weight, y)?;
        if let Some(bias) = m.bias {
            let add = RowMajorGemm {
                ldx: 1,
                ldw: 1,
                ..RowMajorGemm::dense(rows, 1, m.out_features).accumulate()
            };
            add.run(gpu, Operands::F32, self.ones, bias, y)?;
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
        let low = self.at(self.layout.low_rank);
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

impl Backend for CudaBackend {
    fn geometry(&self) -> &KvGeometry {
        self.model.pool.geometry()
    }

    fn forward(&mut self, batch: &ForwardBatch<'_>, out: &mut ForwardOutput) -> Result<()> {
        let (m, step) = (&self.model, &mut self.step);
        let gpu = &m.gpu;
        gpu.bind()?;
        BatchLimits {
            config: &m.config,
            geometry: m.pool.geometry(),
            lookahead_tokens: m.lookahead.as_ref().map(|module| module.num_tokens),
        }
        .validate(batch)?;
        let started = Instant::now();
        let num_layers = m.config.num_layers;
        plan_sequences(batch, num_layers, &mut step.sequences);
        let tiling = m.check_launch_limits(&step.sequences)?;
        let group = m.config.num_heads / m.config.num_kv_heads;
        let max_context = batch.sequences.iter().map(|s| s.num_entries_after()).max();
        let decode_split = step
            .sequences
            .iter()
            .all(|rows| rows.rows().len() == 1)
            .then(|| DecodeSplit::choose(max_context.unwrap_or(0), group, m.config.head_dim))
            .flatten();
        let block_size = m.pool.geometry().block_size;
        step.index
            .fill(batch, &step.sequences, block_size, num_layers)?;
        step.lora_rows.clear();
        step.lora_rows.extend(
            step.sequences
                .iter()
                .filter(|rows| rows.num_lookahead > 0)
                .map(SequenceRows::lookahead_rows),
        );
        step.logits_rows.clear();
        for (seq, rows) in batch.sequences.iter().zip(&step.sequences) {
            let count = seq.logits.num_rows(rows.num_tokens);
            step.logits_rows
                .push((rows.first_row + rows.num_tokens - count, count));
        }
        let rows = step.index.num_rows;
        let logits_rows = step.logits_rows.iter().map(|&(_, count)| count).sum();
        let rank = m.lookahead.as_ref().map_or(0, |module| module.rank);
        let layout = ActivationLayout::new(&m.config, rows, logits_rows, rank);
        let f32s = step.activations.ensure(gpu, layout.len)?;
        let rounded = step.rounded.ensure(gpu, layout.rounded_len)?;
        if rows > step.ones_len {
            step.ones.upload(gpu, &vec![1.0; rows])?;
            step.ones_len = rows;
        }
        let ones = step.ones.ensure(gpu, rows)?;
        let indices = step.indices.upload(gpu, &step.index.packed)?;
        let attention = match decode_split {
            Some(split) => {
                let len = split.partials_len(batch.sequences.len(), m.config.num_heads);
                let partials = step
                    .decode_partials
                    .ensure(gpu, (2 + m.config.head_dim) * len)?;
                Attention::Decode(split, partials)
            }
            None => Attention::Prefill(tiling),
        };
        let (o, tables) = (step.index.offsets, &step.index.tables);
        let pass = Pass {
            gpu,
            kernels: &m.kernels,
            lora_rows: &step.lora_rows,
            lookahead: m.lookahead.as_ref(),
            layout,
            f32s,
            rounded,
            ones,
            rows,
            positions: indices.at(o.positions),
            slots: indices.at(o.slots),
            prefill: PrefillIndex {
                block_tables: indices.at(o.block_tables),
                max_blocks_per_seq: tables.max_blocks_per_seq,
                cu_seqlens: indices.at(o.cu_seqlens),
                context_lens: indices.at(o.context_lens),
                num_lookahead: indices.at(o.num_lookahead),
                skip_starts: indices.at(o.skip_starts),
                skip_ends: indices.at(o.skip_ends),
                num_seqs: batch.sequences.len(),
                max_rows: step.index.max_rows,
            },
            attention,
        };
        m.embed(&pass, indices.at(o.ids))?;
        for layer in 0..num_layers {
            m.layer(
                &pass,
                batch,
                (&mut step.sequences, &mut step.eviction),
                layer,
            )?;
        }
        m.logits(&pass, &step.logits_rows, out)?;
        out.evictions.clear();
        let mut eviction = EvictionTimes::default();
        for (index, rows) in step.sequences.iter_mut().enumerate() {
            if let Some(pending) = rows.eviction.take() {
                eviction += pending.times();
                out.evictions.push(pending.finish(index));
            }
        }
        let total = started.elapsed();
        out.profile = ForwardProfile {
            scoring: eviction.scoring,
            selection: eviction.selection,
            compaction: eviction.compaction,
            other: total
                .saturating_sub(eviction.scoring + eviction.selection + eviction.compaction),
            ..ForwardProfile::default()
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_f32_kv_pool_is_refused_naming_the_flag_that_fixes_it() {
        let error = check_kv_dtype(2, KvCacheDtype::F32).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("device cuda:2: a KV cache in f32")
                && message.contains("--kv-cache-dtype bf16"),
            "{message}"
        );
        assert!(check_kv_dtype(0, KvCacheDtype::Bf16).is_ok());
    }
}
