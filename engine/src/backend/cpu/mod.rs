//! The CPU backend: the Llama-family forward pass over a paged KV pool in host memory.
//!
//! Activations and the cache are f32 (weights stored as bf16/f16 are widened at load: CPUs here
//! have no fast bf16 GEMM). The hot kernels are our own — a batch-invariant GEMM ([`linear`]),
//! paged attention that reads K/V in place ([`attention`]) and row-wise ops ([`ops`]) — and every
//! buffer of a step is reused from the previous one, so a step allocates only when the batch grows.

mod attention;
mod kv_cache;
pub mod linear;
mod ops;

use std::sync::Arc;
use std::time::{Duration, Instant};

use attention::{AttentionShape, QueryContext, paged_attention};
use kv_cache::CpuKvCache;

use super::{Backend, KvGeometry};
use crate::batch::{ForwardBatch, ForwardOutput, ForwardProfile, LogitsRequest, RowRange};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::model::{Linear, Model, ModelWeights, RopeTables};

/// Runs a model on the CPU with a paged KV pool of `num_blocks` blocks.
pub struct CpuBackend {
    config: ModelConfig,
    weights: Arc<ModelWeights>,
    rope: RopeTables,
    cache: CpuKvCache,
    buffers: StepBuffers,
}

/// Where one token of the flat batch goes.
#[derive(Debug, Clone, Copy)]
struct TokenSlot {
    sequence: usize,
    position: usize,
    block: usize,
    offset_in_block: usize,
    /// Entries attended by this token, its own included.
    num_entries: usize,
}

/// Activation buffers reused across steps (`T` = tokens in the batch).
#[derive(Default)]
struct StepBuffers {
    slots: Vec<TokenSlot>,
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
    /// Time in GEMMs and attention during the current forward pass.
    matmul_time: Duration,
    attention_time: Duration,
}

impl CpuBackend {
    /// Places `model` on the CPU with an f32 KV pool of `num_blocks` × `block_size` entries.
    pub fn new(model: &Model, block_size: usize, num_blocks: usize) -> Result<Self> {
        let geometry = KvGeometry::new(&model.config, block_size, num_blocks, 4)?;
        Ok(Self {
            config: model.config.clone(),
            weights: Arc::clone(&model.weights),
            rope: RopeTables::new(
                &model.config.rope,
                model.config.head_dim,
                model.config.max_model_len,
            ),
            cache: CpuKvCache::new(geometry),
            buffers: StepBuffers::default(),
        })
    }

    /// Checks the batch against the model and pool before anything is written.
    fn validate(&self, batch: &ForwardBatch<'_>) -> Result<()> {
        let geometry = self.cache.geometry();
        let bad = |message: String| Err(EngineError::InvalidBatch { message });
        for (i, seq) in batch.sequences.iter().enumerate() {
            if seq.token_ids.is_empty() {
                return bad(format!("sequence {i} has no tokens"));
            }
            if let Some(t) = seq
                .token_ids
                .iter()
                .find(|&&t| t as usize >= self.config.vocab_size)
            {
                return bad(format!(
                    "sequence {i}: token id {t} >= vocabulary size {}",
                    self.config.vocab_size
                ));
            }
            let last_position = seq.first_position + seq.token_ids.len();
            if last_position > self.rope.max_positions() {
                return bad(format!(
                    "sequence {i}: position {} beyond the model's maximum length {}",
                    last_position - 1,
                    self.rope.max_positions()
                ));
            }
            let needed = geometry.blocks_for(seq.num_entries_after());
            if seq.block_table.len() < needed {
                return bad(format!(
                    "sequence {i}: {} entries need {needed} blocks, block table has {}",
                    seq.num_entries_after(),
                    seq.block_table.len()
                ));
            }
            if let Some(b) = seq.block_table[..needed]
                .iter()
                .find(|&&b| b as usize >= geometry.num_blocks)
            {
                return bad(format!(
                    "sequence {i}: block {b} outside the pool of {}",
                    geometry.num_blocks
                ));
            }
        }
        Ok(())
    }

    fn plan_slots(&mut self, batch: &ForwardBatch<'_>) {
        let bs = self.cache.geometry().block_size;
        let slots = &mut self.buffers.slots;
        slots.clear();
        for (sequence, seq) in batch.sequences.iter().enumerate() {
            for i in 0..seq.token_ids.len() {
                let entry = seq.first_cache_entry + i;
                slots.push(TokenSlot {
                    sequence,
                    position: seq.first_position + i,
                    block: seq.block_table[entry / bs] as usize,
                    offset_in_block: entry % bs,
                    num_entries: entry + 1,
                });
            }
        }
    }

    fn embed(&mut self, batch: &ForwardBatch<'_>) {
        let h = self.config.hidden_size;
        let hidden = &mut self.buffers.hidden;
        resize(hidden, batch.num_tokens() * h);
        let tokens = batch.sequences.iter().flat_map(|s| s.token_ids);
        for (&token, row) in tokens.zip(hidden.chunks_exact_mut(h)) {
            self.weights.embed_tokens.copy_row(token as usize, row);
        }
    }

    fn layer(&mut self, layer_index: usize, contexts: &[QueryContext<'_>]) {
        let c = &self.config;
        let w = &self.weights.layers[layer_index];
        let b = &mut self.buffers;
        let tokens = b.slots.len();
        let (d, q_width, kv_width) = (
            c.head_dim,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
        );

        // 1. Attention block: norm → fused qkv → (q/k norm) → RoPE → cache write → attention → o_proj.
        resize(&mut b.normed, tokens * c.hidden_size);
        ops::rms_norm(&b.hidden, &w.input_layernorm, c.rms_norm_eps, &mut b.normed);
        timed(&mut b.matmul_time, || {
            linear(&b.normed, tokens, &w.qkv_proj, &mut b.qkv)
        });
        let attention_start = Instant::now();
        resize(&mut b.queries, tokens * q_width);
        let qkv_width = c.qkv_width();
        for (t, slot) in b.slots.iter().enumerate() {
            let row = &mut b.qkv[t * qkv_width..(t + 1) * qkv_width];
            let (q, kv) = row.split_at_mut(q_width);
            let (k, v) = kv.split_at_mut(kv_width);
            if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
                ops::rms_norm_heads_in_place(q, qn, c.rms_norm_eps);
                ops::rms_norm_heads_in_place(k, kn, c.rms_norm_eps);
            }
            q.chunks_mut(d)
                .for_each(|head| self.rope.rotate(head, slot.position));
            k.chunks_mut(d)
                .for_each(|head| self.rope.rotate(head, slot.position));
            self.cache
                .write(layer_index, slot.block, slot.offset_in_block, k, v);
            b.queries[t * q_width..(t + 1) * q_width].copy_from_slice(q);
        }
        resize(&mut b.attention, tokens * q_width);
        let shape = AttentionShape {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: d,
            block_size: self.cache.geometry().block_size,
            scale: 1.0 / (d as f32).sqrt(),
        };
        paged_attention(
            &b.queries,
            contexts,
            self.cache.layer(layer_index),
            shape,
            &mut b.attention,
        );
        b.attention_time += attention_start.elapsed();
        timed(&mut b.matmul_time, || {
            linear(&b.attention, tokens, &w.o_proj, &mut b.projected)
        });
        ops::add_in_place(&mut b.hidden, &b.projected);

        // 2. MLP block: norm → fused gate/up → SwiGLU → down.
        ops::rms_norm(
            &b.hidden,
            &w.post_attention_layernorm,
            c.rms_norm_eps,
            &mut b.normed,
        );
        timed(&mut b.matmul_time, || {
            linear(&b.normed, tokens, &w.gate_up_proj, &mut b.gate_up)
        });
        resize(&mut b.activated, tokens * c.intermediate_size);
        ops::silu_mul(&b.gate_up, c.intermediate_size, &mut b.activated);
        timed(&mut b.matmul_time, || {
            linear(&b.activated, tokens, &w.down_proj, &mut b.projected)
        });
        ops::add_in_place(&mut b.hidden, &b.projected);
    }

    fn logits(&mut self, batch: &ForwardBatch<'_>, out: &mut ForwardOutput) {
        let h = self.config.hidden_size;
        let b = &mut self.buffers;
        out.rows.clear();
        b.logits_hidden.clear();
        let mut token_start = 0;
        for seq in &batch.sequences {
            let len = seq.token_ids.len();
            let count = seq.logits.num_rows(len);
            out.rows.push(RowRange {
                start: b.logits_hidden.len() / h,
                count,
            });
            let first = match seq.logits {
                LogitsRequest::None => token_start + len,
                LogitsRequest::Last => token_start + len - 1,
                LogitsRequest::All => token_start,
            };
            b.logits_hidden
                .extend_from_slice(&b.hidden[first * h..(token_start + len) * h]);
            token_start += len;
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
        let started = Instant::now();
        match &self.weights.lm_head {
            Some(lm_head) => linear(&b.normed[..rows * h], rows, lm_head, &mut out.logits),
            None => linear::matmul_packed(
                &b.normed[..rows * h],
                rows,
                &self.weights.embed_tokens,
                &mut out.logits,
            ),
        }
        b.matmul_time += started.elapsed();
    }
}

impl Backend for CpuBackend {
    fn geometry(&self) -> &KvGeometry {
        self.cache.geometry()
    }

    fn forward(&mut self, batch: &ForwardBatch<'_>, out: &mut ForwardOutput) -> Result<()> {
        self.validate(batch)?;
        let started = Instant::now();
        self.buffers.matmul_time = Duration::ZERO;
        self.buffers.attention_time = Duration::ZERO;
        self.plan_slots(batch);
        self.embed(batch);
        // What each token attends to is the same in every layer: built once per pass.
        let contexts: Vec<QueryContext<'_>> = self
            .buffers
            .slots
            .iter()
            .map(|slot| QueryContext {
                block_table: batch.sequences[slot.sequence].block_table,
                num_entries: slot.num_entries,
                skip: 0..0,
            })
            .collect();
        for layer in 0..self.config.num_layers {
            self.layer(layer, &contexts);
        }
        self.logits(batch, out);
        let (matmul, attention) = (self.buffers.matmul_time, self.buffers.attention_time);
        out.profile = ForwardProfile {
            matmul,
            attention,
            other: started.elapsed().saturating_sub(matmul + attention),
        };
        Ok(())
    }
}

/// Runs `f`, adding its wall time to `total`.
fn timed(total: &mut Duration, f: impl FnOnce()) {
    let started = Instant::now();
    f();
    *total += started.elapsed();
}

/// Sets `buf` to `len` elements, reusing its allocation.
fn resize(buf: &mut Vec<f32>, len: usize) {
    buf.resize(len, 0.0);
}

/// `y = x·Wᵀ + b` into `y` (resized to `[rows, out_features]`).
fn linear(x: &[f32], rows: usize, layer: &Linear, y: &mut Vec<f32>) {
    resize(y, rows * layer.out_features);
    linear::matmul_packed(x, rows, &layer.weight, y);
    if let Some(bias) = &layer.bias {
        ops::add_bias(y, bias);
    }
}
