//! The CPU backend: the Llama-family forward pass over a paged KV pool in host memory.
//!
//! Activations are f32; the cache is f32, bf16 or fp8 (`--kv-cache-dtype`, see [`kv_cache`]; fp8
//! scales are calibrated when the backend is built, see [`kv_scales`]). The model's matrices are packed into [`CpuWeights`] when the
//! backend is built, in the model's dtype — f32, or bf16 at half the bytes, widened exactly in
//! registers by the GEMM, so a bf16 checkpoint gives the bits it gave widened to f32 — and its
//! vectors (norms, biases) are widened to f32. The hot kernels are our own — a batch-invariant GEMM ([`linear`]), paged attention
//! that reads K/V in place ([`attention`]) and row-wise ops ([`ops`]) — and every buffer of a step
//! is reused from the previous one, so a step allocates only when the batch grows.
//!
//! A layer is two pre-norm residual blocks of numbered steps, `attention_block` and `mlp_block`,
//! every linear layer of which goes through [`Projector::project`]; between them, an evicting
//! sequence scores, selects and compacts that layer's cache ([`evict`]).

mod attention;
mod attention_kernels;
mod evict;
mod kv_cache;
mod kv_scales;
pub mod linear;
mod lora;
/// Public so the CUDA kernels' shim tests compare against these very functions.
pub mod ops;
mod project;
mod q8;
mod rows;
mod scoring_keys;
mod stored;
#[cfg(test)]
mod tests;
mod weights;

use std::sync::Arc;
use std::time::{Duration, Instant};

use attention::{AttentionShape, KeptDots, QueryContext, TileTimes, paged_attention};
use evict::ScoringInput;
use kv_cache::CpuKvCache;
use kv_scales::Calibration;
use lora::{LayerLora, PackedLora};
use project::Projector;
use rows::LookaheadKv;
use weights::{CpuLayer, CpuWeights};

use super::eviction_pass::{EvictionTimes, SequenceRows, plan_sequences};
use super::validate::BatchLimits;
use super::{Backend, KvGeometry};
use crate::batch::{ForwardBatch, ForwardOutput, ForwardProfile, RowRange};
use crate::config::{KvCacheDtype, ModelConfig};
use crate::error::Result;
use crate::eviction::HeadLayout;
use crate::lookahead::LookaheadModule;
use crate::model::{Model, RopeTables};

/// Runs a model on the CPU with a paged KV pool of `num_blocks` blocks.
pub struct CpuBackend {
    config: ModelConfig,
    weights: CpuWeights,
    /// LookaheadKV's learned rows and adapters, if the server loaded a module.
    lookahead: Option<Arc<LookaheadModule>>,
    /// The module's adapters, packed for the GEMM.
    lora: Option<PackedLora>,
    rope: RopeTables,
    cache: CpuKvCache,
    buffers: StepBuffers,
}

/// Where one row of the flat batch goes.
#[derive(Debug, Clone, Copy)]
struct TokenSlot {
    sequence: usize,
    position: usize,
    /// The row's K/V destination, or `None` for a lookahead row (its K/V stay in
    /// [`StepBuffers::lookahead_kv`], never in the cache).
    cache: Option<CacheSlot>,
    /// Cache entries attended by this row (its own included for a token row).
    num_entries: usize,
}

/// A block and an offset in it.
#[derive(Debug, Clone, Copy)]
struct CacheSlot {
    block: usize,
    offset: usize,
}

/// Activation buffers reused across steps (`T` = tokens in the batch).
#[derive(Default)]
struct StepBuffers {
    slots: Vec<TokenSlot>,
    /// Each sequence's rows and pending eviction, in batch order.
    sequences: Vec<SequenceRows>,
    /// Keys and values of the lookahead rows of the current layer.
    lookahead_kv: LookaheadKv,
    /// LoRA scratch and GEMM time of the projections.
    projector: Projector,
    /// Residual stream `[T, hidden]`.
    hidden: Vec<f32>,
    /// Normalised input of a sub-layer `[T, hidden]`.
    normed: Vec<f32>,
    /// `[T, (heads + 2·kv_heads)·head_dim]`.
    qkv: Vec<f32>,
    /// Queries split out of `qkv`, `[T, heads·head_dim]`.
    queries: Vec<f32>,
    /// Attention output `[T, heads·head_dim]`.
    attention: Vec<f32>,
    /// Output of a projection back to the residual width `[T, hidden]`.
    projected: Vec<f32>,
    /// `[T, 2·intermediate]`.
    gate_up: Vec<f32>,
    /// `[T, intermediate]`.
    activated: Vec<f32>,
    /// Final hidden states of the rows that want logits `[R, hidden]`.
    logits_hidden: Vec<f32>,
    /// Time in attention during the current forward pass.
    attention_time: Duration,
    /// Thread time of the attention tiles during the current forward pass.
    tile_times: TileTimes,
    /// The lookahead rows' scaled dot products with the prompt keys from the current layer's
    /// attention, which their eviction scoring reuses.
    kept_dots: KeptDots,
}

/// The rows `rows` of a flat `[T, width]` buffer.
fn row_span(rows: std::ops::Range<usize>, width: usize) -> std::ops::Range<usize> {
    rows.start * width..rows.end * width
}

impl CpuBackend {
    /// Places `model` on the CPU — its matrices packed into [`CpuWeights`] in `model.dtype` —
    /// with a KV pool of `num_blocks` × `block_size` entries stored in `kv_dtype`,
    /// with `lookahead`'s rows and adapters for the LookaheadKV policy if given (its shapes were
    /// checked against the model when it was loaded). An fp8 pool's scales are calibrated here,
    /// by a prefill of a fixed text into a small f32 pool first ([`kv_scales`]).
    ///
    /// Fails when the geometry is invalid, the pool does not fit in memory, or (fp8) the model's
    /// tokenizer does not load.
    pub fn new(
        model: &Model,
        block_size: usize,
        num_blocks: usize,
        kv_dtype: KvCacheDtype,
        lookahead: Option<Arc<LookaheadModule>>,
    ) -> Result<Self> {
        let geometry = KvGeometry::new(&model.config, block_size, num_blocks, kv_dtype)?;
        // Lookahead rows sit after the longest prompt: their positions need rotary angles too.
        let lookahead_positions = lookahead.as_ref().map_or(0, |m| m.num_tokens);
        let weights = CpuWeights::new(&model.weights, model.dtype);
        tracing::info!(
            dtype = %model.dtype,
            weight_bytes = weights.size_bytes(),
            "weights packed for the CPU"
        );
        let calibration = match kv_dtype {
            KvCacheDtype::Fp8 => Some(Calibration::new(model, geometry)?),
            KvCacheDtype::F32 | KvCacheDtype::Bf16 => None,
        };
        let first_pool = calibration.as_ref().map_or(geometry, |c| c.geometry);
        let mut backend = Self {
            config: model.config.clone(),
            weights,
            rope: RopeTables::new(
                &model.config.rope,
                model.config.head_dim,
                model.config.max_model_len + lookahead_positions,
            )?,
            lora: lookahead.as_deref().map(PackedLora::new),
            lookahead,
            cache: CpuKvCache::new(first_pool)?,
            buffers: StepBuffers::default(),
        };
        if let Some(calibration) = calibration {
            let scales = calibration.run(&mut backend)?;
            backend.cache = CpuKvCache::with_scales(geometry, scales)?;
            backend.buffers = StepBuffers::default();
        }
        Ok(backend)
    }

    /// What [`BatchLimits::validate`] checks a batch against.
    fn limits(&self) -> BatchLimits<'_> {
        BatchLimits {
            config: &self.config,
            geometry: self.cache.geometry(),
            lookahead_tokens: self.lookahead.as_ref().map(|module| module.num_tokens),
        }
    }

    /// Lays out the flat batch ([`plan_sequences`]) and each of its rows' position and cache slot.
    fn plan_rows(&mut self, batch: &ForwardBatch<'_>) {
        let bs = self.cache.geometry().block_size;
        let b = &mut self.buffers;
        let num_lookahead_sequences =
            plan_sequences(batch, self.config.num_layers, &mut b.sequences);
        b.slots.clear();
        for (sequence, (seq, rows)) in batch.sequences.iter().zip(&b.sequences).enumerate() {
            for i in 0..seq.token_ids.len() {
                let entry = seq.first_cache_entry + i;
                b.slots.push(TokenSlot {
                    sequence,
                    position: seq.first_position + i,
                    cache: Some(CacheSlot {
                        block: seq.block_table[entry / bs] as usize,
                        offset: entry % bs,
                    }),
                    num_entries: entry + 1,
                });
            }
            let prompt_len = seq.num_entries_after();
            for i in 0..rows.num_lookahead {
                b.slots.push(TokenSlot {
                    sequence,
                    position: prompt_len + i,
                    cache: None,
                    num_entries: prompt_len,
                });
            }
        }
        if let Some(module) = &self.lookahead {
            b.lookahead_kv.reset(
                num_lookahead_sequences,
                module.num_tokens,
                self.config.num_kv_heads,
                self.config.head_dim,
            );
        }
    }

    fn embed(&mut self, batch: &ForwardBatch<'_>) {
        let h = self.config.hidden_size;
        let hidden = &mut self.buffers.hidden;
        let rows = self.buffers.slots.len();
        resize(hidden, rows * h);
        let mut out = hidden.chunks_exact_mut(h);
        for (seq, layout) in batch.sequences.iter().zip(&self.buffers.sequences) {
            for (&token, row) in seq.token_ids.iter().zip(&mut out) {
                self.weights.embed_tokens.copy_row(token as usize, row);
            }
            if let (Some(module), true) = (&self.lookahead, layout.num_lookahead > 0) {
                let embeddings = module.embeddings[..layout.num_lookahead * h].chunks_exact(h);
                for (embedding, row) in embeddings.zip(&mut out) {
                    row.copy_from_slice(embedding);
                }
            }
        }
    }

    /// Decoder layer `l`: the attention block, then this layer's eviction (its cache is final once
    /// its attention ran), then the MLP block.
    fn layer(&mut self, batch: &ForwardBatch<'_>, l: usize) -> Result<()> {
        self.attention_block(batch, l);
        self.evict_layer(batch, l)?;
        self.mlp_block(l);
        Ok(())
    }

    /// `hidden += o_proj(attention(rope(qkv_proj(rms_norm(hidden)))))` over the flat batch, storing
    /// every row's K/V (`T` rows; `H`, `KV` query and KV heads of width `D`).
    fn attention_block(&mut self, batch: &ForwardBatch<'_>, l: usize) {
        let (c, w, b) = (&self.config, &self.weights.layers[l], &mut self.buffers);
        let module = self.lora.as_ref();
        // 1. normed = rms_norm(hidden): [T, hidden].
        resize(&mut b.normed, b.slots.len() * c.hidden_size);
        ops::rms_norm(&b.hidden, &w.input_layernorm, c.rms_norm_eps, &mut b.normed);
        // 2. qkv = qkv_proj(normed): [T, (H + 2·KV)·D], rows [q | k | v].
        let lora = LayerLora::of(module, l, &b.sequences, |layer| &layer.qkv);
        b.projector
            .project(&b.normed, &w.qkv_proj, &mut b.qkv, lora);
        let attention_start = Instant::now();
        // 3. q/k norm and RoPE; k, v → cache (lookahead rows: side buffer); queries: [T, H·D].
        store_kv(c, w, &self.rope, &mut self.cache, b, l);
        // 4. attention = softmax(q·Kᵀ/√D)·V over each row's entries: [T, H·D].
        attend(c, &self.cache, b, batch, l);
        b.attention_time += attention_start.elapsed();
        // 5. hidden += o_proj(attention): [T, hidden].
        let lora = LayerLora::of(module, l, &b.sequences, |layer| &layer.o);
        b.projector
            .project(&b.attention, &w.o_proj, &mut b.projected, lora);
        ops::add_in_place(&mut b.hidden, &b.projected);
    }

    /// `hidden += down_proj(silu(gate_proj(x)) · up_proj(x))` with `x = rms_norm(hidden)`
    /// (`T` rows, `I` intermediate width).
    fn mlp_block(&mut self, l: usize) {
        let (c, w, b) = (&self.config, &self.weights.layers[l], &mut self.buffers);
        let module = self.lora.as_ref();
        // 1. normed = rms_norm(hidden): [T, hidden].
        ops::rms_norm(
            &b.hidden,
            &w.post_attention_layernorm,
            c.rms_norm_eps,
            &mut b.normed,
        );
        // 2. gate_up = gate_up_proj(normed): [T, 2·I], rows [gate | up].
        let lora = LayerLora::of(module, l, &b.sequences, |layer| &layer.gate_up);
        b.projector
            .project(&b.normed, &w.gate_up_proj, &mut b.gate_up, lora);
        // 3. activated = silu(gate) · up: [T, I].
        let inter = c.intermediate_size;
        resize(&mut b.activated, b.slots.len() * inter);
        ops::silu_mul(&b.gate_up, inter, &mut b.activated);
        // 4. hidden += down_proj(activated): [T, hidden].
        let lora = LayerLora::of(module, l, &b.sequences, |layer| &layer.down);
        b.projector
            .project(&b.activated, &w.down_proj, &mut b.projected, lora);
        ops::add_in_place(&mut b.hidden, &b.projected);
    }

    /// Scores, selects and compacts layer `l` of every sequence that evicts in this pass, from the
    /// layer's RoPE'd queries (and lookahead keys) of the attention block.
    fn evict_layer(&mut self, batch: &ForwardBatch<'_>, l: usize) -> Result<()> {
        let (c, b) = (&self.config, &mut self.buffers);
        let q_width = c.num_heads * c.head_dim;
        let layout = HeadLayout {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        for (seq, rows) in batch.sequences.iter().zip(b.sequences.iter_mut()) {
            let Some(pending) = rows.eviction.as_mut() else {
                continue;
            };
            let scoring_rows = pending.scoring_rows(rows.first_row, rows.num_tokens);
            let queries = &b.queries[row_span(scoring_rows.clone(), q_width)];
            let extra_keys =
                (rows.num_lookahead > 0).then(|| b.lookahead_kv.key_rows(rows.lookahead_index));
            let input = ScoringInput {
                layout,
                queries,
                extra_keys,
                dots: b.kept_dots.rows(scoring_rows),
            };
            let compact_into = seq.compact_into.unwrap_or(seq.block_table);
            pending.run_layer(&mut self.cache, l, seq.block_table, compact_into, input)?;
        }
        Ok(())
    }

    fn logits(&mut self, batch: &ForwardBatch<'_>, out: &mut ForwardOutput) {
        let h = self.config.hidden_size;
        let b = &mut self.buffers;
        out.rows.clear();
        b.logits_hidden.clear();
        for (seq, rows) in batch.sequences.iter().zip(&b.sequences) {
            let count = seq.logits.num_rows(rows.num_tokens);
            out.rows.push(RowRange {
                start: b.logits_hidden.len() / h,
                count,
            });
            let end = rows.first_row + rows.num_tokens;
            b.logits_hidden
                .extend_from_slice(&b.hidden[row_span(end - count..end, h)]);
        }
        let rows = b.logits_hidden.len() / h;
        resize(&mut b.normed, rows * h);
        ops::rms_norm(
            &b.logits_hidden,
            &self.weights.norm,
            self.config.rms_norm_eps,
            &mut b.normed[..rows * h],
        );
        out.vocab_size = self.config.vocab_size;
        resize(&mut out.logits, rows * self.config.vocab_size);
        let x = &b.normed[..rows * h];
        match &self.weights.lm_head {
            Some(lm_head) => b.projector.project(x, lm_head, &mut out.logits, None),
            None => {
                let started = Instant::now();
                linear::matmul_packed(x, rows, &self.weights.embed_tokens, &mut out.logits);
                b.projector.matmul_time += started.elapsed();
            }
        }
    }
}

impl Backend for CpuBackend {
    fn geometry(&self) -> &KvGeometry {
        self.cache.geometry()
    }

    fn forward(&mut self, batch: &ForwardBatch<'_>, out: &mut ForwardOutput) -> Result<()> {
        // The pass runs on one of rayon's threads, so each of its parallel loops (a decode step
        // has ~4 per layer) starts on a thread already in the pool; called from outside it,
        // every loop would hand its work to the pool and put the caller to sleep until woken.
        rayon::scope(|_| self.forward_in_pool(batch, out))
    }
}

impl CpuBackend {
    /// [`Backend::forward`], on a thread of rayon's pool.
    fn forward_in_pool(&mut self, batch: &ForwardBatch<'_>, out: &mut ForwardOutput) -> Result<()> {
        self.limits().validate(batch)?;
        let started = Instant::now();
        self.buffers.projector.matmul_time = Duration::ZERO;
        self.buffers.projector.lora_time = Duration::ZERO;
        self.buffers.attention_time = Duration::ZERO;
        self.buffers.tile_times = TileTimes::default();
        self.plan_rows(batch);
        self.embed(batch);
        for layer in 0..self.config.num_layers {
            self.layer(batch, layer)?;
        }
        self.logits(batch, out);
        out.evictions.clear();
        let mut eviction = EvictionTimes::default();
        for (index, rows) in self.buffers.sequences.iter_mut().enumerate() {
            if let Some(pending) = rows.eviction.take() {
                eviction += pending.times();
                out.evictions.push(pending.finish(index));
            }
        }
        out.profile = self.buffers.profile(started.elapsed(), eviction);
        Ok(())
    }
}

impl StepBuffers {
    /// The pass's time by kind of work, of `total` in all, with its sequences' `eviction` steps.
    fn profile(&self, total: Duration, eviction: EvictionTimes) -> ForwardProfile {
        let (matmul, lora) = (self.projector.matmul_time, self.projector.lora_time);
        let attention = self.attention_time;
        let tiles = self.tile_times.plain + self.tile_times.extra;
        let lookahead_share = match tiles.is_zero() {
            true => 0.0,
            false => self.tile_times.extra.as_secs_f64() / tiles.as_secs_f64(),
        };
        let EvictionTimes {
            scoring,
            selection,
            compaction,
        } = eviction;
        let timed = matmul + lora + attention + scoring + selection + compaction;
        ForwardProfile {
            matmul,
            lora,
            attention,
            lookahead_attention: attention.mul_f64(lookahead_share),
            scoring,
            selection,
            compaction,
            other: total.saturating_sub(timed),
        }
    }
}

/// Sets `buf` to `len` elements, reusing its allocation.
fn resize(buf: &mut Vec<f32>, len: usize) {
    buf.resize(len, 0.0);
}

/// Step 3 of the attention block, row by row: Qwen3's per-head q/k norm, RoPE at the row's
/// position, K/V into the row's cache slot (a lookahead row's into the side buffer instead, never
/// the cache), and the query into `b.queries` (`[T, H·D]`).
fn store_kv(
    c: &ModelConfig,
    w: &CpuLayer,
    rope: &RopeTables,
    cache: &mut CpuKvCache,
    b: &mut StepBuffers,
    l: usize,
) {
    let (d, q_width, kv_width) = (
        c.head_dim,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
    );
    let qkv_width = c.qkv_width();
    resize(&mut b.queries, b.slots.len() * q_width);
    for (t, slot) in b.slots.iter().enumerate() {
        let row = &mut b.qkv[t * qkv_width..(t + 1) * qkv_width];
        let (q, kv) = row.split_at_mut(q_width);
        let (k, v) = kv.split_at_mut(kv_width);
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            ops::rms_norm_heads_in_place(q, qn, c.rms_norm_eps);
            ops::rms_norm_heads_in_place(k, kn, c.rms_norm_eps);
        }
        q.chunks_mut(d)
            .for_each(|head| rope.rotate(head, slot.position));
        k.chunks_mut(d)
            .for_each(|head| rope.rotate(head, slot.position));
        match slot.cache {
            Some(at) => cache.write(l, at.block, at.offset, k, v),
            None => {
                let rows = &b.sequences[slot.sequence];
                let row = t - rows.lookahead_rows().start;
                b.lookahead_kv.write(rows.lookahead_index, row, k, v);
            }
        }
        b.queries[t * q_width..(t + 1) * q_width].copy_from_slice(q);
    }
}

/// Step 4 of the attention block: paged attention of `b.queries` over layer `l` of the cache into
/// `b.attention` (`[T, H·D]`). A row sees its sequence's entries up to its own, minus a compacted
/// layer's unused tail; a lookahead row also sees the lookahead rows up to its own.
fn attend(
    c: &ModelConfig,
    cache: &CpuKvCache,
    b: &mut StepBuffers,
    batch: &ForwardBatch<'_>,
    l: usize,
) {
    let d = c.head_dim;
    resize(&mut b.attention, b.slots.len() * c.num_heads * d);
    let shape = AttentionShape {
        num_heads: c.num_heads,
        num_kv_heads: c.num_kv_heads,
        head_dim: d,
        block_size: cache.geometry().block_size,
        scale: 1.0 / (d as f32).sqrt(),
    };
    let contexts: Vec<QueryContext<'_>> = b
        .slots
        .iter()
        .map(|slot| {
            let seq = &batch.sequences[slot.sequence];
            let rows = &b.sequences[slot.sequence];
            QueryContext {
                block_table: seq.block_table,
                num_entries: slot.num_entries,
                skip: seq.compacted.map_or(0..0, |p| p.layer_kept[l]..p.entries),
                extra: slot.cache.is_none().then(|| {
                    let count = slot.position - rows.prompt_len() + 1;
                    b.lookahead_kv.extra(rows.lookahead_index, count)
                }),
            }
        })
        .collect();
    let times = paged_attention(
        &b.queries,
        &contexts,
        cache.layer(l),
        shape,
        &mut b.attention,
        &mut b.kept_dots,
    );
    b.tile_times = b.tile_times + times;
}
