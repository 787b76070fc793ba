//! Prometheus metrics (docs/design.md §5): names with the `glimpse_` prefix in base units, histograms with
//! vLLM's bucket edges so dashboards port, a `# HELP` line for each (from [`DESCRIPTIONS`]) and a
//! `model_name` label on every series, as vLLM has. The engine thread records through
//! [`EngineMetrics`] (a [`StepObserver`], which never sees the warm-up); refused requests of both
//! wires are counted with [`record_error`] by [`crate::refusal`]. [`serve`] answers `GET /metrics`
//! on its own port, and 404 on every other path.

use std::time::Duration;

use glimpse_engine::eviction::PolicyKind;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::auth::BearerToken;
use crate::engine_loop::{EngineCore, StepObserver, StepReport};
use crate::http::require_token;
use crate::net::{Incoming, serve_http1};

/// vLLM's TTFT buckets (seconds).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's inter-token latency buckets (seconds).
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's request-latency buckets (seconds): e2e, queue, prefill.
const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// Eviction time is milliseconds-scale: the TTFT buckets fit it.
const EVICTION_BUCKETS: &[f64] = TTFT_BUCKETS;
/// vLLM's iteration-token buckets.
const ITERATION_TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

pub const TTFT: &str = "glimpse_time_to_first_token_seconds";
pub const ITL: &str = "glimpse_inter_token_latency_seconds";
pub const E2E: &str = "glimpse_e2e_request_latency_seconds";
pub const QUEUE_TIME: &str = "glimpse_request_queue_time_seconds";
pub const PREFILL_TIME: &str = "glimpse_request_prefill_time_seconds";
pub const EVICTION_TIME: &str = "glimpse_kv_eviction_seconds";
pub const PROMPT_TOKENS: &str = "glimpse_request_prompt_tokens";
pub const GENERATION_TOKENS: &str = "glimpse_request_generation_tokens";
pub const ITERATION_TOKENS: &str = "glimpse_iteration_tokens";

/// The label every series carries: the name the model is served under (`--model-name`).
pub const MODEL_NAME_LABEL: &str = "model_name";

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric: its name, kind, unit and `# HELP` text.
#[derive(Debug, Clone, Copy)]
pub struct Description {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
}

const fn describe(name: &'static str, kind: Kind, unit: Unit, help: &'static str) -> Description {
    Description {
        name,
        kind,
        unit,
        help,
    }
}

/// Every metric Glimpse exports, with the text of its `# HELP` line (the unit is part of it).
pub const DESCRIPTIONS: &[Description] = &[
    describe(
        "glimpse_build_info",
        Kind::Gauge,
        Unit::Count,
        "Always 1; the labels say the version, model, device, KV block size (tokens) and KV cache dtype.",
    ),
    describe(
        "glimpse_kv_blocks_total",
        Kind::Gauge,
        Unit::Count,
        "KV-cache blocks in the pool (blocks).",
    ),
    describe(
        "glimpse_kv_cache_bytes",
        Kind::Gauge,
        Unit::Bytes,
        "Size of the KV-cache pool (bytes).",
    ),
    describe(
        "glimpse_device_memory_total_bytes",
        Kind::Gauge,
        Unit::Bytes,
        "Memory of the GPU the engine runs on; absent with --device cpu (bytes).",
    ),
    describe(
        "glimpse_device_memory_free_bytes",
        Kind::Gauge,
        Unit::Bytes,
        "Free memory of the GPU at start-up, before the weights and the KV-cache pool were allocated; absent with --device cpu (bytes).",
    ),
    describe(
        "glimpse_kv_blocks_used",
        Kind::Gauge,
        Unit::Count,
        "KV-cache blocks held by requests now (blocks).",
    ),
    describe(
        "glimpse_kv_blocks_cached",
        Kind::Gauge,
        Unit::Count,
        "KV-cache blocks holding a cached prompt prefix, in use or idle until reclaimed (blocks).",
    ),
    describe(
        "glimpse_kv_cache_usage_ratio",
        Kind::Gauge,
        Unit::Count,
        "Fraction of KV-cache blocks in use, 0 to 1 (the Inference Gateway's KV-cache utilisation).",
    ),
    describe(
        "glimpse_num_requests_running",
        Kind::Gauge,
        Unit::Count,
        "Requests scheduled on the engine now (requests).",
    ),
    describe(
        "glimpse_num_requests_waiting",
        Kind::Gauge,
        Unit::Count,
        "Requests queued for a slot now (requests; the Inference Gateway's queue size).",
    ),
    describe(
        "glimpse_prompt_tokens_total",
        Kind::Counter,
        Unit::Count,
        "Prompt tokens prefilled, recomputation after preemption included (tokens).",
    ),
    describe(
        "glimpse_generation_tokens_total",
        Kind::Counter,
        Unit::Count,
        "Tokens generated (tokens).",
    ),
    describe(
        "glimpse_prefix_cache_queries_total",
        Kind::Counter,
        Unit::Count,
        "Prompt tokens looked up in the prefix cache when a request is admitted (tokens).",
    ),
    describe(
        "glimpse_prefix_cache_hits_total",
        Kind::Counter,
        Unit::Count,
        "Prompt tokens found in the prefix cache when a request is admitted (tokens).",
    ),
    describe(
        "glimpse_num_preemptions_total",
        Kind::Counter,
        Unit::Count,
        "Requests preempted to free KV blocks, to be recomputed (preemptions).",
    ),
    describe(
        "glimpse_request_success_total",
        Kind::Counter,
        Unit::Count,
        "Requests that ended, by finished_reason: stop, length or abort (requests).",
    ),
    describe(
        "glimpse_request_errors_total",
        Kind::Counter,
        Unit::Count,
        "Requests refused or failed, by gRPC status code (requests).",
    ),
    describe(
        "glimpse_tokenizer_jobs_total",
        Kind::Counter,
        Unit::Count,
        "Jobs run on the tokenizer pool: prompts tokenized or rendered, token ids decoded (jobs).",
    ),
    describe(
        "glimpse_kv_evicted_tokens_total",
        Kind::Counter,
        Unit::Count,
        "Prompt tokens evicted from the KV cache per (layer, KV head), on average, by policy (tokens).",
    ),
    describe(
        "glimpse_kv_blocks_freed_by_eviction_total",
        Kind::Counter,
        Unit::Count,
        "KV blocks handed back to the pool by eviction, by policy (blocks).",
    ),
    describe(
        TTFT,
        Kind::Histogram,
        Unit::Seconds,
        "Time from arrival to the first generated token (seconds).",
    ),
    describe(
        ITL,
        Kind::Histogram,
        Unit::Seconds,
        "Time between consecutive generated tokens of a request (seconds).",
    ),
    describe(
        E2E,
        Kind::Histogram,
        Unit::Seconds,
        "Time from arrival to the end of a request (seconds).",
    ),
    describe(
        QUEUE_TIME,
        Kind::Histogram,
        Unit::Seconds,
        "Time from arrival to first being scheduled (seconds).",
    ),
    describe(
        PREFILL_TIME,
        Kind::Histogram,
        Unit::Seconds,
        "Time from first being scheduled to the first generated token (seconds).",
    ),
    describe(
        EVICTION_TIME,
        Kind::Histogram,
        Unit::Seconds,
        "Time spent scoring, selecting and compacting a prompt's KV cache (seconds).",
    ),
    describe(
        PROMPT_TOKENS,
        Kind::Histogram,
        Unit::Count,
        "Prompt length of each finished request (tokens).",
    ),
    describe(
        GENERATION_TOKENS,
        Kind::Histogram,
        Unit::Count,
        "Generated length of each finished request (tokens).",
    ),
    describe(
        ITERATION_TOKENS,
        Kind::Histogram,
        Unit::Count,
        "Tokens run through the model in one engine step (tokens).",
    ),
];

/// 1-2-5 buckets up to `max` (vLLM's token-count histograms).
fn one_two_five(max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 1.0;
    while decade <= max as f64 {
        for m in [1.0, 2.0, 5.0] {
            if m * decade <= max as f64 {
                out.push(m * decade);
            }
        }
        decade *= 10.0;
    }
    out
}

/// Static facts exported once as `glimpse_build_info`.
pub struct BuildInfo<'a> {
    /// The name the model is served under: the `model_name` label of every series.
    pub model: &'a str,
    pub device: &'a str,
    pub block_size: usize,
    /// What the KV pool stores entries in (`f32`, `bf16`): with bf16 the same bytes hold twice
    /// the blocks.
    pub kv_cache_dtype: &'a str,
    pub num_blocks: usize,
    pub kv_cache_bytes: usize,
    pub max_model_len: usize,
    /// The GPU's memory, read at start-up; `None` on the CPU.
    pub device_memory: Option<DeviceMemory>,
}

/// A GPU's memory as its probe read it at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// How often histograms drop samples past their window (the exporter's own default).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder, describes every metric and registers every series at zero,
/// so dashboards and alerts have data before the first request. Fails when the recorder cannot be
/// built or installed.
pub fn install(info: &BuildInfo<'_>) -> Result<PrometheusHandle, BuildError> {
    let token_buckets = one_two_five(info.max_model_len);
    let handle = PrometheusBuilder::new()
        .add_global_label(MODEL_NAME_LABEL, info.model)
        .set_buckets_for_metric(Matcher::Full(TTFT.into()), TTFT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(ITL.into()), ITL_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(E2E.into()), REQUEST_LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(QUEUE_TIME.into()), REQUEST_LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(PREFILL_TIME.into()), REQUEST_LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(EVICTION_TIME.into()), EVICTION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(PROMPT_TOKENS.into()), &token_buckets)?
        .set_buckets_for_metric(Matcher::Full(GENERATION_TOKENS.into()), &token_buckets)?
        .set_buckets_for_metric(
            Matcher::Full(ITERATION_TOKENS.into()),
            ITERATION_TOKEN_BUCKETS,
        )?
        .install_recorder()?;
    for d in DESCRIPTIONS {
        match d.kind {
            Kind::Counter => describe_counter!(d.name, d.unit, d.help),
            Kind::Gauge => describe_gauge!(d.name, d.unit, d.help),
            Kind::Histogram => describe_histogram!(d.name, d.unit, d.help),
        }
    }
    gauge!(
        "glimpse_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "model" => info.model.to_string(),
        "device" => info.device.to_string(),
        "block_size" => info.block_size.to_string(),
        "kv_cache_dtype" => info.kv_cache_dtype.to_string(),
    )
    .set(1.0);
    gauge!("glimpse_kv_blocks_total").set(info.num_blocks as f64);
    gauge!("glimpse_kv_cache_bytes").set(info.kv_cache_bytes as f64);
    if let Some(memory) = info.device_memory {
        gauge!("glimpse_device_memory_total_bytes").set(memory.total_bytes as f64);
        gauge!("glimpse_device_memory_free_bytes").set(memory.free_bytes as f64);
    }
    gauge!("glimpse_kv_blocks_used").set(0.0);
    gauge!("glimpse_kv_blocks_cached").set(0.0);
    gauge!("glimpse_kv_cache_usage_ratio").set(0.0);
    gauge!("glimpse_num_requests_running").set(0.0);
    gauge!("glimpse_num_requests_waiting").set(0.0);
    for name in [
        "glimpse_prompt_tokens_total",
        "glimpse_generation_tokens_total",
        "glimpse_num_preemptions_total",
        "glimpse_prefix_cache_queries_total",
        "glimpse_prefix_cache_hits_total",
        "glimpse_tokenizer_jobs_total",
    ] {
        counter!(name).absolute(0);
    }
    for reason in ["stop", "length", "abort"] {
        counter!("glimpse_request_success_total", "finished_reason" => reason).absolute(0);
    }
    for policy in PolicyKind::ALL.map(PolicyKind::name) {
        counter!("glimpse_kv_evicted_tokens_total", "policy" => policy).absolute(0);
        counter!("glimpse_kv_blocks_freed_by_eviction_total", "policy" => policy).absolute(0);
    }
    for name in [
        TTFT,
        ITL,
        E2E,
        QUEUE_TIME,
        PREFILL_TIME,
        EVICTION_TIME,
        PROMPT_TOKENS,
        GENERATION_TOKENS,
        ITERATION_TOKENS,
    ] {
        // Touch each histogram so its series exists from start-up.
        let _ = histogram!(name);
    }
    Ok(handle)
}

/// Serves `GET /metrics` from `handle` on `incoming` (every other path is 404; with `token`, it
/// is required) and runs the recorder's upkeep, until the runtime stops.
pub fn serve(
    incoming: Incoming,
    handle: PrometheusHandle,
    token: Option<BearerToken>,
    header_read_timeout: Duration,
) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(handle.render())),
    );
    let app = require_token(app, token);
    serve_http1(
        incoming,
        app,
        header_read_timeout,
        "metrics",
        std::future::pending(),
    );
}

/// Counts a request that failed with gRPC status `code` (e.g. `INVALID_ARGUMENT`).
pub fn record_error(code: &'static str) {
    counter!("glimpse_request_errors_total", "code" => code).increment(1);
}

/// Counts a job started on the tokenizer pool ([`crate::prompt::PromptWork`]).
pub fn record_tokenizer_job() {
    counter!("glimpse_tokenizer_jobs_total").increment(1);
}

/// Records what every engine step did.
pub struct EngineMetrics;

impl StepObserver for EngineMetrics {
    fn on_step(&mut self, core: &EngineCore, report: &StepReport) {
        let scheduler = core.scheduler();
        let allocator = scheduler.allocator();
        let geometry = core.backend().geometry();
        gauge!("glimpse_num_requests_running").set(scheduler.num_running() as f64);
        gauge!("glimpse_num_requests_waiting").set(scheduler.num_waiting() as f64);
        gauge!("glimpse_kv_blocks_used").set(allocator.num_used() as f64);
        gauge!("glimpse_kv_blocks_cached").set(allocator.num_cached() as f64);
        gauge!("glimpse_kv_cache_usage_ratio")
            .set(allocator.num_used() as f64 / geometry.num_blocks as f64);
        let tokens = report.num_prefill_tokens + report.num_decode_tokens;
        if tokens > 0 {
            histogram!(ITERATION_TOKENS).record(tokens as f64);
        }
        counter!("glimpse_prompt_tokens_total").increment(report.num_prefill_tokens as u64);
        counter!("glimpse_generation_tokens_total").increment(report.num_sampled as u64);
        counter!("glimpse_num_preemptions_total").increment(report.num_preempted as u64);
        counter!("glimpse_prefix_cache_queries_total")
            .increment(report.prefix_cache.queried_tokens as u64);
        counter!("glimpse_prefix_cache_hits_total")
            .increment(report.prefix_cache.hit_tokens as u64);
        for itl in &report.inter_token_latencies {
            histogram!(ITL).record(itl.as_secs_f64());
        }
        for eviction in &report.evictions {
            counter!("glimpse_kv_evicted_tokens_total", "policy" => eviction.policy)
                .increment(eviction.evicted_tokens as u64);
            counter!("glimpse_kv_blocks_freed_by_eviction_total", "policy" => eviction.policy)
                .increment(eviction.released_blocks as u64);
            histogram!(EVICTION_TIME).record(eviction.time.as_secs_f64());
        }
        for done in &report.completed {
            let t = &done.timings;
            counter!("glimpse_request_success_total", "finished_reason" => done.reason.label())
                .increment(1);
            histogram!(E2E).record(t.total.as_secs_f64());
            histogram!(QUEUE_TIME).record(t.queue.as_secs_f64());
            histogram!(PROMPT_TOKENS).record(done.usage.prompt_tokens as f64);
            histogram!(GENERATION_TOKENS).record(done.usage.completion_tokens as f64);
            if done.usage.completion_tokens > 0 {
                histogram!(TTFT).record(t.time_to_first_token.as_secs_f64());
                histogram!(PREFILL_TIME).record(t.prefill.as_secs_f64());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_described_once_with_its_unit() {
        let names: std::collections::HashSet<_> = DESCRIPTIONS.iter().map(|d| d.name).collect();
        assert_eq!(
            names.len(),
            DESCRIPTIONS.len(),
            "a metric is described twice"
        );
        for d in DESCRIPTIONS {
            assert!(d.name.starts_with("glimpse_"), "{}", d.name);
            let unit = match d.unit {
                Unit::Seconds => "(seconds)",
                Unit::Bytes => "(bytes)",
                _ => "",
            };
            assert!(d.help.contains(unit), "{}: help must name its unit", d.name);
        }
    }

    #[test]
    fn token_buckets_follow_one_two_five_up_to_the_limit() {
        assert_eq!(
            one_two_five(512),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
        );
    }
}
