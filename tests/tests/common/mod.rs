//! Helpers shared by the engine-loop integration tests.
// Each test binary compiles this module and uses only some of its helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use glimpse_engine::sampling::SamplingParams;
use glimpse_server::engine_loop::{
    EngineCore, EventSink, GenerationRequest, RequestError, StreamEvent,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Validates `request` with the engine's validator, then queues it (what a handler does).
pub fn add(
    core: &mut EngineCore,
    request: GenerationRequest,
    events: EventSink,
) -> Result<(), RequestError> {
    let request = core.validator().validate(request)?;
    core.add_request(request, events, Instant::now()).map(drop)
}

/// The repository root, where `models/` and `engine/tests/fixtures/` live.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Greedy, or seeded sampling with `seed` (temperature, top-p and top-k all in play).
pub fn sampling(sampled: bool, seed: u64) -> SamplingParams {
    if !sampled {
        return SamplingParams::greedy();
    }
    SamplingParams {
        temperature: 0.9,
        top_p: 0.9,
        top_k: 40,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

/// The token ids of a finished stream; panics if it failed or did not finish.
fn drain(events: &mut UnboundedReceiver<StreamEvent>) -> Vec<u32> {
    let mut ids = Vec::new();
    while let Ok(event) = events.try_recv() {
        match event {
            StreamEvent::Token(t) => ids.push(t.token_id),
            StreamEvent::Finished(_) => return ids,
            StreamEvent::Error(e) => panic!("request failed: {e}"),
        }
    }
    panic!("stream did not finish")
}

/// What one [`run`] produced and how it went.
pub struct Run {
    /// Each request's token ids, in submission order.
    pub outputs: Vec<Vec<u32>>,
    /// Prompt tokens found in the prefix cache, over all steps.
    pub hit_tokens: usize,
    pub preemptions: usize,
}

/// Submits `per_step` requests before each step (all at once with `requests.len()`) and runs
/// until idle, checking the scheduler's invariants after every step and that no block leaked.
pub fn run(core: &mut EngineCore, requests: &[GenerationRequest], per_step: usize) -> Run {
    let mut streams = Vec::new();
    let (mut hit_tokens, mut preemptions) = (0, 0);
    let mut pending = requests.chunks(per_step);
    loop {
        if let Some(arrivals) = pending.next() {
            for request in arrivals {
                let (tx, rx) = unbounded_channel();
                add(core, request.clone(), tx).unwrap();
                streams.push(rx);
            }
        } else if !core.has_work() {
            break;
        }
        let report = core.step();
        hit_tokens += report.prefix_cache.hit_tokens;
        preemptions += report.num_preempted;
        core.scheduler().check_invariants();
    }
    let pool = core.scheduler().allocator();
    assert_eq!(pool.num_used(), 0, "blocks leaked");
    assert_eq!(pool.num_cached(), pool.num_cached_idle());
    Run {
        outputs: streams.iter_mut().map(drain).collect(),
        hit_tokens,
        preemptions,
    }
}
