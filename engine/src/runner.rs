//! Driving a few sequences through a backend without a scheduler, for offline jobs — building
//! training data for the lookahead module, evaluating eviction policies — that run whole
//! sequences to completion and need their logits (or teacher-forced tokens), not a serving loop.
//!
//! [`OfflineRunner`] owns a backend and a free list of its blocks; [`RunnerSequence`] is one
//! sequence's tokens and block table. Blocks are taken as a sequence grows, handed back after an
//! eviction exactly as the engine loop does (the blocks past the kept entries), and released when
//! the caller is done with the sequence. The serving path uses the scheduler instead; this one
//! exists so offline tools exercise the very same forward pass, eviction and compaction code.

use std::sync::Arc;

use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::batch::{
    CompactedPrefix, ForwardBatch, ForwardOutput, LogitsRequest, SequenceEviction, SequenceInput,
};
use crate::error::{EngineError, Result};
use crate::eviction::EvictionPolicy;
use crate::lookahead::LookaheadModule;
use crate::model::Model;
use crate::sampling::Sampler;

/// One sequence run by an [`OfflineRunner`].
#[derive(Debug, Default)]
pub struct RunnerSequence {
    /// Every token fed so far; the next token's RoPE position is `tokens.len()`.
    pub tokens: Vec<u32>,
    /// Cache entries held: `tokens.len()` until an eviction compacts the prompt.
    num_cached: usize,
    block_table: Vec<u32>,
    /// Set when an eviction kept a different number of entries per layer (PyramidKV).
    layer_kept: Option<Vec<usize>>,
    compacted_entries: usize,
}

impl RunnerSequence {
    /// Cache entries the sequence holds.
    pub fn num_cached(&self) -> usize {
        self.num_cached
    }

    /// Blocks the sequence holds.
    pub fn num_blocks(&self) -> usize {
        self.block_table.len()
    }
}

/// A backend plus the bookkeeping a scheduler would do for a handful of sequences.
pub struct OfflineRunner {
    backend: Box<dyn Backend>,
    block_size: usize,
    free: Vec<u32>,
    output: ForwardOutput,
}

impl OfflineRunner {
    /// A CPU runner over `model` with room for `max_entries` cache entries in blocks of
    /// `block_size`, and the lookahead module if the caller evaluates that policy.
    pub fn cpu(
        model: &Model,
        block_size: usize,
        max_entries: usize,
        lookahead: Option<Arc<LookaheadModule>>,
    ) -> Result<Self> {
        let num_blocks = max_entries.div_ceil(block_size).max(1);
        let backend = CpuBackend::new(model, block_size, num_blocks, lookahead)?;
        Ok(Self::new(Box::new(backend)))
    }

    /// A runner over any backend; every block of its pool starts free.
    pub fn new(backend: Box<dyn Backend>) -> Self {
        let geometry = backend.geometry();
        let (block_size, num_blocks) = (geometry.block_size, geometry.num_blocks);
        Self {
            backend,
            block_size,
            free: (0..num_blocks as u32).rev().collect(),
            output: ForwardOutput::default(),
        }
    }

    /// The logits of the last pass.
    pub fn output(&self) -> &ForwardOutput {
        &self.output
    }

    /// Blocks not held by any sequence.
    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Gives `sequence`'s blocks back to the pool; the sequence is empty afterwards.
    pub fn release(&mut self, sequence: &mut RunnerSequence) {
        self.free.extend(sequence.block_table.drain(..).rev());
        *sequence = RunnerSequence::default();
    }

    /// Appends `tokens` to every listed sequence in one forward pass; `logits[i]` says which rows
    /// sequence `i` wants back (see [`Self::output`]).
    ///
    /// Fails with [`EngineError::InvalidBatch`] when the pool has too few free blocks, and with
    /// the backend's errors; the sequences are unchanged then.
    pub fn step(
        &mut self,
        work: &mut [(&mut RunnerSequence, &[u32], LogitsRequest)],
    ) -> Result<()> {
        let policies = vec![None; work.len()];
        self.run(work, &policies)
    }

    /// Runs `tokens` as `sequence`'s last prefill chunk with `policy`, then returns the blocks
    /// past the kept entries to the pool, as the engine loop does. Returns what eviction kept, or
    /// `None` when the policy left the prompt alone (full cache, or a prompt within budget).
    pub fn prefill_evicting(
        &mut self,
        sequence: &mut RunnerSequence,
        tokens: &[u32],
        logits: LogitsRequest,
        policy: EvictionPolicy,
    ) -> Result<Option<SequenceEviction>> {
        self.run(&mut [(sequence, tokens, logits)], &[Some(policy)])?;
        let Some(report) = self.output.evictions.pop() else {
            return Ok(None);
        };
        sequence.num_cached = report.kept_entries;
        sequence.compacted_entries = report.kept_entries;
        let uneven = report.layer_kept.iter().any(|&k| k != report.kept_entries);
        sequence.layer_kept = uneven.then(|| report.layer_kept.clone());
        let keep = report.kept_entries.div_ceil(self.block_size);
        self.free.extend(sequence.block_table.drain(keep..).rev());
        Ok(Some(report))
    }

    /// Continues each prompt with its sampler until a stop token (kept in the output) or
    /// `max_new_tokens`, running up to `concurrency` sequences per forward pass; returns the new
    /// tokens of each prompt, in order. `on_done` is called once per finished prompt (progress).
    ///
    /// Fails when the pool cannot hold `concurrency` sequences of the longest prompt plus
    /// `max_new_tokens`, or with the backend's errors.
    pub fn generate(
        &mut self,
        prompts: &[Vec<u32>],
        mut samplers: Vec<Sampler>,
        max_new_tokens: usize,
        stop_tokens: &[u32],
        concurrency: usize,
        mut on_done: impl FnMut(),
    ) -> Result<Vec<Vec<u32>>> {
        assert_eq!(prompts.len(), samplers.len(), "one sampler per prompt");
        let mut outputs = vec![Vec::new(); prompts.len()];
        let indices: Vec<usize> = (0..prompts.len()).collect();
        for wave in indices.chunks(concurrency.max(1)) {
            let mut sequences: Vec<RunnerSequence> =
                wave.iter().map(|_| RunnerSequence::default()).collect();
            let mut pending: Vec<Vec<u32>> = wave.iter().map(|&i| prompts[i].clone()).collect();
            let mut live: Vec<usize> = (0..wave.len()).collect();
            while !live.is_empty() {
                let mut work: Vec<(&mut RunnerSequence, &[u32], LogitsRequest)> = Vec::new();
                let mut order = Vec::new();
                for (slot, seq) in sequences.iter_mut().enumerate() {
                    if live.contains(&slot) {
                        work.push((seq, &pending[slot][..], LogitsRequest::Last));
                        order.push(slot);
                    }
                }
                let result = self.step(&mut work);
                drop(work);
                if let Err(e) = result {
                    for seq in &mut sequences {
                        self.release(seq);
                    }
                    return Err(e);
                }
                for (row, &slot) in order.iter().enumerate() {
                    let index = wave[slot];
                    let token = samplers[index].sample(self.output.last_row(row)).token_id;
                    outputs[index].push(token);
                    pending[slot] = vec![token];
                    if stop_tokens.contains(&token) || outputs[index].len() >= max_new_tokens {
                        live.retain(|&s| s != slot);
                        on_done();
                    }
                }
            }
            for seq in &mut sequences {
                self.release(seq);
            }
        }
        Ok(outputs)
    }

    fn run(
        &mut self,
        work: &mut [(&mut RunnerSequence, &[u32], LogitsRequest)],
        policies: &[Option<EvictionPolicy>],
    ) -> Result<()> {
        let needed: usize = work
            .iter()
            .map(|(seq, tokens, _)| {
                (seq.num_cached + tokens.len())
                    .div_ceil(self.block_size)
                    .saturating_sub(seq.block_table.len())
            })
            .sum();
        if needed > self.free.len() {
            return Err(EngineError::InvalidBatch {
                message: format!(
                    "the runner's pool has {} free blocks, the pass needs {needed}",
                    self.free.len()
                ),
            });
        }
        let taken = self.free.len();
        for (seq, tokens, _) in work.iter_mut() {
            while seq.block_table.len() * self.block_size < seq.num_cached + tokens.len() {
                seq.block_table
                    .push(self.free.pop().expect("counted above"));
            }
        }
        let batch = ForwardBatch {
            sequences: work
                .iter()
                .zip(policies)
                .map(|((seq, tokens, logits), policy)| SequenceInput {
                    token_ids: tokens,
                    first_position: seq.tokens.len(),
                    first_cache_entry: seq.num_cached,
                    block_table: &seq.block_table,
                    logits: *logits,
                    eviction: *policy,
                    compacted: seq.layer_kept.as_deref().map(|layer_kept| CompactedPrefix {
                        entries: seq.compacted_entries,
                        layer_kept,
                    }),
                })
                .collect(),
        };
        let result = self.backend.forward(&batch, &mut self.output);
        drop(batch);
        if let Err(e) = result {
            // Hand back the blocks this pass took, so a failed pass changes nothing.
            for (seq, _, _) in work.iter_mut() {
                let held = seq.num_cached.div_ceil(self.block_size);
                self.free
                    .extend(seq.block_table.drain(held.min(seq.block_table.len())..));
            }
            debug_assert_eq!(self.free.len(), taken);
            return Err(e);
        }
        for (seq, tokens, _) in work.iter_mut() {
            seq.tokens.extend_from_slice(tokens);
            seq.num_cached += tokens.len();
        }
        Ok(())
    }
}
