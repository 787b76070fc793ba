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
use super::evict::EvictionScratch;
use super::gpu::Gpu;
use super::kernels::{Kernels, PrefillIndex, Rotation};
use super::launch::{DecodeSplit, PrefillTiling, SHARED_MEMORY_LIMIT, score_reduce_shared_bytes};
use super::pass::{Attention, Evicting, Matrix, Pass, PassBuffers};
use super::pool::DevicePool;
use super::scratch::Scratch;
use super::step::StepIndex;
use super::weights::{DeviceLookahead, DeviceWeights};
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
    /// Per sequence, its rows that want logits.
    logits_rows: Vec<LogitsRows>,
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
        KvCacheDtype::Fp8 => Err(EngineError::CudaUnsupported {
            ordinal,
            what: "a KV cache in fp8 (the CUDA kernels store keys and values in bf16; pass `--kv-cache-dtype bf16`, or run `--kv-cache-dtype fp8` on the CPU)".into(),
        }),
    }
}

impl OnDevice {
    fn unsupported(&self, what: String) -> EngineError {
        EngineError::CudaUnsupported {
            ordinal: self.gpu.ordinal,
            what,
        }
    }

    /// How attention runs for a batch laid out as `sequences` with contexts of at most
    /// `max_context` entries, checked against the kernels' launch limits before anything is
    /// written (as are the eviction scoring queries, `n_q · head_dim` floats of shared memory).
    /// Decode attention when every sequence has one row; the partial results' buffer is filled
    /// in by the caller.
    fn plan_attention(
        &self,
        sequences: &[SequenceRows],
        max_context: usize,
    ) -> Result<AttentionPlan> {
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
        let one_row_each = sequences.iter().all(|rows| rows.rows().len() == 1);
        let decode = one_row_each.then(|| DecodeSplit::choose(max_context, group, d));
        if let Some(Some(split)) = decode {
            return Ok(AttentionPlan::Decode(split));
        }
        PrefillTiling::choose(max_rows, group, d)
            .map(AttentionPlan::Prefill)
            .ok_or_else(|| {
                self.unsupported(format!(
                    "attention with {group} query heads per KV head of head_dim {d} (one row's tile exceeds {SHARED_MEMORY_LIMIT} bytes of shared memory)"
                ))
            })
    }

    /// Token embeddings of every row, and the module's rows in place of a lookahead row's.
    fn embed(&self, pass: &Pass<'_>) -> Result<()> {
        let (gpu, h) = (pass.gpu, self.config.hidden_size);
        let hidden = pass.at(pass.b.layout.hidden);
        let table = gpu.ptr(&self.weights.embed_tokens);
        self.kernels
            .embedding(table, pass.b.ids, hidden, pass.b.rows, h)?;
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
        logits_rows: &[LogitsRows],
        out: &mut ForwardOutput,
    ) -> Result<()> {
        let (gpu, c) = (pass.gpu, &self.config);
        let (h, vocab) = (c.hidden_size, c.vocab_size);
        let a = &pass.b.layout;
        let (gathered, normed) = (pass.at(a.logits_hidden), pass.at(a.logits_normed));
        out.rows.clear();
        let mut next = 0;
        for rows in logits_rows {
            out.rows.push(RowRange {
                start: next,
                count: rows.count,
            });
            gpu.copy(
                pass.at(a.hidden + rows.first * h),
                gathered.at(next * h),
                rows.count * h,
            )?;
            next += rows.count;
        }
        pass.rms_norm(gathered, gpu.ptr(&self.weights.norm), normed, next)?;
        let head = match &self.weights.lm_head {
            Some(lm_head) => Matrix::of(gpu, lm_head),
            None => Matrix {
                weight: gpu.ptr(&self.weights.embed_tokens),
                bias: None,
                in_features: h,
                out_features: vocab,
            },
        };
        let logits = pass.at(a.logits);
        pass.linear(normed, next, &head, logits, false, None)?;
        out.vocab_size = vocab;
        out.logits.resize(next * vocab, 0.0);
        gpu.read(logits, &mut out.logits)
    }
}

/// Which attention a pass runs, before its buffers are sized.
#[derive(Debug, Clone, Copy)]
enum AttentionPlan {
    Prefill(PrefillTiling),
    Decode(DecodeSplit),
}

/// One sequence's rows that want logits: the last `count` of its token rows, from `first`.
#[derive(Debug, Clone, Copy)]
struct LogitsRows {
    first: usize,
    count: usize,
}

impl CudaBackend {
    /// Lays out the batch, checks it against the kernels' limits, sizes the step's buffers and
    /// uploads its index arrays: everything a pass needs before its first launch.
    fn prepare(&mut self, batch: &ForwardBatch<'_>) -> Result<PassBuffers> {
        let (m, step) = (&self.model, &mut self.step);
        let (gpu, c) = (&m.gpu, &m.config);
        plan_sequences(batch, c.num_layers, &mut step.sequences);
        let max_context = batch.sequences.iter().map(|s| s.num_entries_after()).max();
        let attention = m.plan_attention(&step.sequences, max_context.unwrap_or(0))?;
        let block_size = m.pool.geometry().block_size;
        step.index
            .fill(batch, &step.sequences, block_size, c.num_layers)?;
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
            let first = rows.first_row + rows.num_tokens - count;
            step.logits_rows.push(LogitsRows { first, count });
        }
        let rows = step.index.num_rows;
        let logits_rows = step.logits_rows.iter().map(|r| r.count).sum();
        let rank = m.lookahead.as_ref().map_or(0, |module| module.rank);
        let layout = ActivationLayout::new(c, rows, logits_rows, rank);
        let f32s = step.activations.ensure(gpu, layout.len)?;
        let rounded = step.rounded.ensure(gpu, layout.rounded_len)?;
        if rows > step.ones_len {
            step.ones.upload(gpu, &vec![1.0; rows])?;
            step.ones_len = rows;
        }
        let ones = step.ones.ensure(gpu, rows)?;
        let indices = step.indices.upload(gpu, &step.index.packed)?;
        let attention = match attention {
            AttentionPlan::Prefill(tiling) => Attention::Prefill(tiling),
            AttentionPlan::Decode(split) => {
                let len = split.partials_len(batch.sequences.len(), c.num_heads);
                let partials = step.decode_partials.ensure(gpu, (2 + c.head_dim) * len)?;
                Attention::Decode(split, partials)
            }
        };
        let o = step.index.offsets;
        Ok(PassBuffers {
            layout,
            f32s,
            rounded,
            ones,
            rows,
            ids: indices.at(o.ids),
            rope: Rotation {
                positions: indices.at(o.positions),
                cos: gpu.ptr(&m.weights.rope_cos),
                sin: gpu.ptr(&m.weights.rope_sin),
            },
            slots: indices.at(o.slots),
            prefill: PrefillIndex {
                block_tables: indices.at(o.block_tables),
                max_blocks_per_seq: step.index.tables.max_blocks_per_seq,
                cu_seqlens: indices.at(o.cu_seqlens),
                context_lens: indices.at(o.context_lens),
                num_lookahead: indices.at(o.num_lookahead),
                skip_starts: indices.at(o.skip_starts),
                skip_ends: indices.at(o.skip_ends),
                num_seqs: batch.sequences.len(),
                max_rows: step.index.max_rows,
            },
            attention,
        })
    }
}

impl Backend for CudaBackend {
    fn geometry(&self) -> &KvGeometry {
        self.model.pool.geometry()
    }

    fn forward(&mut self, batch: &ForwardBatch<'_>, out: &mut ForwardOutput) -> Result<()> {
        let m = &self.model;
        m.gpu.bind()?;
        BatchLimits {
            config: &m.config,
            geometry: m.pool.geometry(),
            lookahead_tokens: m.lookahead.as_ref().map(|module| module.num_tokens),
        }
        .validate(batch)?;
        let started = Instant::now();
        let buffers = self.prepare(batch)?;
        let (m, step) = (&self.model, &mut self.step);
        let pass = Pass {
            gpu: &m.gpu,
            kernels: &m.kernels,
            config: &m.config,
            lora_rows: &step.lora_rows,
            lookahead: m.lookahead.as_ref(),
            b: buffers,
        };
        m.embed(&pass)?;
        for (l, w) in m.weights.layers.iter().enumerate() {
            let lora = m.lookahead.as_ref().map(|module| &module.layers[l]);
            let evicting = Evicting {
                sequences: &mut step.sequences,
                scratch: &mut step.eviction,
            };
            pass.layer((w, lora), (&m.pool, l), batch, evicting)?;
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
        let timed = eviction.scoring + eviction.selection + eviction.compaction;
        out.profile = ForwardProfile {
            scoring: eviction.scoring,
            selection: eviction.selection,
            compaction: eviction.compaction,
            other: started.elapsed().saturating_sub(timed),
            ..ForwardProfile::default()
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_and_fp8_kv_pools_are_refused_naming_the_flag_that_fixes_it() {
        for dtype in [KvCacheDtype::F32, KvCacheDtype::Fp8] {
            let message = check_kv_dtype(2, dtype).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("device cuda:2: a KV cache in {dtype}"))
                    && message.contains("--kv-cache-dtype bf16"),
                "{message}"
            );
        }
        assert!(check_kv_dtype(0, KvCacheDtype::Bf16).is_ok());
    }
}
