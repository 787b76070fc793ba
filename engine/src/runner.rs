//! Driving a few sequences through a backend without a scheduler, for offline jobs — building
//! training data for the lookahead module, evaluating eviction policies — that run whole
//! sequences to completion and need their logits (or teacher-forced tokens), not a serving loop;
//! and for the engine's own tests, which prove the backend follows block tables by handing blocks
//! out in a scrambled order ([`OfflineRunner::with_scrambled_blocks`]).
//!
//! [`OfflineRunner`] owns a backend and the scheduler crate's [`BlockAllocator`] over its pool;
//! [`RunnerSequence`] is one sequence's tokens, [`BlockTable`] and [`Compaction`]. Blocks are
//! taken as a sequence grows, handed back after an eviction exactly as the engine loop does (the
//! blocks past the kept entries, through [`BlockTable::release_from`]), and released when the
//! caller is done with the sequence. The serving path uses the scheduler instead; this one exists
//! so offline tools exercise the very same forward pass, eviction and compaction code.

use std::sync::Arc;

use glimpse_scheduler::{BlockAllocator, BlockId, BlockTable};

use crate::backend::{self, Backend, Device, KvGeometry};
use crate::batch::{
    Compaction, ForwardBatch, ForwardOutput, LogitsRequest, SequenceEviction, SequenceInput,
};
use crate::config::KvCacheDtype;
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
    blocks: BlockTable,
    /// Set when an eviction kept a different number of entries per layer (PyramidKV).
    compaction: Option<Compaction>,
}

impl RunnerSequence {
    /// Cache entries the sequence holds.
    pub fn num_cached(&self) -> usize {
        self.num_cached
    }

    /// The blocks holding the sequence's cache entries, in entry order.
    pub fn block_table(&self) -> &[BlockId] {
        self.blocks.as_slice()
    }
}

/// What [`OfflineRunner::prefill_evicting`] did to a sequence.
#[derive(Debug)]
pub struct Evicted {
    /// What eviction kept, as the backend reported it.
    pub report: SequenceEviction,
    /// The sequence's blocks past `ceil(kept_entries / block_size)`, in table order, now back in
    /// the pool and first in line to be handed out again.
    pub released_blocks: Vec<BlockId>,
}

/// A backend plus the bookkeeping a scheduler would do for a handful of sequences.
pub struct OfflineRunner {
    backend: Box<dyn Backend>,
    allocator: BlockAllocator,
    /// The block tables of the pass being built, as the backend reads them; reused across passes.
    tables: Vec<u32>,
    output: ForwardOutput,
}

impl OfflineRunner {
    /// A CPU runner over `model` with room for `max_entries` cache entries in blocks of
    /// `block_size`, stored in `kv_dtype`, and the lookahead module if the caller evaluates that
    /// policy.
    ///
    /// Fails with the backend's construction errors.
    pub fn cpu(
        model: &Model,
        block_size: usize,
        max_entries: usize,
        kv_dtype: KvCacheDtype,
        lookahead: Option<Arc<LookaheadModule>>,
    ) -> Result<Self> {
        Self::on(
            Device::Cpu,
            model,
            block_size,
            max_entries,
            kv_dtype,
            lookahead,
        )
    }

    /// [`Self::cpu`] on `device`.
    ///
    /// Fails with the backend's construction errors ([`backend::create_backend`]).
    pub fn on(
        device: Device,
        model: &Model,
        block_size: usize,
        max_entries: usize,
        kv_dtype: KvCacheDtype,
        lookahead: Option<Arc<LookaheadModule>>,
    ) -> Result<Self> {
        let num_blocks = max_entries.div_ceil(block_size).max(1);
        let backend =
            backend::create_backend(device, model, block_size, num_blocks, kv_dtype, lookahead)?;
        Ok(Self::new(backend))
    }

    /// A runner over any backend; every block of its pool starts free and is handed out in
    /// ascending order.
    pub fn new(backend: Box<dyn Backend>) -> Self {
        let allocator = BlockAllocator::new(backend.geometry().num_blocks);
        Self {
            backend,
            allocator,
            tables: Vec::new(),
            output: ForwardOutput::default(),
        }
    }

    /// This runner, handing its blocks out alternately from the two ends of the pool
    /// (`n−1, 0, n−2, 1, …`), so consecutive blocks of a sequence are never adjacent: tests use
    /// it to prove the backend follows the block table rather than assuming contiguous blocks.
    ///
    /// Panics if a sequence already holds blocks (the caller owes a fresh runner).
    pub fn with_scrambled_blocks(mut self) -> Self {
        let num_blocks = self.allocator.num_total();
        assert_eq!(
            self.allocator.num_free(),
            num_blocks,
            "blocks are scrambled before any is handed out"
        );
        let mut order = Vec::with_capacity(num_blocks);
        let (mut lo, mut hi) = (0, num_blocks as u32);
        while lo < hi {
            hi -= 1;
            order.push(BlockId(hi));
            if lo < hi {
                order.push(BlockId(lo));
                lo += 1;
            }
        }
        // The pool is a stack: take every block, then free them in reverse hand-out order.
        while self.allocator.allocate().is_some() {}
        for &block in order.iter().rev() {
            self.allocator
                .free(block)
                .expect("every block of the pool was just taken once");
        }
        self
    }

    /// The shape of the backend's KV pool.
    pub fn geometry(&self) -> &KvGeometry {
        self.backend.geometry()
    }

    /// The logits of the last pass.
    pub fn output(&self) -> &ForwardOutput {
        &self.output
    }

    /// Blocks not held by any sequence.
    pub fn num_free_blocks(&self) -> usize {
        self.allocator.num_free()
    }

    /// Gives `sequence`'s blocks back to the pool; the sequence is empty afterwards.
    pub fn release(&mut self, sequence: &mut RunnerSequence) {
        sequence.blocks.release_from(0, &mut self.allocator);
        *sequence = RunnerSequence::default();
    }

    /// Appends `tokens` to every listed sequence in one forward pass; `logits[i]` says which rows
    /// sequence `i` wants back (see [`Self::output`]).
    ///
    /// Fails with [`EngineError::InvalidBatch`] when the pool has too few free blocks, and with
    /// the backend's errors; the sequences and the pool are unchanged then.
    pub fn step(
        &mut self,
        work: &mut [(&mut RunnerSequence, &[u32], LogitsRequest)],
    ) -> Result<()> {
        let policies = vec![None; work.len()];
        self.run(work, &policies)
    }

    /// Runs `tokens` as `sequence`'s last prefill chunk with `policy`, then returns the blocks
    /// past the kept entries to the pool, as the engine loop does. Returns what eviction kept and
    /// released, or `None` when the policy left the prompt alone (full cache, or a prompt within
    /// budget).
    ///
    /// Fails as [`Self::step`] does.
    pub fn prefill_evicting(
        &mut self,
        sequence: &mut RunnerSequence,
        tokens: &[u32],
        logits: LogitsRequest,
        policy: EvictionPolicy,
    ) -> Result<Option<Evicted>> {
        self.run(&mut [(sequence, tokens, logits)], &[Some(policy)])?;
        debug_assert!(
            self.output.evictions.len() <= 1,
            "a pass of one sequence reports at most one eviction"
        );
        let Some(report) = self.output.evictions.pop() else {
            return Ok(None);
        };
        sequence.num_cached = report.kept_entries;
        sequence.compaction = report.compaction();
        let keep = self.geometry().blocks_for(report.kept_entries);
        let released_blocks = sequence.blocks.as_slice()[keep..].to_vec();
        sequence.blocks.release_from(keep, &mut self.allocator);
        Ok(Some(Evicted {
            report,
            released_blocks,
        }))
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
        let geometry = *self.backend.geometry();
        let missing = |seq: &RunnerSequence, tokens: &[u32]| {
            geometry
                .blocks_for(seq.num_cached + tokens.len())
                .saturating_sub(seq.blocks.len())
        };
        let needed: usize = work
            .iter()
            .map(|(seq, tokens, _)| missing(seq, tokens))
            .sum();
        if !self.allocator.can_allocate(needed) {
            return Err(EngineError::InvalidBatch {
                message: format!(
                    "the runner's pool has {} free blocks, the pass needs {needed}",
                    self.allocator.num_free()
                ),
            });
        }
        let free_before = self.allocator.num_free();
        self.tables.clear();
        let mut spans = Vec::with_capacity(work.len());
        for (seq, tokens, _) in work.iter_mut() {
            let count = missing(seq, tokens);
            seq.blocks.grow(count, &mut self.allocator);
            let start = self.tables.len();
            self.tables
                .extend(seq.blocks.as_slice().iter().map(|block| block.0));
            spans.push(start..self.tables.len());
        }
        let batch = ForwardBatch {
            sequences: work
                .iter()
                .zip(policies)
                .zip(spans)
                .map(|(((seq, tokens, logits), policy), span)| SequenceInput {
                    token_ids: tokens,
                    first_position: seq.tokens.len(),
                    first_cache_entry: seq.num_cached,
                    block_table: &self.tables[span],
                    logits: *logits,
                    eviction: *policy,
                    compacted: seq.compaction.as_ref().map(Compaction::as_prefix),
                    compact_into: None,
                })
                .collect(),
        };
        let result = self.backend.forward(&batch, &mut self.output);
        drop(batch);
        if let Err(e) = result {
            // Hand back the blocks this pass took, so a failed pass changes nothing.
            for (seq, _, _) in work.iter_mut() {
                let held = geometry.blocks_for(seq.num_cached);
                seq.blocks.release_from(held, &mut self.allocator);
            }
            debug_assert_eq!(self.allocator.num_free(), free_before);
            return Err(e);
        }
        for (seq, tokens, _) in work.iter_mut() {
            seq.tokens.extend_from_slice(tokens);
            seq.num_cached += tokens.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::eviction::Policy;

    const BLOCK_SIZE: usize = 4;

    fn runner(num_blocks: usize) -> OfflineRunner {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_gqa");
        let model = Model::load(&dir).unwrap();
        OfflineRunner::cpu(
            &model,
            BLOCK_SIZE,
            num_blocks * BLOCK_SIZE,
            KvCacheDtype::F32,
            None,
        )
        .unwrap()
    }

    fn prompt(len: usize) -> Vec<u32> {
        (1..=len as u32).collect()
    }

    fn ids(blocks: &[BlockId]) -> Vec<u32> {
        blocks.iter().map(|block| block.0).collect()
    }

    #[test]
    fn scrambled_blocks_come_alternately_from_both_ends_of_the_pool() {
        let mut runner = runner(6).with_scrambled_blocks();
        let mut seq = RunnerSequence::default();
        let tokens = prompt(6 * BLOCK_SIZE);
        runner
            .step(&mut [(&mut seq, &tokens, LogitsRequest::Last)])
            .unwrap();
        assert_eq!(ids(seq.block_table()), [5, 0, 4, 1, 3, 2]);
        runner.release(&mut seq);
        assert_eq!(runner.num_free_blocks(), 6);
        runner.allocator.check_invariants();
    }

    #[test]
    fn eviction_hands_back_the_blocks_past_the_kept_entries_first_in_line() {
        let mut runner = runner(8);
        let mut seq = RunnerSequence::default();
        let policy = EvictionPolicy {
            policy: Policy::streaming_llm(),
            budget: 2 * BLOCK_SIZE,
        };
        let evicted = runner
            .prefill_evicting(
                &mut seq,
                &prompt(5 * BLOCK_SIZE),
                LogitsRequest::Last,
                policy,
            )
            .unwrap()
            .expect("a prompt over budget is evicted");
        assert_eq!(seq.num_cached(), 2 * BLOCK_SIZE);
        assert_eq!(ids(seq.block_table()), [0, 1]);
        assert_eq!(ids(&evicted.released_blocks), [2, 3, 4]);
        assert_eq!(runner.num_free_blocks(), 6);
        let mut other = RunnerSequence::default();
        runner
            .step(&mut [(&mut other, &prompt(3 * BLOCK_SIZE), LogitsRequest::None)])
            .unwrap();
        assert_eq!(other.block_table(), evicted.released_blocks);
        runner.allocator.check_invariants();
    }

    #[test]
    fn a_failed_pass_changes_neither_the_sequence_nor_the_pool() {
        let mut runner = runner(8);
        let mut seq = RunnerSequence::default();
        runner
            .step(&mut [(&mut seq, &prompt(BLOCK_SIZE + 1), LogitsRequest::None)])
            .unwrap();
        // No lookahead module is loaded, so the backend refuses the policy.
        let policy = EvictionPolicy {
            policy: Policy::lookahead(),
            budget: BLOCK_SIZE,
        };
        let refused = runner.prefill_evicting(
            &mut seq,
            &prompt(3 * BLOCK_SIZE),
            LogitsRequest::Last,
            policy,
        );
        assert!(refused.is_err());
        assert_eq!(
            (seq.tokens.len(), seq.num_cached()),
            (BLOCK_SIZE + 1, BLOCK_SIZE + 1)
        );
        assert_eq!(ids(seq.block_table()), [0, 1]);
        assert_eq!(runner.num_free_blocks(), 6);
        let too_long = prompt(8 * BLOCK_SIZE);
        let mut other = RunnerSequence::default();
        assert!(matches!(
            runner.step(&mut [(&mut other, &too_long, LogitsRequest::None)]),
            Err(EngineError::InvalidBatch { .. })
        ));
        assert_eq!(runner.num_free_blocks(), 6);
        runner.allocator.check_invariants();
    }
}
