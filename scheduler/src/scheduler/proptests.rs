//! Seeded property tests: random workloads against a mirror of what the engine knows.
//!
//! Pools, budgets and block sizes are small so that chunking, head-of-line waiting and
//! preemption happen in most cases. After every step the scheduler's invariants hold, the plan
//! respects the budget and the sequence cap, every scheduled token has a slot in its block
//! table, and positions and cache entries continue exactly where the mirror says. At the end
//! every request finished or was refused with a reason, every block is free, and first tokens
//! came in arrival order (FCFS: a request never gets its first token after a later arrival).
//!
//! Prefix caching: prompts share random prefixes within a few families, and the simulation
//! tracks the token each cache entry of each block holds. A prefix hit must find exactly the
//! tokens of the hitting prompt; every write (a chunk, a decode, an eviction's compaction)
//! must land in a block that only the writing sequence holds and that is not cached; the
//! allocator's invariants (no block both cached-idle and referenced, reference counts equal to
//! block-table references, the hash map consistent) hold after every step, and at the end
//! every block is free or cached and idle.

use std::cell::Cell;
use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::*;
use crate::plan::SeqOutput;
use crate::sequence::{EvictionBound, LastChunk};

/// Token id of a cache entry whose contents were moved by a compaction.
const COMPACTED: u32 = u32::MAX;

/// One request of a workload and what the engine will do to it.
#[derive(Debug, Clone)]
struct Arrival {
    step: usize,
    num_prompt_tokens: usize,
    max_tokens: usize,
    /// Kept share of the cache (per mille) after each last prefill chunk, if evicting.
    keep_per_mille: Option<usize>,
    /// The prompt's first `shared` tokens are those of prefix family `family`; the rest are
    /// the request's own.
    family: usize,
    shared: usize,
    /// What the last prefill chunk needs (a scoring window, lookahead rows).
    last_chunk: LastChunk,
    /// Generated token count at which the engine reports a stop.
    stop_after: Option<usize>,
    /// Steps after arrival at which the caller aborts.
    abort_after: Option<usize>,
}

/// What the engine has seen of one request.
#[derive(Debug, Default)]
struct Mirror {
    arrival_index: usize,
    computed: usize,
    cached: usize,
    outputs: usize,
    done: bool,
    reported: Option<FinishReason>,
    first_token_step: Option<usize>,
}

fn arrival() -> impl Strategy<Value = Arrival> {
    (
        0usize..40,
        0usize..40,
        0usize..40,
        prop::option::weighted(0.4, 0usize..=1000),
        prop::option::weighted(0.3, 1usize..12),
        prop::option::weighted(0.15, 0usize..30),
        prop::option::weighted(0.4, (0usize..12, 0usize..12)),
        ((0usize..3, 0usize..40), (0usize..30, 1usize..30)),
    )
        .prop_map(
            |(
                step,
                num_prompt_tokens,
                max_tokens,
                keep_per_mille,
                stop_after,
                abort_after,
                needs,
                ((family, shared), (over_tokens, max_kept_entries)),
            )| {
                let (min_tokens, extra_rows) = needs.unwrap_or_default();
                Arrival {
                    step,
                    num_prompt_tokens,
                    max_tokens,
                    keep_per_mille,
                    family,
                    shared,
                    last_chunk: LastChunk {
                        min_tokens,
                        extra_rows,
                        eviction: keep_per_mille.map(|_| EvictionBound {
                            over_tokens,
                            max_kept_entries,
                        }),
                    },
                    stop_after,
                    abort_after,
                }
            },
        )
}

fn config() -> impl Strategy<Value = SchedulerConfig> {
    (
        1usize..=8,
        1usize..=32,
        1usize..=40,
        1usize..=8,
        8usize..=96,
        prop::bool::weighted(0.7),
    )
        .prop_map(
            |(
                block_size,
                num_blocks,
                max_num_batched_tokens,
                max_num_seqs,
                max_model_len,
                enable_prefix_caching,
            )| {
                SchedulerConfig {
                    block_size,
                    num_blocks,
                    max_num_batched_tokens,
                    max_num_seqs,
                    max_model_len,
                    enable_prefix_caching,
                }
            },
        )
}

/// Checks a refusal names the limit the request really breaks.
fn check_refusal(config: &SchedulerConfig, a: &Arrival, error: SchedulerError) {
    let total = a.num_prompt_tokens + a.max_tokens;
    match error {
        SchedulerError::EmptyPrompt { .. } => assert_eq!(a.num_prompt_tokens, 0),
        SchedulerError::ZeroMaxTokens { .. } => assert_eq!(a.max_tokens, 0),
        SchedulerError::ExceedsMaxModelLen { limit, value, .. } => {
            assert_eq!((limit, value), (config.max_model_len, total));
            assert!(value > limit);
        }
        SchedulerError::ExceedsKvPool { limit, value, .. } => {
            assert_eq!(
                (limit, value),
                (config.num_blocks, config.blocks_for(total - 1))
            );
            assert!(value > limit);
        }
        SchedulerError::LastChunkExceedsBudget { limit, value, .. } => {
            let needs = a.last_chunk.min_tokens.max(1) + a.last_chunk.extra_rows;
            assert_eq!((limit, value), (config.max_num_batched_tokens, needs));
            assert!(value > limit);
        }
        other => panic!("unexpected refusal {other:?}"),
    }
}

/// How often the behaviours under test occurred, so a weak strategy cannot pass vacuously.
#[derive(Debug, Default)]
struct Coverage {
    chunks: Cell<usize>,
    preemptions: Cell<usize>,
    evictions: Cell<usize>,
    aborts: Cell<usize>,
    refusals: Cell<usize>,
    hit_tokens: Cell<usize>,
    compactions_into_fresh_blocks: Cell<usize>,
}

fn bump(counter: &Cell<usize>, by: usize) {
    counter.set(counter.get() + by);
}

struct Sim<'c> {
    coverage: &'c Coverage,
    sched: Scheduler,
    arrivals: Vec<Arrival>,
    mirrors: HashMap<SeqId, Mirror>,
    next_arrival_index: usize,
    step: usize,
    /// The token each entry of each block holds ([`COMPACTED`] after a compaction wrote it).
    contents: Vec<Vec<u32>>,
}

impl Sim<'_> {
    fn new(coverage: &Coverage, config: SchedulerConfig, arrivals: Vec<Arrival>) -> Sim<'_> {
        let contents = vec![vec![COMPACTED; config.block_size]; config.num_blocks];
        Sim {
            coverage,
            sched: Scheduler::new(config).expect("strategy builds valid configs"),
            arrivals,
            mirrors: HashMap::new(),
            next_arrival_index: 0,
            step: 0,
            contents,
        }
    }

    /// The token at `position` of request `seq`: its prompt (a family prefix, then its own
    /// tokens), then its generated tokens.
    fn token(&self, seq: SeqId, position: usize) -> u32 {
        let a = &self.arrivals[seq.0 as usize];
        let id = seq.0 as u32;
        if position < a.shared.min(a.num_prompt_tokens) {
            1_000 * a.family as u32 + position as u32
        } else if position < a.num_prompt_tokens {
            100_000 + 1_000 * id + position as u32
        } else {
            200_000 + 1_000 * id + position as u32
        }
    }

    /// Records that `seq` wrote `token` into `entry`, which must lie in a block only `seq`
    /// holds and that no one can find in the prefix cache.
    fn write(&mut self, seq: SeqId, entry: usize, token: u32) {
        let bs = self.sched.config().block_size;
        let block = self.sched.block_table(seq).expect("running")[entry / bs];
        self.check_private(seq, block);
        self.contents[block.index()][entry % bs] = token;
    }

    fn check_private(&self, seq: SeqId, block: BlockId) {
        let pool = self.sched.allocator();
        assert_eq!(
            pool.ref_count(block),
            Some(1),
            "{seq} writes shared {block}"
        );
        assert!(!pool.is_cached(block), "{seq} writes cached {block}");
    }

    /// Checks a prefix hit of `hit_tokens` for `seq`'s first chunk: whole blocks, enough left
    /// to compute, and every hit block holding exactly the prompt's tokens.
    fn check_hit(&self, seq: SeqId, hit_tokens: usize, known: usize) {
        let config = self.sched.config();
        let a = &self.arrivals[seq.0 as usize];
        assert!(config.enable_prefix_caching, "{seq}: hit with caching off");
        assert_eq!(
            hit_tokens % config.block_size,
            0,
            "{seq}: partial block hit"
        );
        assert!(
            hit_tokens <= a.num_prompt_tokens,
            "{seq}: hit past the prompt"
        );
        assert!(
            hit_tokens + a.last_chunk.min_tokens.max(1) <= known,
            "{seq}: hit leaves {} tokens to compute, needs {}",
            known - hit_tokens,
            a.last_chunk.min_tokens.max(1)
        );
        let table = self.sched.block_table(seq).expect("running");
        for position in 0..hit_tokens {
            let block = table[position / config.block_size];
            assert_eq!(
                self.contents[block.index()][position % config.block_size],
                self.token(seq, position),
                "{seq}: {block} hit at position {position} holds another token"
            );
        }
    }
    fn admit_arrivals(&mut self) {
        for (index, a) in self.arrivals.iter().enumerate() {
            if a.step != self.step {
                continue;
            }
            let seq = SeqId(index as u64);
            let prompt: Vec<u32> = (0..a.num_prompt_tokens)
                .map(|position| self.token(seq, position))
                .collect();
            let request = Request {
                id: seq,
                num_prompt_tokens: a.num_prompt_tokens,
                max_tokens: a.max_tokens,
                last_chunk: a.last_chunk,
                block_hashes: self.sched.hash_prompt(&prompt),
            };
            match self.sched.add(request) {
                Ok(()) => {
                    let mirror = Mirror {
                        arrival_index: self.next_arrival_index,
                        ..Mirror::default()
                    };
                    self.next_arrival_index += 1;
                    self.mirrors.insert(seq, mirror);
                }
                Err(error) => {
                    check_refusal(self.sched.config(), a, error);
                    bump(&self.coverage.refusals, 1);
                }
            }
        }
    }

    fn abort_due(&mut self) {
        for (index, a) in self.arrivals.iter().enumerate() {
            let seq = SeqId(index as u64);
            let Some(mirror) = self.mirrors.get_mut(&seq) else {
                continue;
            };
            if a.abort_after.map(|after| a.step + after) == Some(self.step) {
                assert_eq!(self.sched.abort(seq), !mirror.done, "{seq}: abort result");
                bump(&self.coverage.aborts, usize::from(!mirror.done));
                mirror.done = true;
            }
        }
    }

    /// Checks the plan against the mirror and the limits, advancing the mirror.
    fn check_plan(&mut self, plan: &Plan) {
        let config = self.sched.config().clone();
        let extra_rows: usize = plan
            .prefills
            .iter()
            .filter(|c| c.is_last_chunk)
            .map(|c| self.arrivals[c.seq.0 as usize].last_chunk.extra_rows)
            .sum();
        let tokens: usize = plan.prefills.iter().map(|c| c.num_tokens).sum::<usize>()
            + plan.decodes.len()
            + extra_rows;
        assert_eq!(tokens, plan.num_batched_tokens);
        assert!(
            tokens <= config.max_num_batched_tokens,
            "token budget exceeded"
        );
        assert!(
            self.sched.num_running() <= config.max_num_seqs,
            "max_num_seqs exceeded"
        );
        for finished in &plan.finished {
            let mirror = self.mirrors.get_mut(&finished.seq).expect("known");
            assert!(
                mirror.done && mirror.reported.is_none(),
                "{}: reported twice",
                finished.seq
            );
            mirror.reported = Some(finished.reason);
        }
        bump(&self.coverage.preemptions, plan.preempted.len());
        let partial_chunks = plan.prefills.iter().filter(|c| !c.is_last_chunk).count();
        bump(&self.coverage.chunks, partial_chunks);
        for seq in &plan.preempted {
            let mirror = self.mirrors.get_mut(seq).expect("known");
            (mirror.computed, mirror.cached) = (0, 0);
        }
        let mut seen = Vec::new();
        let mut hit_tokens = 0;
        for chunk in &plan.prefills {
            let mirror = &self.mirrors[&chunk.seq];
            let a = self.arrivals[chunk.seq.0 as usize].clone();
            if mirror.computed == 0 && chunk.first_position > 0 {
                self.check_hit(
                    chunk.seq,
                    chunk.first_position,
                    a.num_prompt_tokens + mirror.outputs,
                );
                hit_tokens += chunk.first_position;
                let mirror = self.mirrors.get_mut(&chunk.seq).expect("known");
                (mirror.computed, mirror.cached) = (chunk.first_position, chunk.first_position);
            }
            for k in 0..chunk.num_tokens {
                let token = self.token(chunk.seq, chunk.first_position + k);
                self.write(chunk.seq, chunk.first_cache_entry + k, token);
            }
            let mirror = self.mirrors.get_mut(&chunk.seq).expect("known");
            assert_eq!(
                (chunk.first_position, chunk.first_cache_entry),
                (mirror.computed, mirror.cached)
            );
            mirror.computed += chunk.num_tokens;
            mirror.cached += chunk.num_tokens;
            let known = a.num_prompt_tokens + mirror.outputs;
            assert!(
                mirror.computed <= known,
                "{}: prefill past known tokens",
                chunk.seq
            );
            assert_eq!(chunk.is_last_chunk, mirror.computed == known);
            if chunk.is_last_chunk && chunk.first_position > 0 {
                assert!(
                    chunk.num_tokens >= a.last_chunk.min_tokens,
                    "{}: a split prefill's last chunk of {} tokens misses its window of {}",
                    chunk.seq,
                    chunk.num_tokens,
                    a.last_chunk.min_tokens
                );
            }
            seen.push((chunk.seq, chunk.first_cache_entry + chunk.num_tokens));
        }
        assert_eq!(plan.prefix_cache.hit_tokens, hit_tokens);
        bump(&self.coverage.hit_tokens, hit_tokens);
        for decode in &plan.decodes {
            let token = self.token(decode.seq, decode.position);
            self.write(decode.seq, decode.cache_entry, token);
            let mirror = self.mirrors.get_mut(&decode.seq).expect("known");
            assert_eq!(
                (decode.position, decode.cache_entry),
                (mirror.computed, mirror.cached)
            );
            mirror.computed += 1;
            mirror.cached += 1;
            seen.push((decode.seq, decode.cache_entry + 1));
        }
        for &(seq, entries_end) in &seen {
            let table = self
                .sched
                .block_table(seq)
                .expect("scheduled sequence is known");
            assert!(
                table.len() >= config.blocks_for(entries_end),
                "{seq}: no slot for a token"
            );
        }
        seen.sort_unstable();
        assert!(
            seen.windows(2).all(|p| p[0].0 != p[1].0),
            "a sequence scheduled twice"
        );
    }

    /// The engine's side, in the engine loop's order: report sampled tokens, then evict after
    /// last prefill chunks of the sequences still running.
    fn run_plan(&mut self, plan: &Plan) {
        let mut outputs = Vec::new();
        let sampled = plan.prefills.iter().filter(|c| c.is_last_chunk).map(|c| {
            let evicts = c.first_cache_entry + c.num_tokens;
            (c.seq, Some((evicts, c.compact_into_block)))
        });
        let mut evictions = Vec::new();
        for (seq, last_chunk) in sampled.chain(plan.decodes.iter().map(|d| (d.seq, None))) {
            let a = &self.arrivals[seq.0 as usize];
            let mirror = self.mirrors.get_mut(&seq).expect("known");
            if mirror.first_token_step.is_none() {
                mirror.first_token_step = Some(self.step);
            }
            if let (Some((entries, into)), Some(per_mille), Some(bound)) =
                (last_chunk, a.keep_per_mille, a.last_chunk.eviction)
                && entries > bound.over_tokens
            {
                let kept = (entries * per_mille / 1000).min(bound.max_kept_entries);
                evictions.push((seq, kept, into));
            }
            mirror.outputs += 1;
            let stop = a.stop_after.is_some_and(|n| mirror.outputs >= n);
            mirror.done = stop || mirror.outputs == a.max_tokens;
            outputs.push(SeqOutput {
                seq,
                appended_tokens: 1,
                finish: stop.then_some(FinishReason::Stop),
            });
        }
        self.sched
            .update(&StepResult { outputs })
            .expect("outputs match the plan");
        for (seq, kept, into) in evictions {
            if !self.mirrors[&seq].done {
                self.evict(seq, kept, into);
            }
        }
    }

    /// Compacts `seq` to `kept` entries, written into the blocks from `into` on (or its
    /// leading blocks), as the engine does, then tells the scheduler.
    fn evict(&mut self, seq: SeqId, kept: usize, into: Option<usize>) {
        let bs = self.sched.config().block_size;
        let table = self.sched.block_table(seq).expect("running").to_vec();
        let first = into.unwrap_or(0);
        bump(
            &self.coverage.compactions_into_fresh_blocks,
            usize::from(into.is_some()),
        );
        for &block in &table[first..first + kept.div_ceil(bs)] {
            self.check_private(seq, block);
            self.contents[block.index()] = vec![COMPACTED; bs];
        }
        let cached = self.mirrors[&seq].cached;
        let outcome = self.sched.apply_eviction(seq, kept).expect("prefill done");
        assert_eq!(
            outcome.released_blocks,
            cached.div_ceil(bs) - kept.div_ceil(bs)
        );
        assert_eq!(outcome.evicted_entries, cached - kept);
        self.mirrors.get_mut(&seq).expect("known").cached = kept;
        bump(&self.coverage.evictions, 1);
    }

    fn run(&mut self) {
        let last_arrival = self.arrivals.iter().map(|a| a.step).max().unwrap_or(0);
        let mut plan = Plan::default();
        while self.step <= last_arrival + 30 || self.sched.has_unfinished() {
            assert!(
                self.step < 20_000,
                "workload did not finish: starvation or livelock"
            );
            self.admit_arrivals();
            self.abort_due();
            self.sched.schedule_into(&mut plan);
            self.sched.check_invariants();
            self.check_plan(&plan);
            self.run_plan(&plan);
            self.sched.check_invariants();
            self.step += 1;
        }
    }

    fn check_end(&self) {
        let pool = self.sched.allocator();
        assert_eq!(
            pool.num_free(),
            pool.num_total(),
            "blocks leaked: at the end every block is free or cached and idle"
        );
        assert_eq!(pool.num_cached(), pool.num_cached_idle());
        for (seq, mirror) in &self.mirrors {
            assert!(mirror.reported.is_some(), "{seq} never reported finished");
        }
        let mut first_tokens: Vec<(usize, usize)> = self
            .mirrors
            .values()
            .filter_map(|m| m.first_token_step.map(|step| (m.arrival_index, step)))
            .collect();
        first_tokens.sort_unstable();
        assert!(
            first_tokens.windows(2).all(|p| p[0].1 <= p[1].1),
            "a request got its first token after a later arrival: {first_tokens:?}"
        );
    }
}

#[test]
fn random_workloads_keep_every_invariant_and_finish_every_request_in_fcfs_order() {
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 2000,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[42; 32]),
    );
    let workload = (config(), prop::collection::vec(arrival(), 0..24));
    let coverage = Coverage::default();
    runner
        .run(&workload, |(config, arrivals)| {
            let mut sim = Sim::new(&coverage, config, arrivals);
            sim.run();
            sim.check_end();
            Ok(())
        })
        .expect("scheduler properties hold");
    let counts = [
        coverage.chunks.get(),
        coverage.preemptions.get(),
        coverage.evictions.get(),
        coverage.aborts.get(),
        coverage.refusals.get(),
        coverage.hit_tokens.get(),
        coverage.compactions_into_fresh_blocks.get(),
    ];
    assert!(
        counts.iter().all(|&n| n >= 100),
        "workloads too tame (chunks, preemptions, evictions, aborts, refusals, hit tokens, compactions into fresh blocks): {counts:?}"
    );
}
