//! What KV eviction costs and what it buys, on one model (docs/design.md §4):
//!
//! 1. **TTFT overhead** per policy relative to `full`, in the same run: the prompt's prefill
//!    (chunked as the engine chunks it, `--chunk` tokens per step, the last chunk carrying the
//!    eviction) timed end to end, scoring + selection + compaction included; policies are
//!    interleaved within each repetition, in an order rotated from one repetition to the next,
//!    so machine drift hits them alike; medians reported. The last chunk is also timed alone, and
//!    its extra time over `full`'s in the same repetition, as a fraction of `full`'s TTFT, is
//!    the paired overhead: the earlier chunks do the same work under every policy, so pairing
//!    removes their share of the noise. The same pairing is reported on CPU time (all threads,
//!    `CLOCK_PROCESS_CPUTIME_ID`): on a shared machine, time stolen by other tenants inflates wall
//!    time but not CPU time; and per kind of work inside the last chunk (its
//!    [`ForwardProfile`]: GEMMs, LoRA, attention and the lookahead rows' share of it, scoring,
//!    selection, compaction, the rest), so the overhead is accounted, not only measured. With
//!    `--last-chunk-only` the chunks before the last are prefilled once and only the last chunk
//!    is repeated (its eviction compacting into spare blocks, so the prompt's cache stays whole):
//!    many more pairs in the same time, the "TTFT" columns then being the last chunk's.
//! 2. **KV bytes per request** after eviction: the blocks a request still holds.
//! 3. **Concurrency**: how many `--concurrency-len`-token prompts are held at once in a pool of
//!    the bytes of `--pool-requests` full-cache f32 prompts, with the KV cache in f32 and in bf16
//!    (twice the blocks), full cache vs keeping `--budget` entries — the
//!    real scheduler admitting, chunking and taking blocks back through `apply_eviction` — and
//!    the ideal ratio (full footprint ÷ evicted footprint; a prompt needs its full blocks while
//!    it is prefilled, so the real gain stays below it). Prompt KV only: output growth is left
//!    out, the same for both.
//!
//! The lookahead module is random (seeded): this measures cost, not quality.
//!
//! `cargo bench -p glimpse-server --bench kv_eviction -- --model DIR [--lengths 1024,4096,8128]
//!  [--policies full,streaming_llm,snapkv,pyramidkv,lookahead] [--budget 128] [--repeats 2]
//!  [--chunk 2048] [--pool-requests 4] [--concurrency-len 8128] [--last-chunk-only] [--json OUT]`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use glimpse_bench::stats::percentile;
use glimpse_engine::backend::{Backend, Device, KvGeometry, create_backend};
use glimpse_engine::batch::{
    ForwardBatch, ForwardOutput, ForwardProfile, LogitsRequest, SequenceInput,
};
use glimpse_engine::config::KvCacheDtype;
use glimpse_engine::eviction::{EvictionPolicy, PolicyKind, PolicyKnobs};
use glimpse_engine::lookahead::{LookaheadModule, RandomInit};
use glimpse_engine::model::Model;
use glimpse_scheduler::{LastChunk, Request, Scheduler, SchedulerConfig, SeqId};

const BLOCK_SIZE: usize = 16;

/// What KV eviction costs (TTFT) and buys (KV bytes, concurrency), on one model.
#[derive(Parser)]
struct Args {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// Prompt lengths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,8128")]
    lengths: Vec<usize>,
    /// Policies, comma-separated (default: every policy).
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    /// Prompt entries kept per layer and KV head.
    #[arg(long, default_value_t = 128)]
    budget: usize,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Prefill tokens per step.
    #[arg(long, default_value_t = 2048)]
    chunk: usize,
    /// Full-cache prompts the concurrency pool is sized for.
    #[arg(long, default_value_t = 4)]
    pool_requests: usize,
    /// Prompt length of the concurrency test.
    #[arg(long, default_value_t = 8128)]
    concurrency_len: usize,
    /// Prefill the chunks before the last once and repeat only the last chunk.
    #[arg(long)]
    last_chunk_only: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long = "bench", hide = true)]
    _bench: bool,
}

fn policy(name: &str, budget: usize) -> EvictionPolicy {
    let kind: PolicyKind = name.parse().unwrap_or_else(|e| panic!("{e}"));
    if kind == PolicyKind::Full {
        return EvictionPolicy::default();
    }
    let policy = kind.with_knobs(PolicyKnobs::default());
    EvictionPolicy { policy, budget }
}

/// One timed prefill: wall seconds, eviction seconds, entries kept.
struct Prefill {
    seconds: f64,
    /// The last chunk alone: the only step whose work differs between policies.
    last_chunk_seconds: f64,
    /// CPU time (user + system, all threads) of the last chunk, which time stolen by other
    /// tenants of the machine does not inflate as it does wall time.
    last_chunk_cpu_seconds: Option<f64>,
    /// CPU time of the whole prefill.
    cpu_seconds: Option<f64>,
    /// Where the last chunk's time went.
    last_chunk_profile: ForwardProfile,
    eviction_seconds: f64,
    kept_entries: usize,
}

/// The first token of `prompt`'s last chunk of `chunk` tokens.
fn last_chunk_start(prompt_len: usize, chunk: usize) -> usize {
    (prompt_len - 1) / chunk * chunk
}

/// Prefills `prompt[from..]` in chunks, the last one carrying `eviction` (the entries before
/// `from` already cached), its kept entries compacted into `compact_into` if given.
fn prefill(
    backend: &mut dyn Backend,
    prompt: &[u32],
    from: usize,
    chunk: usize,
    eviction: EvictionPolicy,
    compact_into: Option<&[u32]>,
) -> Prefill {
    let table: Vec<u32> = (0..prompt.len().div_ceil(BLOCK_SIZE) as u32).collect();
    let mut out = ForwardOutput::default();
    let (started, cpu_started) = (Instant::now(), process_cpu_seconds());
    let mut start = from;
    let mut last_chunk_seconds = 0.0;
    let mut last_chunk_cpu_seconds = None;
    while start < prompt.len() {
        let end = (start + chunk).min(prompt.len());
        let last = end == prompt.len();
        let batch = ForwardBatch {
            sequences: vec![SequenceInput {
                token_ids: &prompt[start..end],
                first_position: start,
                first_cache_entry: start,
                block_table: &table,
                logits: if last {
                    LogitsRequest::Last
                } else {
                    LogitsRequest::None
                },
                eviction: last.then_some(eviction),
                compacted: None,
                compact_into: compact_into.filter(|_| last),
            }],
        };
        let (chunk_started, cpu_started) = (Instant::now(), process_cpu_seconds());
        backend.forward(&batch, &mut out).expect("forward");
        last_chunk_seconds = chunk_started.elapsed().as_secs_f64();
        last_chunk_cpu_seconds = cpu_started
            .zip(process_cpu_seconds())
            .map(|(start, end)| end - start);
        start = end;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu_started
        .zip(process_cpu_seconds())
        .map(|(start, end)| end - start);
    let report = out.evictions.first();
    Prefill {
        seconds,
        last_chunk_seconds,
        last_chunk_cpu_seconds,
        cpu_seconds,
        last_chunk_profile: out.profile,
        eviction_seconds: report.map_or(0.0, |r| r.time.as_secs_f64()),
        kept_entries: report.map_or(prompt.len(), |r| r.kept_entries),
    }
}

/// CPU time of this process so far, all threads (`CLOCK_PROCESS_CPUTIME_ID`, nanosecond
/// resolution), or `None` where it cannot be read.
fn process_cpu_seconds() -> Option<f64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    (rc == 0).then_some(now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9)
}

/// The last chunk's time by kind of work, in the order [`phase_deltas`] reports it.
fn phases(p: &ForwardProfile) -> [(&'static str, f64); 8] {
    [
        ("matmul", p.matmul),
        ("lora", p.lora),
        ("attention", p.attention),
        ("lookahead_attention", p.lookahead_attention),
        ("scoring", p.scoring),
        ("selection", p.selection),
        ("compaction", p.compaction),
        ("other", p.other),
    ]
    .map(|(name, time)| (name, time.as_secs_f64()))
}

/// Per kind of work, the last chunk's extra seconds over full's in the same repetition, median
/// over repetitions.
fn phase_deltas(runs: &[Prefill], full: &[Prefill]) -> Vec<(&'static str, f64)> {
    let pairs: Vec<_> = runs
        .iter()
        .zip(full)
        .map(|(run, full)| {
            (
                phases(&run.last_chunk_profile),
                phases(&full.last_chunk_profile),
            )
        })
        .collect();
    (0..8)
        .map(|i| {
            let deltas = pairs.iter().map(|(run, full)| run[i].1 - full[i].1);
            (pairs[0].0[i].0, median(deltas.collect()))
        })
        .collect()
}

/// Paired within each repetition: the last chunk's extra time over full's, as a fraction of
/// full's whole prefill, on the clock `clock` reads as (last chunk, whole prefill); the median
/// over repetitions. The earlier chunks do the same work under every policy, so pairing removes
/// their share of the noise. `None` where the clock could not be read or did not tick (CPU time
/// comes in 10 ms ticks).
fn paired_overhead(
    runs: &[Prefill],
    full: &[Prefill],
    clock: impl Fn(&Prefill) -> Option<(f64, f64)>,
) -> Option<f64> {
    let per_repeat = runs.iter().zip(full).map(|(run, full)| {
        let ((last, _), (full_last, full_total)) = (clock(run)?, clock(full)?);
        (full_total > 0.0).then(|| (last - full_last) / full_total)
    });
    per_repeat.collect::<Option<Vec<f64>>>().map(median)
}

/// The median, as `glimpse bench` computes percentiles.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    percentile(&xs, 50.0).expect("at least one repetition")
}

/// How many requests of `prompt_len` tokens the real scheduler holds at once in `num_blocks`
/// blocks when each keeps `kept_entries` after its prefill (`None`: the full prompt). Requests
/// are admitted and prefilled as the engine would, then held without decoding (their sampled
/// token is never reported, so the scheduler leaves them be) until nothing more can be
/// admitted: the count is of prompt KV only, output growth excluded.
fn resident_capacity(
    num_blocks: usize,
    prompt_len: usize,
    kept_entries: Option<usize>,
    max_num_batched_tokens: usize,
) -> usize {
    let num_requests = num_blocks; // more than can ever fit: a request holds ≥ 1 block
    let mut scheduler = Scheduler::new(SchedulerConfig {
        block_size: BLOCK_SIZE,
        num_blocks,
        max_num_batched_tokens,
        max_num_seqs: num_requests,
        max_model_len: prompt_len + 1,
        ..SchedulerConfig::default()
    })
    .expect("scheduler config");
    for id in 0..num_requests as u64 {
        scheduler
            .add(Request {
                id: SeqId(id),
                num_prompt_tokens: prompt_len,
                max_tokens: 1,
                last_chunk: LastChunk::default(),
                block_hashes: Vec::new(),
            })
            .expect("request fits");
    }
    loop {
        let plan = scheduler.schedule();
        if plan.prefills.is_empty() {
            return scheduler.num_running();
        }
        let Some(kept) = kept_entries else { continue };
        for chunk in plan.prefills.iter().filter(|c| c.is_last_chunk) {
            scheduler
                .apply_eviction(chunk.seq, kept)
                .expect("eviction applies after the last chunk");
        }
    }
}

fn main() {
    let mut args = Args::parse();
    if args.policies.is_empty() {
        args.policies = PolicyKind::ALL.map(|k| k.name().to_owned()).to_vec();
    }
    let model = Model::load(&args.model).expect("model");
    let module = Arc::new(LookaheadModule::random(
        &model.config,
        model.identity().expect("identity"),
        RandomInit::default(),
    ));
    let longest = args.lengths.iter().copied().max().unwrap_or(0);
    let prompt_blocks = longest.div_ceil(BLOCK_SIZE) + 1;
    // With --last-chunk-only, the kept entries go to spare blocks after the prompt's.
    let spare: Vec<u32> = match args.last_chunk_only {
        true => (prompt_blocks..2 * prompt_blocks)
            .map(|b| b as u32)
            .collect(),
        false => Vec::new(),
    };
    let num_blocks = prompt_blocks + spare.len();
    let mut backend = create_backend(
        Device::Cpu,
        &model,
        BLOCK_SIZE,
        num_blocks,
        KvCacheDtype::F32,
        Some(module),
    )
    .expect("backend");
    let bytes_per_block = backend.geometry().bytes_per_block();
    let vocab = model.config.vocab_size as u32;
    let mut results = Vec::new();
    for &len in &args.lengths {
        let prompt: Vec<u32> = (0..len as u32)
            .map(|i| 3 + (i.wrapping_mul(2_654_435_761) >> 7) % (vocab - 3))
            .collect();
        let from = match args.last_chunk_only {
            true => {
                let start = last_chunk_start(len, args.chunk);
                let (chunks, full) = (&prompt[..start], EvictionPolicy::default());
                prefill(backend.as_mut(), chunks, 0, args.chunk, full, None);
                start
            }
            false => 0,
        };
        let compact_into = args.last_chunk_only.then_some(spare.as_slice());
        let mut runs: Vec<Vec<Prefill>> = args.policies.iter().map(|_| Vec::new()).collect();
        for repeat in 0..args.repeats {
            // Each repetition starts one policy later, so no policy always runs in the same
            // slot (on this machine a run's position alone can move it by several percent).
            let count = args.policies.len();
            for p in (0..count).map(|i| (i + repeat) % count) {
                let name = &args.policies[p];
                let run = prefill(
                    backend.as_mut(),
                    &prompt,
                    from,
                    args.chunk,
                    policy(name, args.budget),
                    compact_into,
                );
                eprintln!(
                    "[{len} tokens, repeat {}/{}] {name}: {:.2} s (eviction {:.1} ms)",
                    repeat + 1,
                    args.repeats,
                    run.seconds,
                    run.eviction_seconds * 1e3
                );
                runs[p].push(run);
            }
        }
        let full_runs = runs
            .iter()
            .zip(&args.policies)
            .find(|(_, n)| *n == "full")
            .map(|(r, _)| r);
        let full = full_runs.map(|r| median(r.iter().map(|x| x.seconds).collect()));
        for (name, runs) in args.policies.iter().zip(&runs) {
            let seconds = median(runs.iter().map(|r| r.seconds).collect());
            let last_chunk = median(runs.iter().map(|r| r.last_chunk_seconds).collect());
            let wall = |r: &Prefill| Some((r.last_chunk_seconds, r.seconds));
            let cpu = |r: &Prefill| r.last_chunk_cpu_seconds.zip(r.cpu_seconds);
            let wall_overhead = full_runs.and_then(|full| paired_overhead(runs, full, wall));
            let cpu_overhead = full_runs.and_then(|full| paired_overhead(runs, full, cpu));
            let eviction = median(runs.iter().map(|r| r.eviction_seconds).collect());
            let deltas = full_runs.map(|full| phase_deltas(runs, full));
            let deltas_ms: serde_json::Map<String, serde_json::Value> = deltas
                .iter()
                .flatten()
                .map(|&(phase, seconds)| (phase.to_owned(), (seconds * 1e3).into()))
                .collect();
            let kept = runs[0].kept_entries;
            let kv_bytes = kept.div_ceil(BLOCK_SIZE) * bytes_per_block;
            results.push(serde_json::json!({
                "prompt_len": len, "policy": name, "budget": args.budget,
                "prefill_seconds_median": seconds,
                "prefill_seconds": runs.iter().map(|r| r.seconds).collect::<Vec<_>>(),
                "eviction_seconds_median": eviction,
                "ttft_ratio_vs_full": full.map(|f| seconds / f),
                "last_chunk_seconds_median": last_chunk,
                "last_chunk_seconds": runs.iter().map(|r| r.last_chunk_seconds).collect::<Vec<_>>(),
                "ttft_overhead_paired_last_chunk": wall_overhead,
                "cpu_seconds": runs.iter().map(|r| r.cpu_seconds).collect::<Vec<_>>(),
                "last_chunk_cpu_seconds": runs.iter().map(|r| r.last_chunk_cpu_seconds).collect::<Vec<_>>(),
                "cpu_overhead_paired_last_chunk": cpu_overhead,
                "last_chunk_extra_ms_paired": deltas_ms,
                "last_chunk_profiles_ms": runs.iter().map(|r| {
                    phases(&r.last_chunk_profile)
                        .map(|(phase, seconds)| (phase.to_owned(), serde_json::json!(seconds * 1e3)))
                        .into_iter()
                        .collect::<serde_json::Map<_, _>>()
                }).collect::<Vec<_>>(),
                "kept_entries": kept,
                "kv_bytes_after_prefill": kv_bytes,
            }));
            eprintln!(
                "{len:>6} {name:>14}: TTFT {seconds:.2} s, ×{:.4} of full, last chunk {last_chunk:.2} s \
                 (paired overhead {:+.2}% of TTFT, {:+.2}% of its CPU time), eviction {:.1} ms, \
                 KV {:.1} MiB",
                full.map_or(f64::NAN, |f| seconds / f),
                wall_overhead.map_or(f64::NAN, |o| o * 100.0),
                cpu_overhead.map_or(f64::NAN, |o| o * 100.0),
                eviction * 1e3,
                kv_bytes as f64 / (1 << 20) as f64
            );
            let deltas: Vec<String> = deltas
                .iter()
                .flatten()
                .map(|(phase, seconds)| format!("{phase} {:+.1}", seconds * 1e3))
                .collect();
            eprintln!(
                "{:>22}  last chunk, ms over full (paired median): {}",
                "",
                deltas.join(", ")
            );
        }
    }

    // Concurrency in a fixed pool: its bytes are those of `--pool-requests` full prompts in f32;
    // a bf16 pool of the same bytes has twice the blocks, an fp8 pool four times.
    let per_full = args.concurrency_len.div_ceil(BLOCK_SIZE);
    let pool_bytes = per_full * args.pool_requests * bytes_per_block;
    let concurrency: Vec<_> = [KvCacheDtype::F32, KvCacheDtype::Bf16, KvCacheDtype::Fp8]
        .into_iter()
        .map(|kv_dtype| {
            let block_bytes = KvGeometry::new(&model.config, BLOCK_SIZE, 1, kv_dtype)
                .expect("geometry")
                .bytes_per_block();
            let pool = pool_bytes / block_bytes;
            let full = resident_capacity(pool, args.concurrency_len, None, args.chunk);
            let evicted =
                resident_capacity(pool, args.concurrency_len, Some(args.budget), args.chunk);
            serde_json::json!({
                "kv_cache_dtype": kv_dtype.to_string(),
                "prompt_len": args.concurrency_len,
                "pool_blocks": pool, "pool_bytes": pool_bytes,
                "block_size": BLOCK_SIZE, "budget": args.budget,
                "full_resident": full, "evicted_resident": evicted,
                "gain": evicted as f64 / full as f64,
                "ideal_ratio": per_full as f64 / args.budget.div_ceil(BLOCK_SIZE) as f64,
            })
        })
        .collect();
    let concurrency = serde_json::Value::from(concurrency);
    eprintln!("concurrency: {concurrency}");
    let report = serde_json::json!({
        "model": args.model.display().to_string(),
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "chunk": args.chunk, "block_size": BLOCK_SIZE,
        "ttft": results, "concurrency": concurrency,
    });
    match &args.json {
        Some(path) => std::fs::write(path, serde_json::to_string_pretty(&report).unwrap())
            .expect("write json"),
        None => println!("{}", serde_json::to_string_pretty(&report).unwrap()),
    }
}
