//! The continuous-batching policy: who runs this step, who waits, who is preempted.
//!
//! Owns: the waiting queue, the running list, the sequences and the block pool. Must not know:
//! tensors, threads, channels or clocks — the caller drives it (the protocol of raft-rs's
//! `RawNode`): [`Scheduler::schedule`] returns a [`Plan`], the engine runs it and reports with
//! [`Scheduler::update`]; [`Scheduler::abort`] and [`Scheduler::apply_eviction`] may come
//! between.
//!
//! Policy (vLLM V1, `vllm/v1/core/sched/scheduler.py`): no prefill or decode phase; every
//! sequence's computed tokens catch up with its known tokens under a per-step token budget.
//! 1. Running sequences first, in arrival order; a long prefill takes what budget is left (a
//!    chunk). A sequence needing a block when none is free preempts the most recently arrived
//!    running sequence by recompute (blocks freed, counters reset, to the front of the waiting
//!    queue) — itself, if it is the newest.
//! 2. Only if nothing was preempted this step, admit waiting sequences FCFS while budget and
//!    `max_num_seqs` allow. Admission reserves the blocks of the whole prefill, so a prefill
//!    never preempts anyone midway; a head that does not fit blocks the queue (no overtaking).
//!
//! KV eviction and admission: a sequence that evicts after its last prefill chunk
//! ([`Scheduler::apply_eviction`]) returns its trailing blocks that same step, and admission
//! reserves only prompts (decode growth is allocated block by block), so the freed blocks admit
//! the next requests at once; no estimate of the kept size is needed up front. The refusal
//! bound in [`Scheduler::add`] stays the unshrunk size, because a preempted sequence
//! recomputes its whole prompt and output before it can evict again.
//!
//! Prefix caching (docs/design.md §7): admission takes the longest run of the prompt's full
//! blocks found in the cache, capped so the prefill still computes at least its last token and
//! its last chunk's scoring window ([`crate::LastChunk::min_tokens`]), and prefills the rest.
//! Full prompt blocks are published once the step that computed them is reported
//! ([`Scheduler::update`]); finish, abort and preemption leave them cached. An evicting
//! sequence with cached blocks reserves fresh blocks to compact into, so no eviction ever
//! writes a cached block. Blocks filled after the prompt are never published: after an
//! eviction a sequence's entries no longer correspond to its token prefix.
//!
//! Consequence kept as an invariant: every running sequence arrived before every waiting one,
//! and both lists are in arrival order, so the newest running sequence is the last one.
//!
//! Per step the cost is O(running + admitted + finished); nothing is allocated per token.

use std::collections::{HashMap, VecDeque};

use crate::block_allocator::BlockAllocator;
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::ids::{BlockId, SeqId};
use crate::plan::{DecodeStep, FinishedSeq, Plan, PrefillChunk, StepResult};
use crate::prefix_cache::{BlockHash, BlockHasher};
use crate::sequence::{FinishReason, LastChunk, Request, SeqStatus, Sequence, SequenceInfo};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// What [`Scheduler::apply_eviction`] gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvictionOutcome {
    /// Cache entries dropped.
    pub evicted_entries: usize,
    /// Blocks the eviction spared the pool: blocks of the prefill's entries −
    /// `ceil(kept / block_size)` (released prompt blocks may stay cached, see docs/design.md §7).
    pub released_blocks: usize,
}

/// Whether making room for a sequence's next tokens succeeded.
enum Room {
    Made,
    /// The sequence itself was the newest running one and was preempted.
    SelfPreempted,
}

/// What admitting a waiting sequence takes ([`Scheduler::fit_admission`]).
struct Admission {
    prefill_tokens: usize,
    /// Cached blocks holding the prefill's first entries.
    hits: Vec<BlockId>,
    /// Blocks to allocate: the rest of the prefill, then `scratch`.
    new_blocks: usize,
    scratch: usize,
}

/// The scheduler state machine. See the module doc for the protocol and policy.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    allocator: BlockAllocator,
    seqs: HashMap<SeqId, Sequence>,
    /// Arrival order; preempted sequences re-enter at the front.
    waiting: VecDeque<SeqId>,
    /// Arrival order.
    running: Vec<SeqId>,
    /// Finished since the last plan, still in `seqs` until reported.
    finished: Vec<SeqId>,
    /// Sequences the last plan prefilled: [`Scheduler::update`] publishes their full blocks.
    prefilled: Vec<SeqId>,
    hasher: BlockHasher,
    next_arrival: u64,
}

impl Scheduler {
    /// A scheduler with an all-free pool of `config.num_blocks`.
    ///
    /// Fails with the error of [`SchedulerConfig::validate`].
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            allocator: BlockAllocator::new(config.num_blocks),
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::with_capacity(config.max_num_seqs),
            finished: Vec::new(),
            prefilled: Vec::new(),
            hasher: BlockHasher::new(config.block_size),
            next_arrival: 0,
            config,
        })
    }

    /// The validated limits the scheduler runs under.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The block pool, for its counts (metrics: blocks total, free, used).
    pub fn allocator(&self) -> &BlockAllocator {
        &self.allocator
    }

    /// Sequences queued (new or preempted), for the waiting-requests gauge.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences holding blocks, for the running-requests gauge.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Whether any sequence is waiting, running or not yet reported finished.
    pub fn has_unfinished(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// Counters of a known sequence (including one finished but not yet reported).
    pub fn sequence(&self, seq: SeqId) -> Option<SequenceInfo> {
        self.seqs.get(&seq).map(Sequence::info)
    }

    /// The blocks of a known sequence, in cache entry order, for building slot mappings.
    pub fn block_table(&self, seq: SeqId) -> Option<&[BlockId]> {
        self.seqs.get(&seq).map(|s| s.block_table.as_slice())
    }

    /// The hashes of `prompt`'s full blocks for [`Request::block_hashes`]; empty while prefix
    /// caching is off.
    pub fn hash_prompt(&self, prompt: &[u32]) -> Vec<BlockHash> {
        if !self.config.enable_prefix_caching {
            return Vec::new();
        }
        self.hasher.hash_prompt(prompt)
    }

    /// Queues a request at the back of the waiting queue.
    ///
    /// Refuses, with the limit and the value, a request that could never finish: an empty
    /// prompt, `max_tokens == 0`, prompt + `max_tokens` over `max_model_len`, or more blocks at
    /// its largest than the pool holds. Its largest footprint is a recompute after preemption
    /// of prompt + `max_tokens − 1` tokens (the last sampled token is never fed back); KV
    /// eviction does not lower it, because a recompute prefills in full before any eviction.
    /// A request that could not also hold its scratch blocks at that size (an eviction into
    /// fresh blocks) stays out of the prefix cache rather than being refused.
    pub fn add(&mut self, mut request: Request) -> Result<()> {
        let seq = request.id;
        if request.num_prompt_tokens == 0 {
            return Err(SchedulerError::EmptyPrompt { seq });
        }
        if request.max_tokens == 0 {
            return Err(SchedulerError::ZeroMaxTokens { seq });
        }
        let total_tokens = request.num_prompt_tokens.saturating_add(request.max_tokens);
        if total_tokens > self.config.max_model_len {
            return Err(SchedulerError::ExceedsMaxModelLen {
                seq,
                limit: self.config.max_model_len,
                value: total_tokens,
            });
        }
        let peak_blocks = self.config.blocks_for(total_tokens - 1);
        if peak_blocks > self.config.num_blocks {
            return Err(SchedulerError::ExceedsKvPool {
                seq,
                limit: self.config.num_blocks,
                value: peak_blocks,
            });
        }
        let last_chunk = request.last_chunk.min_tokens.max(1) + request.last_chunk.extra_rows;
        if last_chunk > self.config.max_num_batched_tokens {
            return Err(SchedulerError::LastChunkExceedsBudget {
                seq,
                limit: self.config.max_num_batched_tokens,
                value: last_chunk,
            });
        }
        if self.seqs.contains_key(&seq) {
            return Err(SchedulerError::DuplicateSequence { seq });
        }
        let scratch = self.scratch_blocks(&request.last_chunk, total_tokens - 1);
        if !self.config.enable_prefix_caching || peak_blocks + scratch > self.config.num_blocks {
            request.block_hashes.clear();
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        self.seqs
            .insert(seq, Sequence::new(request, arrival, peak_blocks));
        self.waiting.push_back(seq);
        Ok(())
    }

    /// Ends a sequence now and frees its blocks; it is reported in the next plan with
    /// [`FinishReason::Abort`]. Returns `false` (and does nothing) for an unknown or already
    /// finished sequence, so a late abort after finishing is harmless.
    ///
    /// Costs O(running + waiting) to unlink the sequence.
    pub fn abort(&mut self, seq: SeqId) -> bool {
        let Some(status) = self.seqs.get(&seq).map(|s| s.status) else {
            return false;
        };
        match status {
            SeqStatus::Finished(_) => return false,
            SeqStatus::Running => self.running.retain(|&id| id != seq),
            SeqStatus::Waiting | SeqStatus::Preempted => self.waiting.retain(|&id| id != seq),
        }
        self.finish(seq, FinishReason::Abort);
        true
    }

    /// Plans the next step. See [`Scheduler::schedule_into`].
    pub fn schedule(&mut self) -> Plan {
        let mut plan = Plan::default();
        self.schedule_into(&mut plan);
        plan
    }

    /// Plans the next step into `plan` (cleared first, buffers reused).
    ///
    /// Scheduled tokens count as computed at once. The caller owes an [`Scheduler::update`]
    /// with one output per sampled sequence before the next call; a sequence still owed an
    /// output is skipped.
    pub fn schedule_into(&mut self, plan: &mut Plan) {
        plan.clear();
        for seq in self.finished.drain(..) {
            let gone = self
                .seqs
                .remove(&seq)
                .expect("a finished sequence stays known until reported; a bug");
            let SeqStatus::Finished(reason) = gone.status else {
                panic!("{seq} listed as finished but is {:?}: a bug", gone.status);
            };
            plan.finished.push(FinishedSeq { seq, reason });
        }
        self.prefilled.clear();
        let mut budget = self.config.max_num_batched_tokens;
        let prefill_waits = self.schedule_running(plan, &mut budget);
        // vLLM's rule. Reserving prompts whole already implies it (the victim requeued at the
        // head needs more blocks than its preemption left free), the check keeps it explicit.
        if plan.preempted.is_empty() && !prefill_waits {
            self.admit_waiting(plan, &mut budget);
        }
        plan.num_batched_tokens = self.config.max_num_batched_tokens - budget;
        self.prefilled
            .extend(plan.prefills.iter().map(|chunk| chunk.seq));
    }

    /// Step 1 of the policy; preemptions land in `plan.preempted`. Returns whether a prefill
    /// is left unfinished this step (a partial chunk, or a last chunk whose window or extra
    /// rows did not fit): later prefills then wait too, so no request overtakes an earlier one
    /// to its first token.
    fn schedule_running(&mut self, plan: &mut Plan, budget: &mut usize) -> bool {
        let mut prefill_waits = false;
        let mut index = 0;
        while index < self.running.len() && *budget > 0 {
            let id = self.running[index];
            let seq = &self.seqs[&id];
            if seq.awaiting_output || (prefill_waits && seq.is_prefilling()) {
                index += 1;
                continue;
            }
            let Some((num_tokens, cost)) = seq.next_chunk(*budget) else {
                prefill_waits |= seq.is_prefilling();
                index += 1;
                continue;
            };
            let blocks_needed = self
                .config
                .blocks_for(
                    seq.reserved_entries()
                        .max(seq.num_cached_entries + num_tokens),
                )
                .saturating_sub(seq.num_entry_blocks());
            debug_assert!(
                seq.num_scratch_blocks == 0 || seq.is_prefilling(),
                "{id}: scratch blocks after its prefill; the engine owes apply_eviction"
            );
            if let Room::SelfPreempted = self.make_room(id, blocks_needed, plan) {
                break;
            }
            let seq = self
                .seqs
                .get_mut(&id)
                .expect("running sequence is known; a bug");
            seq.block_table.grow(blocks_needed, &mut self.allocator);
            Self::push_work(seq, num_tokens, plan);
            // A prefill that did not finish keeps the rest of the step from later prefills.
            prefill_waits |= seq.is_prefilling();
            *budget -= cost;
            index += 1;
        }
        prefill_waits
    }

    /// Preempts the newest running sequences until `blocks` are free for `id`.
    fn make_room(&mut self, id: SeqId, blocks: usize, plan: &mut Plan) -> Room {
        while !self.allocator.can_allocate(blocks) {
            let victim = self
                .running
                .pop()
                .expect("the sequence asking for room is running itself; a bug");
            self.preempt(victim, plan);
            if victim == id {
                return Room::SelfPreempted;
            }
        }
        Room::Made
    }

    /// Step 2 of the policy.
    fn admit_waiting(&mut self, plan: &mut Plan, budget: &mut usize) {
        while *budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let Some(admission) = self.fit_admission(&self.seqs[&id]) else {
                break;
            };
            let Admission {
                prefill_tokens,
                hits,
                new_blocks,
                scratch,
            } = admission;
            let hit_tokens = hits.len() * self.config.block_size;
            let seq = self
                .seqs
                .get_mut(&id)
                .expect("waiting sequence is known; a bug");
            seq.num_prefill_tokens = prefill_tokens;
            seq.num_computed_tokens = hit_tokens;
            seq.num_cached_entries = hit_tokens;
            let Some((num_tokens, cost)) = seq.next_chunk(*budget) else {
                // Too little budget left for even a first chunk: admitted next step (FCFS).
                seq.num_prefill_tokens = 0;
                seq.num_computed_tokens = 0;
                seq.num_cached_entries = 0;
                break;
            };
            self.waiting.pop_front();
            seq.status = SeqStatus::Running;
            for &block in &hits {
                self.allocator.reuse_cached(block);
                seq.block_table.push_cached(block);
            }
            seq.num_published_blocks = hits.len();
            seq.block_table.grow(new_blocks, &mut self.allocator);
            seq.num_scratch_blocks = scratch;
            if self.config.enable_prefix_caching {
                plan.prefix_cache.queried_tokens += prefill_tokens;
                plan.prefix_cache.hit_tokens += hit_tokens;
            }
            Self::push_work(seq, num_tokens, plan);
            let unfinished = seq.is_prefilling();
            *budget -= cost;
            self.running.push(id);
            if unfinished {
                // As in step 1: nobody admitted later may finish a prefill before this one.
                break;
            }
        }
    }

    /// What admitting `seq` now takes from the pool, or `None` when the pool cannot give it:
    /// its prefill's blocks, less the cached ones it reuses, plus the scratch blocks an
    /// eviction into fresh blocks needs.
    fn fit_admission(&self, seq: &Sequence) -> Option<Admission> {
        let prefill_tokens = seq.num_tokens();
        let hits = self.prefix_hits(seq, prefill_tokens);
        let scratch = if seq.block_hashes.is_empty() {
            0
        } else {
            self.scratch_blocks(&seq.last_chunk, prefill_tokens)
        };
        let new_blocks = self.config.blocks_for(prefill_tokens) - hits.len() + scratch;
        // Hit blocks no one holds leave the free count when reused.
        let revived = hits
            .iter()
            .filter(|&&block| self.allocator.ref_count(block) == Some(0))
            .count();
        self.allocator
            .can_allocate(new_blocks + revived)
            .then_some(Admission {
                prefill_tokens,
                hits,
                new_blocks,
                scratch,
            })
    }

    /// The cached blocks a prefill of `prefill_tokens` of `seq` starts from: the longest run of
    /// its block hashes found in the cache, backed off by whole blocks until the prefill still
    /// computes `max(1, min_tokens)` tokens (its last token's logits, and the scoring window
    /// of its last chunk).
    fn prefix_hits(&self, seq: &Sequence, prefill_tokens: usize) -> Vec<BlockId> {
        let computed_at_least = seq.last_chunk.min_tokens.max(1);
        let max_blocks = prefill_tokens.saturating_sub(computed_at_least) / self.config.block_size;
        seq.block_hashes
            .iter()
            .take(max_blocks)
            .map_while(|&hash| self.allocator.cached_block(hash))
            .collect()
    }

    /// Fresh blocks an evicting prefill of `prefill_tokens` compacts into when its prompt
    /// blocks may be cached; 0 when prefix caching is off or the prefill is not evicted.
    fn scratch_blocks(&self, last_chunk: &LastChunk, prefill_tokens: usize) -> usize {
        match last_chunk.eviction {
            Some(bound)
                if self.config.enable_prefix_caching && prefill_tokens > bound.over_tokens =>
            {
                let kept = bound.max_kept_entries.min(prefill_tokens).max(1);
                self.config.blocks_for(kept)
            }
            _ => 0,
        }
    }

    /// Records `num_tokens` of `seq`'s uncomputed tokens in the plan and counts them computed.
    fn push_work(seq: &mut Sequence, num_tokens: usize, plan: &mut Plan) {
        debug_assert!(num_tokens > 0, "scheduling zero tokens is a bug");
        if seq.is_prefilling() {
            let is_last_chunk = seq.num_computed_tokens + num_tokens == seq.num_prefill_tokens;
            plan.prefills.push(PrefillChunk {
                seq: seq.id,
                first_position: seq.num_computed_tokens,
                first_cache_entry: seq.num_cached_entries,
                num_tokens,
                is_last_chunk,
                compact_into_block: (is_last_chunk && seq.num_scratch_blocks > 0)
                    .then(|| seq.num_entry_blocks()),
            });
        } else {
            debug_assert_eq!(num_tokens, 1, "a decode feeds exactly one token; a bug");
            plan.decodes.push(DecodeStep {
                seq: seq.id,
                position: seq.num_computed_tokens,
                cache_entry: seq.num_cached_entries,
            });
        }
        seq.num_computed_tokens += num_tokens;
        seq.num_cached_entries += num_tokens;
        seq.awaiting_output = seq.num_computed_tokens == seq.num_tokens();
    }

    /// Preemption by recompute: blocks freed, counters reset, front of the waiting queue.
    fn preempt(&mut self, id: SeqId, plan: &mut Plan) {
        let seq = self
            .seqs
            .get_mut(&id)
            .expect("preempted sequence is known; a bug");
        seq.block_table.release_from(0, &mut self.allocator);
        seq.num_computed_tokens = 0;
        seq.num_cached_entries = 0;
        seq.num_prefill_tokens = 0;
        seq.num_published_blocks = 0;
        seq.num_scratch_blocks = 0;
        seq.awaiting_output = false;
        seq.status = SeqStatus::Preempted;
        self.waiting.push_front(id);
        plan.preempted.push(id);
    }

    /// Marks a sequence finished and frees its blocks; the caller has unlinked it already.
    fn finish(&mut self, id: SeqId, reason: FinishReason) {
        let seq = self
            .seqs
            .get_mut(&id)
            .expect("finished sequence is known; a bug");
        seq.block_table.release_from(0, &mut self.allocator);
        seq.num_scratch_blocks = 0;
        seq.awaiting_output = false;
        seq.status = SeqStatus::Finished(reason);
        self.finished.push(id);
    }

    /// Applies the engine's report on the last plan: publishes the full prompt blocks its
    /// prefill chunks computed in the prefix cache, appends sampled tokens and finishes
    /// sequences that stopped or reached `max_tokens`.
    ///
    /// Outputs for sequences no longer running (aborted meanwhile) are ignored, as is a second
    /// output for the same sequence. Fails, changing
    /// nothing, with [`SchedulerError::UnexpectedOutput`],
    /// [`SchedulerError::TooManyAppendedTokens`] or [`SchedulerError::MissingSampledToken`].
    pub fn update(&mut self, result: &StepResult) -> Result<()> {
        for output in &result.outputs {
            let seq = output.seq;
            let Some(known) = self.seqs.get(&seq) else {
                continue;
            };
            if known.status != SeqStatus::Running {
                continue;
            }
            if !known.awaiting_output {
                return Err(SchedulerError::UnexpectedOutput { seq });
            }
            if output.appended_tokens > 1 {
                return Err(SchedulerError::TooManyAppendedTokens {
                    seq,
                    limit: 1,
                    value: output.appended_tokens,
                });
            }
            if output.appended_tokens == 0 && output.finish.is_none() {
                return Err(SchedulerError::MissingSampledToken { seq });
            }
        }
        self.publish_prefilled();
        let mut any_finished = false;
        for output in &result.outputs {
            let Some(seq) = self.seqs.get_mut(&output.seq) else {
                continue;
            };
            if seq.status != SeqStatus::Running || !seq.awaiting_output {
                continue;
            }
            seq.awaiting_output = false;
            seq.num_output_tokens += output.appended_tokens;
            let reason = output
                .finish
                .or((seq.num_output_tokens >= seq.max_tokens).then_some(FinishReason::Length));
            if let Some(reason) = reason {
                self.finish(output.seq, reason);
                any_finished = true;
            }
        }
        if any_finished {
            let seqs = &self.seqs;
            self.running
                .retain(|id| seqs[id].status == SeqStatus::Running);
        }
        Ok(())
    }

    /// Publishes the full prompt blocks that the last plan's prefill chunks completed. A block
    /// whose prefix another block already holds stays private.
    fn publish_prefilled(&mut self) {
        for id in self.prefilled.drain(..) {
            if let Some(seq) = self.seqs.get_mut(&id)
                && seq.status == SeqStatus::Running
            {
                publish_computed(seq, &mut self.allocator, self.config.block_size);
            }
        }
    }

    /// Tells the scheduler that `seq` now keeps only its first `kept_entries` cache entries
    /// (the engine compacted them into the leading blocks, or into the fresh blocks from
    /// [`PrefillChunk::compact_into_block`] on, which then become the leading ones: the prompt
    /// blocks before them are released and stay cached). The trailing blocks are released at
    /// once; later tokens go to cache entry `kept_entries` onward while their positions keep
    /// counting from `num_computed_tokens`.
    ///
    /// Allowed for a running sequence whose prefill is complete (typically right after its last
    /// prefill chunk). Fails, changing nothing, with [`SchedulerError::NotRunning`],
    /// [`SchedulerError::EvictionDuringPrefill`] or [`SchedulerError::EvictionGrowsCache`].
    pub fn apply_eviction(&mut self, seq: SeqId, kept_entries: usize) -> Result<EvictionOutcome> {
        let Some(state) = self.seqs.get_mut(&seq) else {
            return Err(SchedulerError::NotRunning { seq });
        };
        if state.status != SeqStatus::Running {
            return Err(SchedulerError::NotRunning { seq });
        }
        if state.is_prefilling() {
            return Err(SchedulerError::EvictionDuringPrefill {
                seq,
                computed: state.num_computed_tokens,
                prefill: state.num_prefill_tokens,
            });
        }
        let scratch_entries = state.num_scratch_blocks * self.config.block_size;
        let limit = match state.num_scratch_blocks {
            0 => state.num_cached_entries,
            _ => state.num_cached_entries.min(scratch_entries),
        };
        if kept_entries > limit {
            return Err(SchedulerError::EvictionGrowsCache {
                seq,
                limit,
                value: kept_entries,
            });
        }
        // The prefill is computed (the engine evicts after running it): publish it before its
        // blocks go. That covers every prompt block, so nothing is published after, when the
        // compacted entries no longer match the tokens.
        publish_computed(state, &mut self.allocator, self.config.block_size);
        debug_assert_eq!(
            state.num_published_blocks,
            state.block_hashes.len(),
            "{seq}: a computed prefill covers the whole prompt"
        );
        let evicted_entries = state.num_cached_entries - kept_entries;
        state.num_cached_entries = kept_entries;
        let keep_blocks = self.config.blocks_for(kept_entries);
        let entry_blocks = state.num_entry_blocks();
        if state.num_scratch_blocks > 0 {
            // The kept entries sit in the scratch blocks; the prefill's blocks go back, and
            // those published stay cached for the next request with this prefix.
            state
                .block_table
                .release_leading(entry_blocks, &mut self.allocator);
            state.num_scratch_blocks = 0;
        }
        state
            .block_table
            .release_from(keep_blocks, &mut self.allocator);
        let released_blocks = entry_blocks - keep_blocks;
        Ok(EvictionOutcome {
            evicted_entries,
            released_blocks,
        })
    }

    /// Checks the scheduler's invariants; O(sequences + blocks), meant for tests (run after
    /// every step there).
    ///
    /// Panics with a message naming the broken invariant.
    pub fn check_invariants(&self) {
        self.allocator.check_invariants();
        let mut holders = vec![0u32; self.allocator.num_total()];
        for seq in self.seqs.values() {
            for block in seq.block_table.as_slice() {
                holders[block.index()] += 1;
            }
            self.check_sequence(seq);
        }
        for (index, &count) in holders.iter().enumerate() {
            let block = BlockId(index as u32);
            assert_eq!(
                self.allocator.ref_count(block),
                Some(count),
                "{block}: pool's reference count disagrees with the block tables holding it"
            );
        }
        assert!(
            self.running.len() <= self.config.max_num_seqs,
            "more running sequences than max_num_seqs"
        );
        let live = self.running.len() + self.waiting.len() + self.finished.len();
        assert_eq!(live, self.seqs.len(), "a sequence is in no list or in two");
        let arrival = |id: &SeqId| self.seqs[id].arrival;
        let order: Vec<u64> = self
            .running
            .iter()
            .chain(self.waiting.iter())
            .map(arrival)
            .collect();
        assert!(
            order.windows(2).all(|pair| pair[0] < pair[1]),
            "running then waiting must be in strict arrival order (FCFS, newest running last)"
        );
        for id in &self.running {
            assert_eq!(
                self.seqs[id].status,
                SeqStatus::Running,
                "{id} in running list"
            );
        }
        for id in &self.waiting {
            let status = self.seqs[id].status;
            assert!(
                matches!(status, SeqStatus::Waiting | SeqStatus::Preempted),
                "{id} in waiting queue is {status:?}"
            );
        }
        for id in &self.finished {
            assert!(
                matches!(self.seqs[id].status, SeqStatus::Finished(_)),
                "{id} in finished list"
            );
        }
    }

    fn check_sequence(&self, seq: &Sequence) {
        let id = seq.id;
        assert!(
            seq.num_cached_entries <= seq.num_computed_tokens,
            "{id}: more entries than positions"
        );
        assert!(
            seq.num_computed_tokens <= seq.num_tokens(),
            "{id}: computed unknown tokens"
        );
        assert!(
            seq.num_output_tokens <= seq.max_tokens,
            "{id}: generated past max_tokens"
        );
        if seq.status == SeqStatus::Running {
            assert_eq!(
                seq.block_table.len(),
                self.config.blocks_for(seq.reserved_entries()) + seq.num_scratch_blocks,
                "{id}: blocks held must be ceil(reserved entries / block_size) + scratch blocks"
            );
            for &block in &seq.block_table.as_slice()[seq.num_entry_blocks()..] {
                assert_eq!(
                    self.allocator.ref_count(block),
                    Some(1),
                    "{id}: scratch {block} is shared"
                );
                assert!(
                    !self.allocator.is_cached(block),
                    "{id}: scratch {block} is cached"
                );
            }
            return;
        }
        assert!(
            seq.block_table.is_empty(),
            "{id}: holds blocks while not running"
        );
        assert!(
            !seq.awaiting_output,
            "{id}: owed an output while not running"
        );
        if matches!(seq.status, SeqStatus::Waiting | SeqStatus::Preempted) {
            assert_eq!(
                seq.num_computed_tokens, 0,
                "{id}: computed tokens while queued"
            );
            assert_eq!(
                seq.num_cached_entries, 0,
                "{id}: cache entries while queued"
            );
        }
    }
}

/// Publishes `seq`'s full prompt blocks that are computed and not yet published; a block whose
/// prefix another block already holds stays private.
fn publish_computed(seq: &mut Sequence, allocator: &mut BlockAllocator, block_size: usize) {
    let computed_blocks = seq.num_computed_tokens / block_size;
    let publishable = computed_blocks.min(seq.block_hashes.len());
    for index in seq.num_published_blocks..publishable {
        let block = seq.block_table.as_slice()[index];
        allocator.publish(block, seq.block_hashes[index]);
    }
    seq.num_published_blocks = seq.num_published_blocks.max(publishable);
}
