//! Engine forward-pass benchmark: prefill tokens/s and decode tokens/s at several batch sizes on a
//! model folder, plus the machine's memory copy bandwidth so decode can be read as a fraction of the
//! bandwidth limit. Prints progress to stderr and writes JSON.
//!
//! `cargo bench -p glimpse-engine --bench forward -- --model DIR --json OUT.json
//!  [--prefill 512,4096] [--decode-batches 1,16] [--decode-prompt 128] [--decode-tokens 64]
//!  [--repeats 3] [--dtype auto|f32|bf16] [--quantize none|int8]
//!  [--kv-cache-dtype auto|f32|bf16]`

use std::time::Instant;

use clap::Parser;
use glimpse_engine::backend::{Backend, Device, create_backend};
use glimpse_engine::batch::{ForwardBatch, ForwardOutput, LogitsRequest, SequenceInput};
use glimpse_engine::config::{DtypeChoice, KvCacheDtypeChoice, Quantization};
use glimpse_engine::model::Model;

/// Engine forward-pass benchmark: prefill and decode tokens/s, and memory copy bandwidth.
#[derive(Parser)]
struct Args {
    /// Model folder.
    #[arg(long)]
    model: String,
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
    json: Option<String>,
    /// Prompt lengths of the prefill runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "512,4096")]
    prefill: Vec<usize>,
    /// Batch sizes of the decode runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    decode_batches: Vec<usize>,
    /// Prompt tokens of each decoding sequence.
    #[arg(long, default_value_t = 128)]
    decode_prompt: usize,
    /// Tokens decoded per sequence.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long = "bench", hide = true)]
    _bench: bool,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Deterministic pseudo-random token ids.
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// Buffer size for the bandwidth probes: 512 MiB, far beyond any cache.
const PROBE_FLOATS: usize = 128 << 20;

/// Bytes copied per second by `copy_from_slice` of a 512 MiB buffer (buffer size ÷ time; STREAM's
/// Copy figure, which counts read + write, is twice this).
fn copy_bandwidth(repeats: usize) -> f64 {
    let src = vec![1.0f32; PROBE_FLOATS];
    let mut dst = vec![0.0f32; PROBE_FLOATS];
    let times: Vec<f64> = (0..repeats.max(3))
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
            t.elapsed().as_secs_f64()
        })
        .collect();
    (PROBE_FLOATS * 4) as f64 / median(times)
}

/// Bytes read per second summing a 512 MiB buffer on all threads: what decode, which only reads
/// weights, is bounded by.
fn read_bandwidth(repeats: usize) -> f64 {
    use rayon::prelude::*;
    let src = vec![1.0f32; PROBE_FLOATS];
    let times: Vec<f64> = (0..repeats.max(3))
        .map(|_| {
            let t = Instant::now();
            let sum: f32 = src
                .par_chunks(1 << 16)
                .map(|c| {
                    let mut acc = [0.0f32; 16];
                    for v in c.chunks_exact(16) {
                        for l in 0..16 {
                            acc[l] += v[l];
                        }
                    }
                    acc.iter().sum::<f32>()
                })
                .sum();
            std::hint::black_box(sum);
            t.elapsed().as_secs_f64()
        })
        .collect();
    (PROBE_FLOATS * 4) as f64 / median(times)
}

fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size)
}

fn prefill_seconds(backend: &mut dyn Backend, prompt: &[u32], block_size: usize) -> f64 {
    let table: Vec<u32> = (0..blocks_for(prompt.len(), block_size) as u32).collect();
    let batch = ForwardBatch {
        sequences: vec![SequenceInput::whole_prompt(prompt, &table)],
    };
    let mut out = ForwardOutput::default();
    let t = Instant::now();
    backend.forward(&batch, &mut out).unwrap();
    t.elapsed().as_secs_f64()
}

/// Seconds for `steps` decode steps of `batch` sequences after a `prompt_len` prefill each.
fn decode_seconds(
    backend: &mut dyn Backend,
    vocab: usize,
    batch: usize,
    prompt_len: usize,
    steps: usize,
    block_size: usize,
) -> f64 {
    let blocks_each = blocks_for(prompt_len + steps, block_size);
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|b| ((b * blocks_each) as u32..((b + 1) * blocks_each) as u32).collect())
        .collect();
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|b| tokens(prompt_len, vocab, b as u64))
        .collect();
    let mut out = ForwardOutput::default();
    for (prompt, table) in prompts.iter().zip(&tables) {
        let batch = ForwardBatch {
            sequences: vec![SequenceInput::whole_prompt(prompt, table)],
        };
        backend.forward(&batch, &mut out).unwrap();
    }
    let mut next: Vec<[u32; 1]> = (0..batch).map(|b| [b as u32 % vocab as u32]).collect();
    let t = Instant::now();
    for step in 0..steps {
        let sequences = next
            .iter()
            .zip(&tables)
            .map(|(tok, table)| SequenceInput {
                token_ids: tok,
                first_position: prompt_len + step,
                first_cache_entry: prompt_len + step,
                block_table: table,
                logits: LogitsRequest::Last,
                eviction: None,
                compacted: None,
                compact_into: None,
            })
            .collect();
        backend
            .forward(&ForwardBatch { sequences }, &mut out)
            .unwrap();
        for (b, tok) in next.iter_mut().enumerate() {
            let row = out.last_row(b);
            tok[0] = (0..row.len())
                .max_by(|&i, &j| row[i].total_cmp(&row[j]))
                .unwrap() as u32;
        }
    }
    t.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::parse();
    let model = Model::load_quantized(std::path::Path::new(&args.model), args.dtype, args.quantize)
        .expect("model loads");
    let vocab = model.config.vocab_size;
    let block_size = 16;
    let max_prefill = args.prefill.iter().copied().max().unwrap_or(0);
    let max_decode = args.decode_batches.iter().copied().max().unwrap_or(0)
        * blocks_for(args.decode_prompt + args.decode_tokens, block_size)
        * block_size;
    let num_blocks = blocks_for(max_prefill.max(max_decode), block_size);
    let mut backend = create_backend(
        Device::Cpu,
        &model,
        block_size,
        num_blocks,
        args.kv_cache_dtype.resolve(Device::Cpu),
        None,
    )
    .expect("backend");
    let threads = rayon::current_num_threads();
    eprintln!(
        "glimpse forward bench: {} parameters, {threads} threads",
        model.weights.num_parameters()
    );

    let bandwidth = copy_bandwidth(args.repeats);
    let read = read_bandwidth(args.repeats);
    eprintln!(
        "copy bandwidth: {:.2} GB/s copied, read bandwidth {:.2} GB/s",
        bandwidth / 1e9,
        read / 1e9
    );
    let weight_bytes = model.weights.num_bytes(model.dtype) as f64;

    let mut prefill = Vec::new();
    for &n in &args.prefill {
        let prompt = tokens(n, vocab, 7);
        prefill_seconds(backend.as_mut(), &prompt[..n.min(64)], block_size);
        let times: Vec<f64> = (0..args.repeats)
            .map(|r| {
                let s = prefill_seconds(backend.as_mut(), &prompt, block_size);
                eprintln!("prefill {n}: repeat {}/{}: {s:.3} s", r + 1, args.repeats);
                s
            })
            .collect();
        let secs = median(times);
        prefill.push(serde_json::json!({"prompt_tokens": n, "seconds": secs, "tokens_per_second": n as f64 / secs}));
    }
    let mut decode = Vec::new();
    for &b in &args.decode_batches {
        let times: Vec<f64> = (0..args.repeats)
            .map(|r| {
                let s = decode_seconds(
                    backend.as_mut(),
                    vocab,
                    b,
                    args.decode_prompt,
                    args.decode_tokens,
                    block_size,
                );
                eprintln!(
                    "decode batch {b}: repeat {}/{}: {s:.3} s",
                    r + 1,
                    args.repeats
                );
                s
            })
            .collect();
        let secs = median(times);
        let tps = (b * args.decode_tokens) as f64 / secs;
        let steps_per_second = args.decode_tokens as f64 / secs;
        decode.push(serde_json::json!({
            "batch": b, "seconds": secs, "tokens_per_second": tps,
            "weight_bytes_per_second": weight_bytes * steps_per_second,
            "fraction_of_copy_bandwidth": weight_bytes * steps_per_second / bandwidth,
            "fraction_of_read_bandwidth": weight_bytes * steps_per_second / read,
        }));
    }
    let report = serde_json::json!({
        "engine": "glimpse-cpu",
        "dtype": model.dtype.to_string(),
        "kv_cache_dtype": backend.geometry().dtype.to_string(),
        "threads": threads,
        "parameters": model.weights.num_parameters(),
        "weight_bytes": weight_bytes,
        "copy_bandwidth_bytes_per_second": bandwidth,
        "read_bandwidth_bytes_per_second": read,
        "decode_prompt_tokens": args.decode_prompt,
        "decode_new_tokens": args.decode_tokens,
        "prefill": prefill,
        "decode": decode,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).expect("write json");
    }
}
