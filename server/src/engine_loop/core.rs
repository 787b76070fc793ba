//! The engine loop's state machine: one [`EngineCore`] owns the backend (model + KV pool), the
//! scheduler and every running request. It spawns nothing and reads the clock only to stamp
//! requests; the thread in [`super`] drives it (`add_request`, then `step` until idle), and tests
//! drive it directly.
//!
//! One step: schedule a plan → run it as one varlen forward pass → sample each sequence that
//! finished a prefill or decoded → stream tokens, apply stop rules → report to the scheduler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glimpse_engine::backend::Backend;
use glimpse_engine::batch::{
    Compaction, ForwardBatch, ForwardOutput, ForwardProfile, LogitsRequest, SequenceInput,
};
use glimpse_engine::eviction::EvictionPolicy;
use glimpse_engine::model::Model;
use glimpse_engine::tokenizer::Tokenizer;
use glimpse_scheduler::{
    EvictionBound, FinishReason as SchedulerFinish, LastChunk, Plan, PrefixCacheStats, Request,
    Scheduler, SchedulerConfig, SchedulerError, SeqId, SeqOutput, StepResult,
};

use super::active::{ActiveRequest, EventSink, TokenOutcome};
use super::request::{FinishReason, StreamEvent, Timings, Usage};
use crate::error::RequestError;
use crate::validation::{EvictionSettings, InputLimits, RequestLimits, ValidRequest, Validator};

/// Batching limits of the loop and its prefix-cache switch (vLLM's names and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    /// Reuse the KV of cached prompt prefixes (docs/design.md §7).
    pub enable_prefix_caching: bool,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
            enable_prefix_caching: true,
        }
    }
}

/// What KV eviction did to one request, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvictionReport {
    /// The policy's metric label.
    pub policy: &'static str,
    /// Prompt tokens dropped per (layer, KV head), on average.
    pub evicted_tokens: usize,
    /// Blocks handed back to the pool.
    pub released_blocks: usize,
    /// Scoring + selection + compaction.
    pub time: Duration,
}

/// A request that left the engine, for metrics and logs.
#[derive(Debug, Clone)]
pub struct CompletedRequest {
    pub reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

/// What one step did, for metrics and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct StepReport {
    pub num_prefill_tokens: usize,
    pub num_decode_tokens: usize,
    /// Tokens sampled this step (one per sequence that finished a prefill or decoded).
    pub num_sampled: usize,
    pub num_preempted: usize,
    pub forward_time: Duration,
    /// How the forward pass split between matmuls, attention and the rest.
    pub forward_profile: ForwardProfile,
    pub sampling_time: Duration,
    pub scheduling_time: Duration,
    /// Gaps between a request's previous token and the one produced this step.
    pub inter_token_latencies: Vec<Duration>,
    /// Requests whose prompt was evicted this step.
    pub evictions: Vec<EvictionReport>,
    /// Prompt tokens this step's admissions looked up in the prefix cache, and found.
    pub prefix_cache: PrefixCacheStats,
    pub completed: Vec<CompletedRequest>,
}

/// The engine loop's state: backend, scheduler and running requests.
pub struct EngineCore {
    backend: Box<dyn Backend>,
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    eos_token_ids: Vec<u32>,
    validator: Validator,
    requests: HashMap<SeqId, ActiveRequest>,
    next_seq: u64,
    plan: Plan,
    output: ForwardOutput,
    /// Block tables of the step's sequences, flattened (`u32` ids as the backend takes them).
    tables: Vec<u32>,
    result: StepResult,
}

impl EngineCore {
    /// An engine over `backend` (whose pool geometry sizes the scheduler) for `model`.
    pub fn new(
        model: &Model,
        tokenizer: Arc<Tokenizer>,
        backend: Box<dyn Backend>,
        limits: BatchLimits,
        eviction: EvictionSettings,
    ) -> Result<Self, SchedulerError> {
        let geometry = *backend.geometry();
        let scheduler = Scheduler::new(SchedulerConfig {
            block_size: geometry.block_size,
            num_blocks: geometry.num_blocks,
            max_num_batched_tokens: limits.max_num_batched_tokens,
            max_num_seqs: limits.max_num_seqs,
            max_model_len: model.config.max_model_len,
            enable_prefix_caching: limits.enable_prefix_caching,
        })?;
        Ok(Self {
            backend,
            scheduler,
            tokenizer,
            eos_token_ids: model.eos_token_ids(),
            validator: Validator::new(
                RequestLimits {
                    vocab_size: model.config.vocab_size,
                    max_model_len: model.config.max_model_len,
                    eviction,
                    input: InputLimits::for_model_len(model.config.max_model_len),
                },
                model.generation.clone(),
            ),
            requests: HashMap::new(),
            next_seq: 0,
            plan: Plan::default(),
            output: ForwardOutput::default(),
            tables: Vec::new(),
            result: StepResult::default(),
        })
    }

    /// The same engine with other input limits (the server's flags; the defaults are
    /// [`InputLimits::for_model_len`]).
    pub fn with_input_limits(mut self, input: InputLimits) -> Self {
        self.validator = self.validator.with_input_limits(input);
        self
    }

    /// The validator of this engine's requests (its limits, its model's sampling defaults).
    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Queues a validated request; its events go to `events`, and the log lines the loop writes
    /// about it go to the span current now (the submitter's, naming the request). When the
    /// scheduler refuses it (it cannot fit the KV pool) the error is returned and nothing is sent.
    pub fn add_request(
        &mut self,
        request: ValidRequest,
        events: EventSink,
        arrival: Instant,
    ) -> Result<SeqId, RequestError> {
        let seq = SeqId(self.next_seq);
        self.scheduler
            .add(Request {
                id: seq,
                num_prompt_tokens: request.prompt_ids.len(),
                max_tokens: request.stop.max_tokens,
                last_chunk: last_chunk_needs(request.policy, request.prompt_ids.len()),
                block_hashes: self.scheduler.hash_prompt(&request.prompt_ids),
            })
            .map_err(|e| RequestError::TooLong {
                message: e.to_string(),
            })?;
        self.next_seq += 1;
        let active = ActiveRequest::new(
            request,
            self.validator.limits().vocab_size,
            Arc::clone(&self.tokenizer),
            events,
            arrival,
        );
        match active {
            Ok(active) => {
                self.requests.insert(seq, active);
                Ok(seq)
            }
            Err(e) => {
                self.scheduler.abort(seq);
                Err(e)
            }
        }
    }

    /// Aborts a request now: its blocks are freed and its stream ends with `Abort`.
    pub fn abort(&mut self, seq: SeqId, now: Instant) -> Option<CompletedRequest> {
        self.scheduler.abort(seq);
        let active = self.requests.remove(&seq)?;
        let (usage, timings) = active.finish(FinishReason::Abort, now)?;
        Some(CompletedRequest {
            reason: FinishReason::Abort,
            usage,
            timings,
        })
    }

    /// Aborts every waiting and running request (see [`EngineCore::abort`]).
    pub fn abort_all(&mut self, now: Instant) -> Vec<CompletedRequest> {
        let all: Vec<SeqId> = self.requests.keys().copied().collect();
        all.into_iter()
            .filter_map(|seq| self.abort(seq, now))
            .collect()
    }

    /// Runs `request` until it ends, stepping without any observer, and says how it ended: the
    /// warm-up generation, which metrics must not count. Requests queued before it share its
    /// steps (also unobserved); those queued later wait in the loop's channel.
    pub fn run_unobserved(&mut self, request: ValidRequest) -> Result<(), RequestError> {
        let (events, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        self.add_request(request, events, Instant::now())?;
        loop {
            self.step();
            while let Ok(event) = receiver.try_recv() {
                match event {
                    StreamEvent::Token(_) => {}
                    StreamEvent::Finished(_) => return Ok(()),
                    StreamEvent::Error(error) => return Err(error),
                }
            }
        }
    }

    /// Runs one step. Requests whose clients left are aborted first.
    pub fn step(&mut self) -> StepReport {
        let mut report = StepReport::default();
        let started = Instant::now();
        self.abort_disconnected(started, &mut report);
        self.scheduler.schedule_into(&mut self.plan);
        report.num_preempted = self.plan.preempted.len();
        report.prefix_cache = self.plan.prefix_cache;
        for seq in &self.plan.preempted {
            // Recomputed from scratch: the next prefill writes a full cache and evicts again.
            if let Some(request) = self.requests.get_mut(seq) {
                request.compacted = None;
            }
        }
        let scheduled = Instant::now();
        report.scheduling_time = scheduled - started;
        self.stamp_first_scheduled(scheduled);
        if self.plan.is_idle() {
            return report;
        }
        if let Err(e) = self.run_forward() {
            tracing::error!(error = %e, "forward pass failed; aborting the step's requests");
            self.fail_planned(RequestError::Internal {
                message: e.to_string(),
            });
            return report;
        }
        let forwarded = Instant::now();
        report.forward_time = forwarded - scheduled;
        report.forward_profile = self.output.profile;
        self.sample_and_stream(forwarded, &mut report);
        self.apply_evictions(&mut report);
        report.sampling_time = forwarded.elapsed();
        report
    }

    /// Hands the blocks that eviction emptied back to the scheduler (after `update`, which
    /// completes the prefill the scheduler waits for) and records what each request kept.
    fn apply_evictions(&mut self, report: &mut StepReport) {
        for eviction in self.output.evictions.drain(..) {
            let seq = planned_seqs(&self.plan)
                .nth(eviction.sequence)
                .expect("eviction reports index the batch");
            let Some(request) = self.requests.get_mut(&seq) else {
                continue; // finished with its first token: its blocks are already free
            };
            let outcome = match self.scheduler.apply_eviction(seq, eviction.kept_entries) {
                Ok(outcome) => outcome,
                Err(e) => {
                    request.span.in_scope(|| {
                        tracing::error!(error = %e, %seq, "eviction could not be applied; keeping the full cache");
                    });
                    continue;
                }
            };
            request.usage.kv_entries_kept = eviction.kept_entries;
            request.usage.kv_blocks_freed += outcome.released_blocks;
            request.eviction_time += eviction.time;
            request.compacted = eviction.compaction();
            report.evictions.push(EvictionReport {
                policy: request.policy.policy.name(),
                evicted_tokens: eviction.evicted_tokens(),
                released_blocks: outcome.released_blocks,
                time: eviction.time,
            });
        }
    }

    fn abort_disconnected(&mut self, now: Instant, report: &mut StepReport) {
        let gone: Vec<SeqId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.is_disconnected())
            .map(|(&seq, _)| seq)
            .collect();
        for seq in gone {
            report.completed.extend(self.abort(seq, now));
        }
    }

    fn stamp_first_scheduled(&mut self, now: Instant) {
        for seq in planned_seqs(&self.plan) {
            if let Some(r) = self.requests.get_mut(&seq) {
                r.times.first_scheduled.get_or_insert(now);
            }
        }
    }

    /// Builds the varlen batch of the plan and runs it.
    fn run_forward(&mut self) -> glimpse_engine::Result<()> {
        let plan = &self.plan;
        self.tables.clear();
        let mut spans = Vec::with_capacity(plan.prefills.len() + plan.decodes.len());
        for seq in planned_seqs(plan) {
            let table = self
                .scheduler
                .block_table(seq)
                .expect("a planned sequence has a block table (scheduler bug otherwise)");
            let start = self.tables.len();
            self.tables.extend(table.iter().map(|b| b.0));
            spans.push(start..self.tables.len());
        }
        let mut sequences = Vec::with_capacity(spans.len());
        for (chunk, span) in plan.prefills.iter().zip(&spans) {
            let tokens = &self.requests[&chunk.seq].tokens;
            // The blocks past `compact_into_block` are fresh ones the eviction writes into.
            let table = &self.tables[span.clone()];
            let (block_table, compact_into) = match chunk.compact_into_block {
                Some(first) => (&table[..first], Some(&table[first..])),
                None => (table, None),
            };
            sequences.push(SequenceInput {
                token_ids: &tokens[chunk.first_position..chunk.first_position + chunk.num_tokens],
                first_position: chunk.first_position,
                first_cache_entry: chunk.first_cache_entry,
                block_table,
                logits: if chunk.is_last_chunk {
                    LogitsRequest::Last
                } else {
                    LogitsRequest::None
                },
                eviction: chunk
                    .is_last_chunk
                    .then_some(self.requests[&chunk.seq].policy),
                compacted: None,
                compact_into,
            });
        }
        for (decode, span) in plan.decodes.iter().zip(&spans[plan.prefills.len()..]) {
            let request = &self.requests[&decode.seq];
            sequences.push(SequenceInput {
                token_ids: &request.tokens[decode.position..decode.position + 1],
                first_position: decode.position,
                first_cache_entry: decode.cache_entry,
                block_table: &self.tables[span.clone()],
                logits: LogitsRequest::Last,
                eviction: None,
                compacted: request.compacted.as_ref().map(Compaction::as_prefix),
                compact_into: None,
            });
        }
        self.backend
            .forward(&ForwardBatch { sequences }, &mut self.output)
    }

    /// Samples every sequence that produced logits, streams, applies stops, updates the scheduler.
    fn sample_and_stream(&mut self, now: Instant, report: &mut StepReport) {
        self.result.outputs.clear();
        let prefills = self
            .plan
            .prefills
            .iter()
            .map(|c| (c.seq, c.is_last_chunk, c.num_tokens));
        let decodes = self.plan.decodes.iter().map(|d| (d.seq, true, 1));
        let mut finished = Vec::new();
        let mut failed = Vec::new();
        for (index, (seq, sampled, num_tokens)) in prefills.chain(decodes).enumerate() {
            if index < self.plan.prefills.len() {
                report.num_prefill_tokens += num_tokens;
            } else {
                report.num_decode_tokens += 1;
            }
            if !sampled {
                continue;
            }
            let Some(request) = self.requests.get_mut(&seq) else {
                continue;
            };
            let row = self.output.rows[index];
            let start = row.start * self.output.vocab_size;
            let logits = &mut self.output.logits[start..start + self.output.vocab_size];
            if !request.next_token_may_stop() {
                let eos: &[u32] = if request.stop.ignore_eos {
                    &[]
                } else {
                    &self.eos_token_ids
                };
                mask_stop_tokens(logits, eos, &request.stop.stop_token_ids);
            }
            let token = request.sampler.sample(logits);
            report.num_sampled += 1;
            if let Some(previous) = request.times.last_token {
                report.inter_token_latencies.push(now - previous);
            }
            let outcome = request.accept(token, &self.eos_token_ids, now);
            let finish = match outcome {
                TokenOutcome::Continue => None,
                TokenOutcome::Finished(reason) => {
                    finished.push((seq, reason.clone()));
                    Some(match reason {
                        FinishReason::Length => SchedulerFinish::Length,
                        _ => SchedulerFinish::Stop,
                    })
                }
                TokenOutcome::Failed(error) => {
                    failed.push((seq, error));
                    Some(SchedulerFinish::Stop)
                }
            };
            self.result.outputs.push(SeqOutput {
                seq,
                appended_tokens: 1,
                finish,
            });
        }
        self.scheduler
            .update(&self.result)
            .expect("the loop reports exactly the plan's sampled sequences (a bug otherwise)");
        for (seq, reason) in finished {
            let request = self
                .requests
                .remove(&seq)
                .expect("finished request is active");
            if let Some((usage, timings)) = request.finish(reason.clone(), now) {
                report.completed.push(CompletedRequest {
                    reason,
                    usage,
                    timings,
                });
            }
        }
        for (seq, error) in failed {
            let request = self
                .requests
                .remove(&seq)
                .expect("failed request is active");
            request.fail(error);
        }
    }

    /// Fails every request of the current plan (after a backend error) and frees their blocks.
    fn fail_planned(&mut self, error: RequestError) {
        let seqs: Vec<SeqId> = planned_seqs(&self.plan).collect();
        for seq in seqs {
            self.scheduler.abort(seq);
            if let Some(request) = self.requests.remove(&seq) {
                request
                    .span
                    .in_scope(|| tracing::warn!(%error, "the request failed with its step"));
                request.fail(error.clone());
            }
        }
    }
}

/// The sequences a plan runs, in batch order: prefill chunks, then decodes.
fn planned_seqs(plan: &Plan) -> impl Iterator<Item = SeqId> + '_ {
    let prefills = plan.prefills.iter().map(|c| c.seq);
    prefills.chain(plan.decodes.iter().map(|d| d.seq))
}

/// What the last prefill chunk of a prompt of `prompt_len` tokens must hold under `policy`, as
/// its scoring plan says (no rows when the prompt is not evicted or needs no scores), and
/// which prefills the policy evicts to how many entries at most.
fn last_chunk_needs(policy: EvictionPolicy, prompt_len: usize) -> LastChunk {
    let eviction = policy
        .max_kept_entries()
        .map(|max_kept_entries| EvictionBound {
            over_tokens: policy.budget,
            max_kept_entries,
        });
    let (min_tokens, extra_rows) = policy
        .for_prompt(prompt_len)
        .and_then(|prompt| prompt.scoring_plan())
        .map_or((0, 0), |plan| {
            (plan.min_last_chunk_tokens(), plan.extra_rows())
        });
    LastChunk {
        min_tokens,
        extra_rows,
        eviction,
    }
}

/// Keeps a sequence below `min_tokens` from choosing a token that would stop it.
fn mask_stop_tokens(logits: &mut [f32], eos: &[u32], stop_ids: &[u32]) {
    for &t in eos.iter().chain(stop_ids) {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}
