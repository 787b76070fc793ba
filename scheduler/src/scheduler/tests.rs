//! Unit tests of the policy, one behaviour each.

use super::*;
use crate::plan::SeqOutput;
use crate::sequence::LastChunk;

fn scheduler(config: SchedulerConfig) -> Scheduler {
    Scheduler::new(config).expect("test config is valid")
}

fn small_config() -> SchedulerConfig {
    SchedulerConfig {
        block_size: 4,
        num_blocks: 16,
        max_num_batched_tokens: 64,
        max_num_seqs: 8,
        max_model_len: 64,
        enable_prefix_caching: true,
    }
}

fn request(id: u64, num_prompt_tokens: usize, max_tokens: usize) -> Request {
    Request {
        id: SeqId(id),
        num_prompt_tokens,
        max_tokens,
        last_chunk: LastChunk::default(),
        block_hashes: Vec::new(),
    }
}

/// Reports one sampled token for every sequence the plan sampled.
fn sample_all(sched: &mut Scheduler, plan: &Plan) {
    let last_chunks = plan
        .prefills
        .iter()
        .filter(|c| c.is_last_chunk)
        .map(|c| c.seq);
    let decodes = plan.decodes.iter().map(|d| d.seq);
    let outputs = last_chunks
        .chain(decodes)
        .map(|seq| SeqOutput {
            seq,
            appended_tokens: 1,
            finish: None,
        })
        .collect();
    sched
        .update(&StepResult { outputs })
        .expect("outputs match the plan");
    sched.check_invariants();
}

fn step(sched: &mut Scheduler) -> Plan {
    let plan = sched.schedule();
    sched.check_invariants();
    sample_all(sched, &plan);
    plan
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_under_the_token_budget() {
    let mut sched = scheduler(SchedulerConfig {
        max_num_batched_tokens: 8,
        ..small_config()
    });
    sched.add(request(1, 20, 4)).expect("fits");
    let chunks: Vec<PrefillChunk> = (0..3).flat_map(|_| step(&mut sched).prefills).collect();
    let ranges: Vec<(usize, usize, bool)> = chunks
        .iter()
        .map(|c| (c.first_position, c.num_tokens, c.is_last_chunk))
        .collect();
    assert_eq!(ranges, [(0, 8, false), (8, 8, false), (16, 4, true)]);
    let decode = step(&mut sched).decodes;
    assert_eq!(
        decode,
        [DecodeStep {
            seq: SeqId(1),
            position: 20,
            cache_entry: 20
        }]
    );
}

#[test]
fn admission_reserves_the_whole_prompt_so_chunks_never_allocate() {
    let mut sched = scheduler(SchedulerConfig {
        max_num_batched_tokens: 8,
        ..small_config()
    });
    sched.add(request(1, 20, 4)).expect("fits");
    sched.schedule();
    assert_eq!(sched.block_table(SeqId(1)).map(<[BlockId]>::len), Some(5));
    sched.check_invariants();
}

#[test]
fn running_sequences_are_scheduled_before_admitting_new_ones() {
    let mut sched = scheduler(SchedulerConfig {
        max_num_batched_tokens: 10,
        ..small_config()
    });
    sched.add(request(1, 4, 8)).expect("fits");
    step(&mut sched);
    sched.add(request(2, 30, 4)).expect("fits");
    let plan = step(&mut sched);
    assert_eq!(plan.decodes.len(), 1);
    assert_eq!(plan.decodes[0].seq, SeqId(1));
    assert_eq!(plan.prefills.len(), 1);
    assert_eq!(
        (plan.prefills[0].seq, plan.prefills[0].num_tokens),
        (SeqId(2), 9)
    );
    assert_eq!(plan.num_batched_tokens, 10);
}

#[test]
fn max_num_seqs_caps_the_running_sequences() {
    let mut sched = scheduler(SchedulerConfig {
        max_num_seqs: 2,
        ..small_config()
    });
    for id in 0..3 {
        sched.add(request(id, 2, 4)).expect("fits");
    }
    let plan = step(&mut sched);
    assert_eq!(plan.prefills.len(), 2);
    assert_eq!((sched.num_running(), sched.num_waiting()), (2, 1));
}

/// Three one-block prompts fill a three-block pool; decoding needs a new block each.
fn full_pool_with_three_running() -> Scheduler {
    let mut sched = scheduler(SchedulerConfig {
        block_size: 4,
        num_blocks: 3,
        max_model_len: 8,
        ..small_config()
    });
    for id in 1..=3 {
        sched.add(request(id, 4, 4)).expect("fits");
    }
    step(&mut sched);
    sched.add(request(4, 1, 1)).expect("fits");
    assert_eq!(sched.allocator().num_free(), 0);
    sched
}

#[test]
fn the_most_recently_arrived_running_sequence_is_preempted_and_requeued_at_the_front() {
    let mut sched = full_pool_with_three_running();
    let plan = sched.schedule();
    sched.check_invariants();
    assert_eq!(plan.preempted, [SeqId(3), SeqId(2)]);
    assert_eq!(plan.decodes.len(), 1);
    assert_eq!(plan.decodes[0].seq, SeqId(1));
    let preempted = sched.sequence(SeqId(2)).expect("still known");
    assert_eq!(preempted.status, SeqStatus::Preempted);
    assert_eq!(
        (preempted.num_computed_tokens, preempted.num_cached_entries),
        (0, 0)
    );
    assert_eq!(sched.block_table(SeqId(2)), Some(&[][..]));
    let queue: Vec<SeqId> = sched.waiting.iter().copied().collect();
    assert_eq!(queue, [SeqId(2), SeqId(3), SeqId(4)]);
}

#[test]
fn nothing_is_admitted_in_a_step_that_preempted() {
    let mut sched = full_pool_with_three_running();
    let plan = sched.schedule();
    assert!(!plan.preempted.is_empty());
    assert!(plan.prefills.is_empty(), "no admission after a preemption");
}

#[test]
fn the_newest_running_sequence_preempts_itself_when_it_needs_a_block() {
    let mut sched = scheduler(SchedulerConfig {
        block_size: 4,
        num_blocks: 2,
        max_model_len: 8,
        ..small_config()
    });
    sched.add(request(1, 2, 2)).expect("fits");
    sched.add(request(2, 4, 2)).expect("fits");
    step(&mut sched);
    // Seq 1 decodes into entry 2 of its block; seq 2 (newest) needs a second block.
    let plan = sched.schedule();
    sched.check_invariants();
    assert_eq!(plan.preempted, [SeqId(2)]);
    assert_eq!(plan.decodes.len(), 1);
    assert_eq!(plan.decodes[0].seq, SeqId(1));
    assert_eq!(sched.allocator().num_free(), 1);
}

#[test]
fn a_preempted_sequence_recomputes_its_prompt_and_generated_tokens() {
    let mut sched = full_pool_with_three_running();
    let plan = step(&mut sched);
    assert_eq!(plan.preempted, [SeqId(3), SeqId(2)]);
    while sched.sequence(SeqId(2)).map(|s| s.status) != Some(SeqStatus::Running) {
        step(&mut sched);
    }
    let info = sched.sequence(SeqId(2)).expect("known");
    // Prompt 4 + 1 generated token before preemption, recomputed as one prefill.
    assert_eq!(info.num_output_tokens, 2);
    assert_eq!(info.num_computed_tokens, 5);
}

#[test]
fn abort_frees_a_running_sequences_blocks_at_once() {
    let mut sched = scheduler(small_config());
    sched.add(request(1, 10, 4)).expect("fits");
    step(&mut sched);
    assert_eq!(sched.allocator().num_used(), 3);
    assert!(sched.abort(SeqId(1)));
    assert_eq!(sched.allocator().num_used(), 0);
    sched.check_invariants();
    let plan = sched.schedule();
    assert_eq!(
        plan.finished,
        [FinishedSeq {
            seq: SeqId(1),
            reason: FinishReason::Abort
        }]
    );
    assert!(!sched.has_unfinished());
    assert!(!sched.abort(SeqId(1)), "a second abort is a no-op");
}

#[test]
fn abort_removes_a_waiting_sequence_from_the_queue() {
    let mut sched = scheduler(small_config());
    sched.add(request(1, 10, 4)).expect("fits");
    assert!(sched.abort(SeqId(1)));
    assert_eq!(sched.num_waiting(), 0);
    sched.check_invariants();
}

#[test]
fn output_for_a_sequence_aborted_after_planning_is_ignored() {
    let mut sched = scheduler(small_config());
    sched.add(request(1, 4, 4)).expect("fits");
    let plan = sched.schedule();
    sched.abort(SeqId(1));
    sample_all(&mut sched, &plan);
}

#[test]
fn requests_that_can_never_fit_are_refused_naming_limit_and_value() {
    let mut sched = scheduler(small_config());
    assert_eq!(
        sched.add(request(1, 60, 10)),
        Err(SchedulerError::ExceedsMaxModelLen {
            seq: SeqId(1),
            limit: 64,
            value: 70
        })
    );
    let mut sched = scheduler(SchedulerConfig {
        num_blocks: 4,
        ..small_config()
    });
    assert_eq!(
        sched.add(request(2, 16, 2)),
        Err(SchedulerError::ExceedsKvPool {
            seq: SeqId(2),
            limit: 4,
            value: 5
        })
    );
    assert_eq!(
        sched.add(request(3, 0, 2)),
        Err(SchedulerError::EmptyPrompt { seq: SeqId(3) })
    );
    assert_eq!(
        sched.add(request(4, 2, 0)),
        Err(SchedulerError::ZeroMaxTokens { seq: SeqId(4) })
    );
    assert_eq!(sched.num_waiting(), 0, "refused requests are not queued");
}

#[test]
fn a_request_whose_peak_exactly_fills_the_pool_is_accepted() {
    let mut sched = scheduler(SchedulerConfig {
        num_blocks: 4,
        ..small_config()
    });
    // 15 prompt + 2 generated; the last generated token is never cached: 16 entries.
    sched.add(request(1, 15, 2)).expect("peak is 4 blocks");
}

#[test]
fn a_duplicate_id_is_refused() {
    let mut sched = scheduler(small_config());
    sched.add(request(1, 4, 4)).expect("fits");
    assert_eq!(
        sched.add(request(1, 4, 4)),
        Err(SchedulerError::DuplicateSequence { seq: SeqId(1) })
    );
}

#[test]
fn reaching_max_tokens_finishes_with_length_and_frees_blocks() {
    let mut sched = scheduler(small_config());
    sched.add(request(1, 4, 2)).expect("fits");
    step(&mut sched);
    step(&mut sched);
    assert_eq!(sched.allocator().num_used(), 0);
    let plan = sched.schedule();
    assert_eq!(
        plan.finished,
        [FinishedSeq {
            seq: SeqId(1),
            reason: FinishReason::Length
        }]
    );
    assert!(plan.is_idle());
}

#[test]
fn a_stop_reported_by_the_engine_finishes_the_sequence() {
    let mut sched = scheduler(small_config());
    sched.add(request(1, 4, 8)).expect("fits");
    sched.schedule();
    let stop = SeqOutput {
        seq: SeqId(1),
        appended_tokens: 1,
        finish: Some(FinishReason::Stop),
    };
    sched
        .update(&StepResult {
            outputs: vec![stop],
        })
        .expect("valid");
    assert_eq!(
        sched.sequence(SeqId(1)).map(|s| s.status),
        Some(SeqStatus::Finished(FinishReason::Stop))
    );
    sched.check_invariants();
}

#[test]
fn update_refuses_outputs_the_plan_did_not_ask_for() {
    let mut sched = scheduler(SchedulerConfig {
        max_num_batched_tokens: 4,
        ..small_config()
    });
    sched.add(request(1, 8, 8)).expect("fits");
    sched.schedule(); // first of two chunks: nothing sampled
    let output = |appended_tokens, finish| StepResult {
        outputs: vec![SeqOutput {
            seq: SeqId(1),
            appended_tokens,
            finish,
        }],
    };
    assert_eq!(
        sched.update(&output(1, None)),
        Err(SchedulerError::UnexpectedOutput { seq: SeqId(1) })
    );
    sched.schedule(); // last chunk: one token sampled
    assert_eq!(
        sched.update(&output(2, None)),
        Err(SchedulerError::TooManyAppendedTokens {
            seq: SeqId(1),
            limit: 1,
            value: 2
        })
    );
    assert_eq!(
        sched.update(&output(0, None)),
        Err(SchedulerError::MissingSampledToken { seq: SeqId(1) })
    );
    sched.update(&output(1, None)).expect("the owed token");
    sched.check_invariants();
}

#[test]
fn eviction_releases_blocks_held_before_minus_blocks_for_kept_entries() {
    let mut sched = scheduler(small_config());
    sched.add(request(1, 10, 8)).expect("fits");
    step(&mut sched);
    // 10 prompt entries in 3 blocks; keep 3 entries -> 1 block.
    let outcome = sched.apply_eviction(SeqId(1), 3).expect("prefill complete");
    assert_eq!(
        outcome,
        EvictionOutcome {
            evicted_entries: 7,
            released_blocks: 3 - 3usize.div_ceil(4)
        }
    );
    assert_eq!(sched.allocator().num_used(), 1);
    sched.check_invariants();
    let plan = step(&mut sched);
    assert_eq!(
        plan.decodes,
        [DecodeStep {
            seq: SeqId(1),
            position: 10,
            cache_entry: 3
        }]
    );
    let info = sched.sequence(SeqId(1)).expect("running");
    assert_eq!((info.num_computed_tokens, info.num_cached_entries), (11, 4));
}

#[test]
fn decode_after_eviction_allocates_only_at_block_boundaries_of_kept_entries() {
    let mut sched = scheduler(small_config());
    sched.add(request(1, 10, 8)).expect("fits");
    step(&mut sched);
    sched.apply_eviction(SeqId(1), 4).expect("prefill complete");
    assert_eq!(sched.allocator().num_used(), 1);
    step(&mut sched); // entry 4 opens block 2
    assert_eq!(sched.allocator().num_used(), 2);
    step(&mut sched);
    assert_eq!(sched.allocator().num_used(), 2);
}

#[test]
fn eviction_is_refused_during_prefill_or_growing_or_off_the_running_list() {
    let mut sched = scheduler(SchedulerConfig {
        max_num_batched_tokens: 4,
        ..small_config()
    });
    sched.add(request(1, 8, 8)).expect("fits");
    assert_eq!(
        sched.apply_eviction(SeqId(1), 1),
        Err(SchedulerError::NotRunning { seq: SeqId(1) })
    );
    step(&mut sched);
    assert_eq!(
        sched.apply_eviction(SeqId(1), 1),
        Err(SchedulerError::EvictionDuringPrefill {
            seq: SeqId(1),
            computed: 4,
            prefill: 8
        })
    );
    step(&mut sched);
    assert_eq!(
        sched.apply_eviction(SeqId(1), 9),
        Err(SchedulerError::EvictionGrowsCache {
            seq: SeqId(1),
            limit: 8,
            value: 9
        })
    );
    sched.check_invariants();
}

#[test]
fn blocks_freed_by_eviction_admit_the_next_request() {
    let mut sched = scheduler(SchedulerConfig {
        num_blocks: 4,
        ..small_config()
    });
    sched.add(request(1, 12, 4)).expect("fits");
    sched.add(request(2, 8, 4)).expect("fits");
    let plan = step(&mut sched);
    assert_eq!(plan.prefills.len(), 1, "seq 2 needs 2 blocks, 1 is free");
    sched.apply_eviction(SeqId(1), 2).expect("prefill complete");
    let plan = step(&mut sched);
    assert_eq!(plan.prefills.len(), 1);
    assert_eq!(plan.prefills[0].seq, SeqId(2));
}

#[test]
fn a_sequence_still_owed_an_output_is_not_scheduled_again() {
    let mut sched = scheduler(small_config());
    sched.add(request(1, 4, 4)).expect("fits");
    let first = sched.schedule();
    assert_eq!(first.prefills.len(), 1);
    let second = sched.schedule();
    assert!(
        second.is_idle(),
        "no token to feed until the sampled one is reported"
    );
    sample_all(&mut sched, &first);
    assert_eq!(sched.schedule().decodes.len(), 1);
}

#[test]
fn decodes_beyond_the_token_budget_wait_for_the_next_step_in_arrival_order() {
    let mut sched = scheduler(SchedulerConfig {
        max_num_batched_tokens: 2,
        ..small_config()
    });
    for id in 1..=3 {
        sched.add(request(id, 1, 4)).expect("fits");
    }
    step(&mut sched); // prefills 1 and 2
    step(&mut sched); // decode 1, decode 2: budget spent, 3 still waiting
    assert_eq!(sched.num_waiting(), 1);
    let plan = step(&mut sched);
    let decoded: Vec<SeqId> = plan.decodes.iter().map(|d| d.seq).collect();
    assert_eq!(decoded, [SeqId(1), SeqId(2)]);
}

fn request_with(id: u64, prompt: usize, min_tokens: usize, extra_rows: usize) -> Request {
    Request {
        last_chunk: LastChunk {
            min_tokens,
            extra_rows,
            eviction: None,
        },
        ..request(id, prompt, 4)
    }
}

#[test]
fn a_split_prefill_leaves_its_scoring_window_for_the_last_chunk() {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_num_batched_tokens: 16,
        ..small_config()
    })
    .unwrap();
    sched.add(request_with(1, 40, 10, 0)).unwrap();
    let chunks: Vec<usize> = (0..3)
        .map(|_| {
            let plan = sched.schedule();
            plan.prefills[0].num_tokens
        })
        .collect();
    // 16 + 14 leaves exactly the window of 10 for the last chunk.
    assert_eq!(chunks, [16, 14, 10]);
}

#[test]
fn lookahead_rows_count_against_the_step_budget() {
    let mut sched = Scheduler::new(SchedulerConfig {
        max_num_batched_tokens: 20,
        ..small_config()
    })
    .unwrap();
    sched.add(request_with(1, 12, 0, 8)).unwrap();
    sched.add(request_with(2, 12, 0, 8)).unwrap();
    let plan = sched.schedule();
    // 12 tokens + 8 lookahead rows fill the budget: the second request waits for the next step.
    assert_eq!(plan.prefills.len(), 1);
    assert!(plan.prefills[0].is_last_chunk);
    assert_eq!(plan.num_batched_tokens, 20);
    let error = sched.add(request_with(3, 12, 16, 8)).unwrap_err();
    assert!(
        matches!(
            error,
            SchedulerError::LastChunkExceedsBudget {
                limit: 20,
                value: 24,
                ..
            }
        ),
        "{error:?}"
    );
}

/// A request for `prompt` with its block hashes.
fn cached_request(sched: &Scheduler, id: u64, prompt: &[u32], last_chunk: LastChunk) -> Request {
    Request {
        last_chunk,
        block_hashes: sched.hash_prompt(prompt),
        ..request(id, prompt.len(), 4)
    }
}

/// Runs until every request finished, checking invariants after each step.
fn run_to_end(sched: &mut Scheduler) {
    while sched.has_unfinished() {
        step(sched);
        sched.check_invariants();
    }
}

/// Runs a request for `prompt` to the end, which publishes its full blocks, then plans a
/// second request for the same prompt: the plan that may hit the cache.
fn plan_a_repeat(sched: &mut Scheduler, prompt: &[u32], last_chunk: LastChunk) -> Plan {
    sched
        .add(cached_request(sched, 1, prompt, last_chunk))
        .unwrap();
    run_to_end(sched);
    assert_eq!(
        sched.allocator().num_cached(),
        prompt.len() / sched.config().block_size,
        "every full block of the first run is cached"
    );
    sched
        .add(cached_request(sched, 2, prompt, last_chunk))
        .unwrap();
    sched.schedule()
}

#[test]
fn a_repeated_prompt_prefills_only_what_the_cache_lacks() {
    let mut sched = scheduler(small_config());
    let prompt: Vec<u32> = (0..10).collect();
    let plan = plan_a_repeat(&mut sched, &prompt, LastChunk::default());
    assert_eq!(sched.allocator().num_cached(), 2, "two full blocks of 4");
    assert_eq!(
        (plan.prefills[0].first_position, plan.prefills[0].num_tokens),
        (8, 2)
    );
    assert_eq!(
        plan.prefix_cache,
        crate::PrefixCacheStats {
            queried_tokens: 10,
            hit_tokens: 8
        }
    );
    sched.check_invariants();
}

#[test]
fn a_prompt_of_whole_blocks_still_computes_its_last_block() {
    let mut sched = scheduler(small_config());
    let prompt: Vec<u32> = (0..8).collect();
    let plan = plan_a_repeat(&mut sched, &prompt, LastChunk::default());
    assert_eq!(
        (plan.prefills[0].first_position, plan.prefills[0].num_tokens),
        (4, 4),
        "the last token is recomputed, so its whole block is"
    );
}

#[test]
fn a_hit_backs_off_whole_blocks_to_leave_the_scoring_window_computed() {
    let mut sched = scheduler(small_config());
    let prompt: Vec<u32> = (0..21).collect();
    let window = LastChunk {
        min_tokens: 6,
        ..LastChunk::default()
    };
    let plan = plan_a_repeat(&mut sched, &prompt, window);
    // 5 cached blocks (20 tokens) would leave 1 token; 21 − 6 = 15 → 3 blocks.
    assert_eq!(plan.prefills[0].first_position, 12);
    assert_eq!(plan.prefills[0].num_tokens, 9);
}

#[test]
fn an_evicting_request_compacts_into_fresh_blocks_and_leaves_its_prompt_cached() {
    let mut sched = scheduler(small_config());
    let prompt: Vec<u32> = (0..18).collect();
    let evicting = LastChunk {
        eviction: Some(crate::EvictionBound {
            over_tokens: 6,
            max_kept_entries: 6,
        }),
        ..LastChunk::default()
    };
    sched
        .add(cached_request(&sched, 1, &prompt, evicting))
        .unwrap();
    let plan = sched.schedule();
    let table = sched.block_table(SeqId(1)).unwrap().to_vec();
    assert_eq!(table.len(), 5 + 2, "5 prompt blocks and 2 to compact into");
    assert_eq!(plan.prefills[0].compact_into_block, Some(5));
    sample_all(&mut sched, &plan);
    let outcome = sched.apply_eviction(SeqId(1), 6).unwrap();
    assert_eq!(outcome.released_blocks, 5 - 2);
    assert_eq!(sched.block_table(SeqId(1)).unwrap(), &table[5..]);
    assert_eq!(sched.allocator().num_cached(), 4, "the full prompt blocks");
    assert_eq!(sched.allocator().num_cached_idle(), 4);
    sched.check_invariants();
    sched
        .add(cached_request(&sched, 2, &prompt, evicting))
        .unwrap();
    let plan = sched.schedule();
    let chunk = plan.prefills.iter().find(|c| c.seq == SeqId(2)).unwrap();
    assert_eq!((chunk.first_position, chunk.num_tokens), (16, 2));
    sched.check_invariants();
}

#[test]
fn a_preempted_request_resumes_from_its_cached_prompt() {
    let mut sched = scheduler(SchedulerConfig {
        num_blocks: 6,
        ..small_config()
    });
    let first: Vec<u32> = (0..12).collect();
    let second: Vec<u32> = (100..111).collect();
    sched
        .add(Request {
            max_tokens: 8,
            ..cached_request(&sched, 1, &first, LastChunk::default())
        })
        .unwrap();
    sched
        .add(Request {
            max_tokens: 8,
            ..cached_request(&sched, 2, &second, LastChunk::default())
        })
        .unwrap();
    let mut resumed_at = None;
    while sched.has_unfinished() {
        let plan = step(&mut sched);
        sched.check_invariants();
        if let Some(chunk) = plan
            .prefills
            .iter()
            .find(|c| c.seq == SeqId(2) && plan.prefix_cache.hit_tokens > 0)
        {
            resumed_at.get_or_insert(chunk.first_position);
        }
    }
    let resumed_at = resumed_at.expect("request 2 was preempted and hit its cached prompt");
    assert!(resumed_at > 0 && resumed_at % 4 == 0, "{resumed_at}");
    assert_eq!(sched.allocator().num_used(), 0);
}

#[test]
fn cached_blocks_are_reclaimed_only_when_no_plain_free_block_is_left() {
    let mut sched = scheduler(SchedulerConfig {
        num_blocks: 4,
        ..small_config()
    });
    let prompt: Vec<u32> = (0..9).collect();
    sched
        .add(cached_request(&sched, 1, &prompt, LastChunk::default()))
        .unwrap();
    run_to_end(&mut sched);
    assert_eq!(sched.allocator().num_cached(), 2);
    sched.add(request(2, 4, 1)).unwrap();
    run_to_end(&mut sched);
    assert_eq!(
        sched.allocator().num_cached(),
        2,
        "a plain free block served"
    );
    sched.add(request(3, 12, 1)).unwrap();
    run_to_end(&mut sched);
    assert_eq!(
        sched.allocator().num_cached(),
        1,
        "one cached block reclaimed"
    );
}

#[test]
fn with_prefix_caching_off_nothing_is_hashed_or_reused() {
    let mut sched = scheduler(SchedulerConfig {
        enable_prefix_caching: false,
        ..small_config()
    });
    let prompt: Vec<u32> = (0..10).collect();
    assert!(sched.hash_prompt(&prompt).is_empty());
    for id in [1, 2] {
        sched
            .add(cached_request(&sched, id, &prompt, LastChunk::default()))
            .unwrap();
        let plan = sched.schedule();
        assert_eq!(plan.prefills[0].first_position, 0);
        assert_eq!(plan.prefix_cache, crate::PrefixCacheStats::default());
        sample_all(&mut sched, &plan);
        run_to_end(&mut sched);
    }
    assert_eq!(sched.allocator().num_cached(), 0);
}
