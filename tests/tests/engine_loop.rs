//! The engine loop's stop rules, cancellation and validation on the bundled stories260K model.

mod common;

use common::add;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use glimpse_engine::backend::{Device, create_backend};
use glimpse_engine::config::KvCacheDtype;
use glimpse_engine::model::Model;
use glimpse_engine::sampling::SamplingParams;
use glimpse_engine::tokenizer::Tokenizer;
use glimpse_server::engine_loop::{
    self, BatchLimits, EngineCore, FinishReason, FinishedEvent, GenerationRequest, RequestError,
    StopConditions,
};
use tokio::sync::mpsc::unbounded_channel;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stories260K")
}

fn core() -> (EngineCore, Arc<Tokenizer>) {
    let model = Model::load(&model_dir()).unwrap();
    let tokenizer = Arc::new(Tokenizer::from_dir(model_dir()).unwrap());
    let backend = create_backend(Device::Cpu, &model, 16, 64, KvCacheDtype::F32, None).unwrap();
    let core = EngineCore::new(
        &model,
        Arc::clone(&tokenizer),
        backend,
        BatchLimits::default(),
        Default::default(),
    )
    .unwrap();
    (core, tokenizer)
}

fn request(tokenizer: &Tokenizer, prompt: &str, stop: StopConditions) -> GenerationRequest {
    GenerationRequest {
        prompt_ids: tokenizer.encode(prompt, true).unwrap(),
        sampling: SamplingParams::greedy(),
        stop,
        skip_special_tokens: true,
        kv_cache: None,
    }
}

fn run(core: &mut EngineCore, request: GenerationRequest) -> (Vec<u32>, String, FinishedEvent) {
    let (tx, rx) = unbounded_channel();
    add(core, request, tx).unwrap();
    while core.has_work() {
        core.step();
    }
    // Every event is queued by now; `collect` reads them up to the final one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(engine_loop::collect(rx)).unwrap()
}

fn max_tokens(n: usize) -> StopConditions {
    StopConditions {
        max_tokens: n,
        ..StopConditions::default()
    }
}

#[test]
fn streamed_text_is_the_decode_of_the_tokens_and_reproduces_golden() {
    let (mut core, tokenizer) = core();
    let (ids, text, finished) = run(
        &mut core,
        request(&tokenizer, "Once upon a time", max_tokens(64)),
    );
    assert_eq!(finished.reason, FinishReason::Length);
    assert_eq!(text, tokenizer.decode(&ids, true).unwrap());
    assert!(
        text.starts_with(", there was a little girl named Lily."),
        "{text}"
    );
    assert_eq!(finished.usage.completion_tokens, 64);
    assert!(finished.timings.time_to_first_token <= finished.timings.total);
}

#[test]
fn a_stop_string_spanning_tokens_ends_the_stream_and_is_cut() {
    let (mut core, tokenizer) = core();
    let stop = StopConditions {
        stop_strings: vec!["little girl".into()],
        ..max_tokens(64)
    };
    let (_, text, finished) = run(&mut core, request(&tokenizer, "Once upon a time", stop));
    assert_eq!(text, ", there was a ");
    assert_eq!(
        finished.reason,
        FinishReason::StopString("little girl".into())
    );
}

#[test]
fn a_stop_token_ends_the_stream_but_not_before_min_tokens() {
    let (mut core, tokenizer) = core();
    let (free_ids, _, _) = run(
        &mut core,
        request(&tokenizer, "Once upon a time", max_tokens(8)),
    );
    let stop_token = free_ids[0];
    let stop = StopConditions {
        stop_token_ids: vec![stop_token],
        ..max_tokens(8)
    };
    let (ids, _, finished) = run(
        &mut core,
        request(&tokenizer, "Once upon a time", stop.clone()),
    );
    assert_eq!(
        (ids, finished.reason),
        (vec![stop_token], FinishReason::Stop)
    );
    let held = StopConditions {
        min_tokens: 3,
        ..stop
    };
    let (ids, _, _) = run(&mut core, request(&tokenizer, "Once upon a time", held));
    assert!(ids.len() >= 3, "{ids:?}");
    assert!(
        !ids[..2].contains(&stop_token),
        "stop token sampled below min_tokens: {ids:?}"
    );
}

#[test]
fn a_dropped_stream_is_aborted_and_its_blocks_freed_within_one_step() {
    let (mut core, tokenizer) = core();
    let (tx, rx) = unbounded_channel();
    add(
        &mut core,
        request(&tokenizer, "Once upon a time", max_tokens(200)),
        tx,
    )
    .unwrap();
    core.step();
    assert!(core.scheduler().allocator().num_used() > 0);
    drop(rx);
    let report = core.step();
    assert_eq!(report.completed.len(), 1);
    assert_eq!(report.completed[0].reason, FinishReason::Abort);
    assert_eq!(core.scheduler().allocator().num_used(), 0);
    assert!(!core.has_work());
}

#[test]
fn invalid_requests_are_refused_naming_the_field() {
    let (mut core, tokenizer) = core();
    let mut refuse = |r: GenerationRequest| {
        let (tx, _rx) = unbounded_channel();
        add(&mut core, r, tx).unwrap_err()
    };
    let base = request(&tokenizer, "Once upon a time", max_tokens(4));
    let field = |e: RequestError| match e {
        RequestError::InvalidParameter { field, .. } => field,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        field(refuse(GenerationRequest {
            stop: max_tokens(0),
            ..base.clone()
        })),
        "max_tokens"
    );
    let min_over_max = StopConditions {
        min_tokens: 5,
        ..max_tokens(4)
    };
    assert_eq!(
        field(refuse(GenerationRequest {
            stop: min_over_max,
            ..base.clone()
        })),
        "min_tokens"
    );
    let hot = SamplingParams {
        temperature: -1.0,
        ..SamplingParams::default()
    };
    assert_eq!(
        field(refuse(GenerationRequest {
            sampling: hot,
            ..base.clone()
        })),
        "temperature"
    );
    assert_eq!(
        field(refuse(GenerationRequest {
            prompt_ids: vec![],
            ..base.clone()
        })),
        "prompt"
    );
    assert_eq!(
        field(refuse(GenerationRequest {
            prompt_ids: vec![9999],
            ..base.clone()
        })),
        "prompt"
    );
    let too_long = refuse(GenerationRequest {
        stop: max_tokens(600),
        ..base
    });
    assert!(
        matches!(too_long, RequestError::TooLong { ref message } if message.contains("512")),
        "{too_long:?}"
    );
}

#[test]
fn the_threaded_loop_serves_concurrent_submissions() {
    let (core, tokenizer) = core();
    let (handle, thread) = engine_loop::spawn(core, ());
    let streams: Vec<_> = (0..8)
        .map(|i| {
            let request = request(&tokenizer, &format!("Once upon a time {i}"), max_tokens(20));
            handle.submit(handle.validator().validate(request).unwrap())
        })
        .collect();
    drop(handle);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for stream in streams {
        let (ids, _, finished) = runtime.block_on(engine_loop::collect(stream)).unwrap();
        assert_eq!((ids.len(), finished.reason), (20, FinishReason::Length));
    }
    thread.join.join().unwrap();
}
