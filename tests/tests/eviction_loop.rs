//! KV eviction through the engine loop on the bundled stories260K model: blocks go back to the
//! pool in the step that finishes a prefill, so more long prompts run at once than a full cache
//! allows, and every policy decodes to completion on its compacted cache.

mod common;

use common::add;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use glimpse_engine::backend::{Device, create_backend};
use glimpse_engine::config::KvCacheDtype;
use glimpse_engine::eviction::{EvictionPolicy, Policy, Pool};
use glimpse_engine::lookahead::{LookaheadModule, RandomInit};
use glimpse_engine::model::Model;
use glimpse_engine::sampling::SamplingParams;
use glimpse_engine::tokenizer::Tokenizer;
use glimpse_server::engine_loop::{
    BatchLimits, EngineCore, EvictionSettings, GenerationRequest, RequestError, StopConditions,
    StreamEvent,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const BLOCK_SIZE: usize = 16;
const PROMPT_LEN: usize = 300;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stories260K")
}

/// An engine over a pool of `num_blocks`, with a random lookahead module when asked.
fn core(num_blocks: usize, with_lookahead: bool) -> EngineCore {
    let model = Model::load(&model_dir()).unwrap();
    let tokenizer = Arc::new(Tokenizer::from_dir(model_dir()).unwrap());
    let module = with_lookahead.then(|| {
        let identity = model.identity().unwrap();
        Arc::new(LookaheadModule::random(
            &model.config,
            identity,
            RandomInit::default(),
        ))
    });
    let eviction = EvictionSettings {
        lookahead_tokens: module.as_ref().map(|m| m.num_tokens),
        ..EvictionSettings::default()
    };
    let backend = create_backend(
        Device::Cpu,
        &model,
        BLOCK_SIZE,
        num_blocks,
        KvCacheDtype::F32,
        module,
    )
    .unwrap();
    EngineCore::new(&model, tokenizer, backend, BatchLimits::default(), eviction).unwrap()
}

fn request(seed: u32, policy: EvictionPolicy, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        prompt_ids: (0..PROMPT_LEN as u32)
            .map(|i| 3 + (i * 31 + seed * 97) % 500)
            .collect(),
        sampling: SamplingParams::greedy(),
        stop: StopConditions {
            max_tokens,
            ignore_eos: true,
            ..StopConditions::default()
        },
        skip_special_tokens: true,
        kv_cache: Some(policy),
    }
}

fn snapkv(budget: usize) -> EvictionPolicy {
    EvictionPolicy {
        policy: Policy::snapkv(),
        budget,
    }
}

/// Runs the engine until idle; returns the most requests that ran at once.
fn run_to_idle(core: &mut EngineCore) -> usize {
    let mut peak = 0;
    while core.has_work() {
        core.step();
        peak = peak.max(core.scheduler().num_running());
    }
    peak
}

fn generated(events: &mut UnboundedReceiver<StreamEvent>) -> (usize, usize) {
    let mut tokens = 0;
    while let Ok(event) = events.try_recv() {
        match event {
            StreamEvent::Token(_) => tokens += 1,
            StreamEvent::Finished(done) => return (tokens, done.usage.kv_entries_kept),
            StreamEvent::Error(e) => panic!("request failed: {e}"),
        }
    }
    panic!("stream ended without a final event");
}

#[test]
fn the_prefill_step_returns_the_evicted_blocks() {
    let mut core = core(64, false);
    let (tx, mut rx) = unbounded_channel();
    add(&mut core, request(1, snapkv(64), 4), tx).unwrap();
    let report = core.step();
    assert_eq!(report.num_sampled, 1, "the whole prompt fits one step");
    let [eviction] = report.evictions.as_slice() else {
        panic!("one eviction expected, got {:?}", report.evictions);
    };
    let held = PROMPT_LEN.div_ceil(BLOCK_SIZE);
    let needed = 64usize.div_ceil(BLOCK_SIZE);
    assert_eq!(eviction.released_blocks, held - needed);
    assert_eq!(eviction.evicted_tokens, PROMPT_LEN - 64);
    assert_eq!(core.scheduler().allocator().num_used(), needed);
    run_to_idle(&mut core);
    assert_eq!(generated(&mut rx), (4, 64));
    assert_eq!(core.scheduler().allocator().num_used(), 0);
}

#[test]
fn evicting_prompts_run_more_at_once_in_the_same_pool() {
    // 40 blocks hold two 300-token prompts with their 8 output tokens (20 blocks each). A
    // prompt needs its 19 full blocks while it is prefilled, then keeps 4 (48 + 8 entries).
    let peak = |policy: EvictionPolicy| {
        let mut core = core(40, false);
        let mut streams = Vec::new();
        for seed in 0..6 {
            let (tx, rx) = unbounded_channel();
            add(&mut core, request(seed, policy, 8), tx).unwrap();
            streams.push(rx);
        }
        let peak = run_to_idle(&mut core);
        for rx in &mut streams {
            assert_eq!(generated(rx).0, 8);
        }
        peak
    };
    let full = peak(EvictionPolicy::default());
    let evicting = peak(snapkv(48));
    assert_eq!(full, 2);
    assert!(
        evicting >= 5,
        "budget 48 should run at least 5 of 6 prompts at once, ran {evicting}"
    );
}

#[test]
fn every_policy_decodes_to_the_end_on_its_compacted_cache() {
    let policies = [
        Policy::streaming_llm(),
        Policy::snapkv(),
        Policy::SnapKv {
            window: 16,
            kernel: 5,
            pool: Pool::Avg,
        },
        // β = 2 with a small window makes the per-layer budgets really differ.
        Policy::PyramidKv {
            window: 8,
            kernel: 7,
            pool: Pool::Max,
            beta: 2,
        },
        Policy::lookahead(),
    ];
    let mut core = core(128, true);
    let mut streams = Vec::new();
    for (seed, policy) in policies.into_iter().enumerate() {
        let policy = EvictionPolicy { policy, budget: 64 };
        let (tx, rx) = unbounded_channel();
        add(&mut core, request(seed as u32, policy, 40), tx).unwrap();
        streams.push((policy, rx));
    }
    run_to_idle(&mut core);
    for (policy, rx) in &mut streams {
        let (tokens, kept) = generated(rx);
        assert_eq!(tokens, 40, "{policy:?}");
        assert!((64..=PROMPT_LEN).contains(&kept), "{policy:?} kept {kept}");
    }
    assert_eq!(core.scheduler().allocator().num_used(), 0);
}

#[test]
fn lookahead_without_a_module_is_refused() {
    let mut core = core(64, false);
    let (tx, _rx) = unbounded_channel();
    let policy = EvictionPolicy {
        policy: Policy::lookahead(),
        budget: 64,
    };
    let error = add(&mut core, request(1, policy, 4), tx).unwrap_err();
    assert!(
        matches!(error, RequestError::NotConfigured { .. }),
        "{error:?}"
    );
    let (tx, _rx) = unbounded_channel();
    let error = add(&mut core, request(1, snapkv(16), 4), tx).unwrap_err();
    assert!(
        matches!(
            &error,
            RequestError::InvalidParameter { field, .. } if field == "eviction.window"
        ),
        "{error:?}"
    );
}
