//! Offline throughput of the engine loop: N requests (random prompts of `--prompt-len` tokens,
//! `--output-len` greedy tokens each, EOS ignored) submitted at once and batched by the loop,
//! against the same requests run one at a time (a subset, `--alone`, since the rate is what
//! counts). Also reports where step time goes: matmuls, attention, other forward work, sampling
//! and scheduler bookkeeping. Prints progress to stderr and writes JSON.
//!
//! `cargo bench -p glimpse-server --bench offline_throughput -- --model DIR [--requests 64]
//!  [--prompt-len 256] [--output-len 128] [--alone 4] [--dtype auto|f32|bf16]
//!  [--quantize none|int8] [--kv-cache-dtype auto|f32|bf16] [--json OUT.json]`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use glimpse_engine::backend::{Device, KvGeometry, create_backend};
use glimpse_engine::config::{DtypeChoice, KvCacheDtypeChoice, Quantization};
use glimpse_engine::model::Model;
use glimpse_engine::sampling::SamplingParams;
use glimpse_engine::tokenizer::Tokenizer;
use glimpse_server::engine_loop::{
    BatchLimits, EngineCore, GenerationRequest, StopConditions, StreamEvent,
};
use tokio::sync::mpsc::unbounded_channel;

/// Offline throughput of the engine loop: requests batched by the loop vs one at a time.
#[derive(Parser)]
struct Args {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// Tokenizer folder.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/stories260K"))]
    tokenizer: PathBuf,
    /// Requests submitted at once.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// Random prompt tokens per request.
    #[arg(long, default_value_t = 256)]
    prompt_len: usize,
    /// Greedy tokens generated per request (EOS ignored).
    #[arg(long, default_value_t = 128)]
    output_len: usize,
    /// Requests also run one at a time.
    #[arg(long, default_value_t = 4)]
    alone: usize,
    /// Dtype of the weight matrices: `auto` (the checkpoint's), `f32` or `bf16`.
    #[arg(long, default_value_t = DtypeChoice::Auto)]
    dtype: DtypeChoice,
    /// Quantization of the weight matrices: `none`, or `int8` (Q8_0).
    #[arg(long, default_value_t = Quantization::None)]
    quantize: Quantization,
    /// Dtype of the KV cache: `auto` (f32), `f32` or `bf16`.
    #[arg(long, default_value_t = KvCacheDtypeChoice::Auto)]
    kv_cache_dtype: KvCacheDtypeChoice,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long = "bench", hide = true)]
    _bench: bool,
}

#[derive(Default)]
struct Totals {
    steps: usize,
    matmul: Duration,
    attention: Duration,
    forward_other: Duration,
    sampling: Duration,
    scheduling: Duration,
}

impl Totals {
    fn json(&self, wall: Duration) -> serde_json::Value {
        let share = |d: Duration| d.as_secs_f64() / wall.as_secs_f64();
        serde_json::json!({
            "steps": self.steps,
            "matmul_seconds": self.matmul.as_secs_f64(), "matmul_share": share(self.matmul),
            "attention_seconds": self.attention.as_secs_f64(), "attention_share": share(self.attention),
            "forward_other_seconds": self.forward_other.as_secs_f64(), "forward_other_share": share(self.forward_other),
            "sampling_seconds": self.sampling.as_secs_f64(), "sampling_share": share(self.sampling),
            "scheduling_seconds": self.scheduling.as_secs_f64(), "scheduling_share": share(self.scheduling),
        })
    }
}

fn prompt(len: usize, vocab: usize, seed: usize) -> Vec<u32> {
    let mut s = (seed as u64).wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (3 + s % (vocab as u64 - 3)) as u32
        })
        .collect()
}

/// Runs `requests` through a fresh engine; returns wall time, output tokens and step totals.
fn run(
    core: &mut EngineCore,
    requests: &[GenerationRequest],
    label: &str,
) -> (Duration, usize, Totals) {
    let mut streams = Vec::new();
    let start = Instant::now();
    for r in requests {
        let (tx, rx) = unbounded_channel();
        let valid = core.validator().validate(r.clone()).expect("valid request");
        core.add_request(valid, tx, Instant::now())
            .expect("request accepted");
        streams.push(rx);
    }
    let mut totals = Totals::default();
    let mut done = 0;
    while core.has_work() {
        let report = core.step();
        totals.steps += 1;
        totals.matmul += report.forward_profile.matmul;
        totals.attention += report.forward_profile.attention;
        totals.forward_other += report.forward_profile.other;
        totals.sampling += report.sampling_time;
        totals.scheduling += report.scheduling_time;
        done += report.completed.len();
        if totals.steps % 16 == 0 {
            eprintln!(
                "[{label}] step {}: {done}/{} requests done, {:.1} s",
                totals.steps,
                requests.len(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    let wall = start.elapsed();
    let mut tokens = 0;
    for rx in &mut streams {
        while let Ok(event) = rx.try_recv() {
            if let StreamEvent::Token(_) = event {
                tokens += 1;
            }
        }
    }
    (wall, tokens, totals)
}

fn main() {
    let args = Args::parse();
    let model = Model::load_quantized(&args.model, args.dtype, args.quantize).expect("model loads");
    let tokenizer = Arc::new(Tokenizer::from_dir(&args.tokenizer).expect("tokenizer loads"));
    let vocab = model.config.vocab_size;
    let kv_dtype = args.kv_cache_dtype.resolve(Device::Cpu);
    let block_size = 16;
    let entries = args.requests * (args.prompt_len + args.output_len);
    let num_blocks = entries.div_ceil(block_size) + args.requests;
    let geometry = KvGeometry::new(&model.config, block_size, num_blocks, kv_dtype).unwrap();
    eprintln!(
        "KV pool: {num_blocks} blocks, {:.2} GB",
        geometry.total_bytes() as f64 / 1e9
    );
    let limits = BatchLimits::default();
    let new_core = || {
        let backend =
            create_backend(Device::Cpu, &model, block_size, num_blocks, kv_dtype, None).unwrap();
        EngineCore::new(
            &model,
            Arc::clone(&tokenizer),
            backend,
            limits,
            Default::default(),
        )
        .unwrap()
    };
    let requests: Vec<GenerationRequest> = (0..args.requests)
        .map(|i| GenerationRequest {
            prompt_ids: prompt(args.prompt_len, vocab, i + 1),
            sampling: SamplingParams::greedy(),
            stop: StopConditions {
                max_tokens: args.output_len,
                ignore_eos: true,
                ..StopConditions::default()
            },
            skip_special_tokens: true,
            kv_cache: None,
        })
        .collect();

    let (wall, tokens, totals) = run(&mut new_core(), &requests, "batched");
    let batched_tps = tokens as f64 / wall.as_secs_f64();
    eprintln!(
        "batched: {tokens} tokens in {:.1} s = {batched_tps:.1} tok/s",
        wall.as_secs_f64()
    );

    let mut alone_wall = Duration::ZERO;
    let mut alone_tokens = 0;
    for (i, r) in requests.iter().take(args.alone).enumerate() {
        let (w, t, _) = run(
            &mut new_core(),
            std::slice::from_ref(r),
            &format!("alone {i}"),
        );
        alone_wall += w;
        alone_tokens += t;
    }
    let alone_tps = alone_tokens as f64 / alone_wall.as_secs_f64();
    eprintln!(
        "one at a time: {alone_tokens} tokens in {:.1} s = {alone_tps:.1} tok/s",
        alone_wall.as_secs_f64()
    );

    let report = serde_json::json!({
        "engine": "glimpse-cpu engine loop",
        "dtype": model.dtype.to_string(),
        "kv_cache_dtype": kv_dtype.to_string(),
        "requests": args.requests, "prompt_len": args.prompt_len, "output_len": args.output_len,
        "batched": { "seconds": wall.as_secs_f64(), "output_tokens": tokens, "output_tokens_per_second": batched_tps,
                     "step_split": totals.json(wall) },
        "one_at_a_time": { "requests": args.alone, "seconds": alone_wall.as_secs_f64(), "output_tokens": alone_tokens,
                           "output_tokens_per_second": alone_tps },
        "batched_over_one_at_a_time": batched_tps / alone_tps,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).expect("write json");
    }
}
