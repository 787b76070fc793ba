//! The checks only a GPU can run, for the device run of `scripts/gpu-check.sh` (docs/design.md
//! §8): every kernel compiled by NVRTC for the device and loaded; the CUDA backend's logits and
//! greedy tokens against the CPU backend's on the parity fixtures and stories260K, with every
//! eviction policy; a short benchmark on a 1B-shape Llama with random bf16 weights.
//!
//! They live in the engine's tests because everything they compare is the engine's (two backends
//! behind one [`OfflineRunner`], the fixtures, the lookahead module): no server or client takes
//! part, and the device has no Rust toolchain, so one test binary is what travels.
//!
//! Without a CUDA device (CI, any machine without the NVIDIA driver) each test prints why it
//! skipped, straight to the terminal so `cargo test` shows it, and passes; with
//! `GLIMPSE_REQUIRE_GPU=1` (the device run) a missing device fails it instead. Results go to
//! stderr and, as JSON lines, to `$GLIMPSE_GPU_CHECK_OUT/results.jsonl` when that is set.

mod support;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cudarc::nvrtc::Ptx;
use glimpse_engine::backend::Device;
use glimpse_engine::backend::cuda::kernel_cache::{KernelCache, Origin};
use glimpse_engine::backend::cuda::nvrtc::KERNEL_FILES;
use glimpse_engine::backend::cuda::probe::{self, CudaDeviceInfo};
use glimpse_engine::batch::LogitsRequest;
use glimpse_engine::config::{DtypeChoice, KvCacheDtype};
use glimpse_engine::eviction::{EvictionPolicy, PolicyKind, PolicyKnobs};
use glimpse_engine::lookahead::{LookaheadModule, RandomInit};
use glimpse_engine::model::Model;
use glimpse_engine::runner::{Evicted, OfflineRunner, RunnerSequence};
use rayon::prelude::*;
use serde_json::{Value, json};
use support::*;

/// Set to `1` to fail, rather than skip, when there is no CUDA device.
const REQUIRE_GPU_VARIABLE: &str = "GLIMPSE_REQUIRE_GPU";
/// A folder for `results.jsonl`.
const OUT_VARIABLE: &str = "GLIMPSE_GPU_CHECK_OUT";

/// Greedy steps compared after each prompt.
const GREEDY_STEPS: usize = 32;
const BLOCK_SIZE: usize = 16;

/// Allowed |CUDA − CPU| logit difference, as a fraction of the largest |logit| the CPU computed
/// for the prompt, per decoder layer.
///
/// Both backends hold the same bf16 weights and a bf16 KV cache; what differs is that cuBLAS
/// takes its activations in bf16 (each GEMM input rounded, a relative error up to 2⁻⁹), and the
/// order of sums, FMA contraction and `expf`. The fixtures measured the effect of bf16
/// activations: transformers run wholly in bf16 (every GEMM input, and also the residual stream,
/// norms and attention probabilities, a superset of the device's roundings) differs from its
/// float32 run on the same bf16 matrices by at most 4.24 % of the largest |logit| on those
/// two-layer models (`measured_max_abs_diff` in each `reference_bf16.json`: 0.313 of 7.37 on
/// llama_gqa, the worst ratio). Their margin rule (1.5×) gives 6.4 % for two layers; rounding
/// errors add up layer after layer to first order, so 3.2 % per layer (stories260K, five layers:
/// 16 %). A wrong kernel (a missed entry, a wrong block, a race) is not what this resolves —
/// the shim tests check each kernel bit for bit — but a broken one shows at many times the scale,
/// and the greedy ids, compared exactly over [`GREEDY_STEPS`], are the sharper check.
const RELATIVE_TOLERANCE_PER_LAYER: f32 = 0.032;

// ---------------------------------------------------------------------------------------------
// The device, or a skip
// ---------------------------------------------------------------------------------------------

/// The CUDA device the checks run on (ordinal 0: `CUDA_VISIBLE_DEVICES` chooses which GPU), or
/// `None` after printing why there is none.
///
/// Panics under `GLIMPSE_REQUIRE_GPU=1` when there is none, so a device run cannot pass by
/// skipping.
fn cuda_device(test: &str) -> Option<CudaDeviceInfo> {
    match probe::probe(0) {
        Ok(info) => {
            eprintln!("{test}: on cuda:0, {info}");
            Some(info)
        }
        Err(error) if std::env::var_os(REQUIRE_GPU_VARIABLE).is_some_and(|v| v == "1") => {
            panic!("{test}: {REQUIRE_GPU_VARIABLE}=1, but there is no usable CUDA device: {error}")
        }
        Err(error) => {
            // Written to the process's stderr, not through `eprintln!`, which the test harness
            // captures and shows only for failing tests: a skip must be seen.
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {test}: no CUDA device ({error}); scripts/gpu-check.sh runs it on one \
                 with {REQUIRE_GPU_VARIABLE}=1"
            );
            None
        }
    }
}

/// Prints `record` and appends it to `$GLIMPSE_GPU_CHECK_OUT/results.jsonl` when that is set.
fn report(test: &str, mut record: Value) {
    record["test"] = json!(test);
    let line = record.to_string();
    eprintln!("{line}");
    if let Some(dir) = std::env::var_os(OUT_VARIABLE).filter(|v| !v.is_empty()) {
        let path = Path::new(&dir).join("results.jsonl");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        writeln!(file, "{line}").unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// NVRTC and module loading
// ---------------------------------------------------------------------------------------------

/// The `GLIMPSE_KERNEL` entry points a kernel file defines, by name.
fn entry_points(source: &str) -> Vec<&str> {
    source
        .lines()
        .filter_map(|line| line.strip_prefix("GLIMPSE_KERNEL void "))
        .map(|rest| rest.split('(').next().unwrap().trim())
        .collect()
}

#[test]
fn every_kernel_compiles_with_nvrtc_for_the_device_and_loads_with_its_entry_points() {
    const TEST: &str = "nvrtc";
    let Some(info) = cuda_device(TEST) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::new(dir.path());
    let arch = info.arch();
    let started = Instant::now();
    let kernels = cache
        .compile_all(&arch)
        .expect("NVRTC compiles every kernel");
    let compile_secs = started.elapsed().as_secs_f64();
    assert_eq!(kernels.len(), KERNEL_FILES.len());
    let mut loaded = Vec::new();
    for (kernel, source) in kernels.iter().zip(KERNEL_FILES) {
        assert_eq!(kernel.name, source.name);
        assert_eq!(
            kernel.origin,
            Origin::Compiled,
            "{}: a fresh cache",
            kernel.name
        );
        let module = info
            .context
            .load_module(Ptx::from_binary(kernel.cubin.clone()))
            .unwrap_or_else(|e| panic!("{}: cuModuleLoadData: {e}", kernel.name));
        let names = entry_points(source.source);
        assert!(!names.is_empty(), "{}: no GLIMPSE_KERNEL", source.name);
        for name in names {
            module
                .load_function(name)
                .unwrap_or_else(|e| panic!("{}: {name}: {e}", source.name));
            loaded.push(name);
        }
    }
    let cached = cache.compile_all(&arch).unwrap();
    assert!(
        cached.iter().all(|k| k.origin == Origin::Cached),
        "a second start is served by the cache"
    );
    report(
        TEST,
        json!({
            "device": info.to_string(),
            "arch": arch,
            "kernel_files": kernels.len(),
            "entry_points": loaded,
            "compile_secs": compile_secs,
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// End to end: the CUDA backend against the CPU backend
// ---------------------------------------------------------------------------------------------

/// The models compared end to end: every parity fixture and the bundled stories260K.
fn models() -> Vec<(&'static str, Model)> {
    let fixtures = FIXTURES.iter().map(|&name| (name, fixture_dir(name)));
    fixtures
        .chain([("stories260K", repo_root().join("models/stories260K"))])
        .map(|(name, dir)| (name, Model::load_as(&dir, DtypeChoice::Bf16).unwrap()))
        .collect()
}

/// The two runners compared: the same model, pool and lookahead module, bf16 KV cache, blocks
/// handed out in a scrambled order on both.
struct Pair {
    cpu: OfflineRunner,
    cuda: OfflineRunner,
    tolerance_per_logit: f32,
}

impl Pair {
    fn new(model: &Model, max_entries: usize, lookahead: Option<Arc<LookaheadModule>>) -> Self {
        let runner = |device| {
            OfflineRunner::on(
                device,
                model,
                BLOCK_SIZE,
                max_entries,
                KvCacheDtype::Bf16,
                lookahead.clone(),
            )
            .unwrap_or_else(|e| panic!("{device} backend: {e}"))
            .with_scrambled_blocks()
        };
        Self {
            cpu: runner(Device::Cpu),
            cuda: runner(Device::Cuda(0)),
            tolerance_per_logit: RELATIVE_TOLERANCE_PER_LAYER * model.config.num_layers as f32,
        }
    }
}

/// What one prompt's comparison found: the largest difference and the tolerance it was held to.
#[derive(Debug, Default)]
struct Comparison {
    max_abs_diff: f32,
    max_abs_logit: f32,
    greedy_ids: Vec<u32>,
}

impl Comparison {
    fn add_rows(&mut self, cpu: &[f32], cuda: &[f32], label: &str) {
        assert!(
            cuda.iter().all(|x| x.is_finite()),
            "{label}: a non-finite logit"
        );
        self.max_abs_diff = self.max_abs_diff.max(max_abs_diff(cpu, cuda));
        self.max_abs_logit = cpu.iter().fold(self.max_abs_logit, |m, x| m.max(x.abs()));
    }

    /// Panics when the difference exceeds the tolerance; returns the record to report.
    fn check(&self, pair: &Pair, label: &str) -> Value {
        let tolerance = pair.tolerance_per_logit * self.max_abs_logit;
        assert!(
            self.max_abs_diff <= tolerance,
            "{label}: max |Δ logit| {} > {tolerance} ({} × max |logit| {})",
            self.max_abs_diff,
            pair.tolerance_per_logit,
            self.max_abs_logit
        );
        json!({
            "case": label,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": tolerance,
            "greedy_steps_equal": self.greedy_ids.len(),
        })
    }
}

/// Greedy decoding from each backend's own last row, [`GREEDY_STEPS`] steps: the ids must be
/// equal at every step, and every row within the tolerance.
fn decode_greedy(
    pair: &mut Pair,
    cpu_seq: &mut RunnerSequence,
    cuda_seq: &mut RunnerSequence,
    found: &mut Comparison,
    label: &str,
) {
    for step in 0..GREEDY_STEPS {
        let cpu_row = pair.cpu.output().last_row(0);
        let cuda_row = pair.cuda.output().last_row(0);
        found.add_rows(cpu_row, cuda_row, label);
        let (cpu_id, cuda_id) = (argmax(cpu_row), argmax(cuda_row));
        assert_eq!(
            cuda_id, cpu_id,
            "{label}: greedy step {step} differs (CPU logits {} for {cpu_id}, {} for {cuda_id})",
            cpu_row[cpu_id as usize], cpu_row[cuda_id as usize]
        );
        found.greedy_ids.push(cpu_id);
        let fed = [cpu_id];
        pair.cpu
            .step(&mut [(cpu_seq, &fed[..], LogitsRequest::Last)])
            .unwrap();
        pair.cuda
            .step(&mut [(cuda_seq, &fed[..], LogitsRequest::Last)])
            .unwrap();
    }
}

#[test]
fn prompt_logits_and_greedy_ids_match_the_cpu_backend_on_every_fixture_and_stories260k() {
    const TEST: &str = "logits";
    if cuda_device(TEST).is_none() {
        return;
    }
    for (name, model) in models() {
        let prompts: Vec<Vec<u32>> = if name == "stories260K" {
            vec![pseudo_random_prompt(model.config.vocab_size, 64, 3)]
        } else {
            let references = load_references(&fixture_dir(name));
            references.into_iter().map(|r| r.prompt).collect()
        };
        let longest = prompts.iter().map(Vec::len).max().unwrap();
        let mut pair = Pair::new(&model, longest + GREEDY_STEPS + BLOCK_SIZE, None);
        for (i, prompt) in prompts.iter().enumerate() {
            let label = format!("{name} prompt {i} ({} tokens)", prompt.len());
            let (mut cpu_seq, mut cuda_seq) =
                (RunnerSequence::default(), RunnerSequence::default());
            pair.cpu
                .step(&mut [(&mut cpu_seq, &prompt[..], LogitsRequest::All)])
                .unwrap();
            pair.cuda
                .step(&mut [(&mut cuda_seq, &prompt[..], LogitsRequest::All)])
                .unwrap_or_else(|e| panic!("{label}: CUDA prefill: {e}"));
            let mut found = Comparison::default();
            for pos in 0..prompt.len() {
                let (cpu, cuda) = (
                    pair.cpu.output().row(0, pos),
                    pair.cuda.output().row(0, pos),
                );
                found.add_rows(cpu, cuda, &format!("{label} position {pos}"));
            }
            decode_greedy(&mut pair, &mut cpu_seq, &mut cuda_seq, &mut found, &label);
            report(TEST, found.check(&pair, &label));
            pair.cpu.release(&mut cpu_seq);
            pair.cuda.release(&mut cuda_seq);
        }
    }
}

/// Prompt tokens of the eviction comparisons, and the budget: over the defaults' 32-entry scoring
/// window (`Policy::snapkv`), with room for PyramidKV's deeper layers to keep fewer.
const EVICTION_PROMPT_LEN: usize = 160;
const EVICTION_BUDGET: usize = 64;
/// Least fraction of kept prompt entries the two backends must agree on, per layer and KV head:
/// scores within bf16 noise of the budget's last kept score may trade places (the selection itself
/// is checked bit for bit on the CPU by the shim's top-k test), while a broken scoring or top-k
/// kernel keeps a different set altogether.
const MIN_SELECTION_AGREEMENT: f64 = 0.9;

#[test]
fn every_eviction_policy_keeps_and_decodes_as_on_the_cpu_backend() {
    const TEST: &str = "eviction";
    if cuda_device(TEST).is_none() {
        return;
    }
    for (name, model) in models() {
        let module = Arc::new(LookaheadModule::random(
            &model.config,
            model.identity().unwrap(),
            RandomInit::default(),
        ));
        let max_entries = EVICTION_PROMPT_LEN + GREEDY_STEPS + BLOCK_SIZE;
        let prompt = pseudo_random_prompt(model.config.vocab_size, EVICTION_PROMPT_LEN, 5);
        for kind in PolicyKind::ALL {
            let policy = EvictionPolicy {
                policy: kind.with_knobs(PolicyKnobs::default()),
                budget: EVICTION_BUDGET,
            };
            policy.validate().expect("test policy is valid");
            let label = format!("{name} {kind}");
            let mut pair = Pair::new(&model, max_entries, Some(Arc::clone(&module)));
            let (mut cpu_seq, mut cuda_seq) =
                (RunnerSequence::default(), RunnerSequence::default());
            let cpu = pair
                .cpu
                .prefill_evicting(&mut cpu_seq, &prompt, LogitsRequest::Last, policy)
                .unwrap();
            let cuda = pair
                .cuda
                .prefill_evicting(&mut cuda_seq, &prompt, LogitsRequest::Last, policy)
                .unwrap_or_else(|e| panic!("{label}: CUDA prefill: {e}"));
            let agreement = selection_agreement(cpu.as_ref(), cuda.as_ref(), &label);
            let mut found = Comparison::default();
            decode_greedy(&mut pair, &mut cpu_seq, &mut cuda_seq, &mut found, &label);
            let mut record = found.check(&pair, &label);
            record["evicted"] = json!(cpu.is_some());
            record["selection_agreement"] = json!(agreement);
            report(TEST, record);
        }
    }
}

/// The least fraction of kept entries the two runs share in any (layer, KV head); 1 without an
/// eviction. Panics when one evicted and the other did not, when the per-layer budgets differ, or
/// below [`MIN_SELECTION_AGREEMENT`].
fn selection_agreement(cpu: Option<&Evicted>, cuda: Option<&Evicted>, label: &str) -> f64 {
    let (cpu, cuda) = match (cpu, cuda) {
        (None, None) => return 1.0,
        (Some(cpu), Some(cuda)) => (&cpu.report, &cuda.report),
        _ => panic!("{label}: only one backend evicted"),
    };
    assert_eq!(
        cuda.layer_kept, cpu.layer_kept,
        "{label}: per-layer budgets"
    );
    let mut least: f64 = 1.0;
    for (layer, (c, g)) in cpu.selections.iter().zip(&cuda.selections).enumerate() {
        for (head, (kept_cpu, kept_cuda)) in c.kept.iter().zip(&g.kept).enumerate() {
            let shared = kept_cpu.iter().filter(|p| kept_cuda.contains(p)).count();
            let agreement = shared as f64 / kept_cpu.len().max(1) as f64;
            assert!(
                agreement >= MIN_SELECTION_AGREEMENT,
                "{label}: layer {layer} KV head {head} shares {shared} of {} kept entries",
                kept_cpu.len()
            );
            least = least.min(agreement);
        }
    }
    least
}

// ---------------------------------------------------------------------------------------------
// Benchmark
// ---------------------------------------------------------------------------------------------

/// The 1B-shape Llama of the benchmark (Llama 3.2 1B's shape: 1.24 B parameters, 2.5 GB in
/// bf16), with random weights written to a temporary folder: its speed is the shape's, and no
/// checkpoint needs to travel to the device.
const BENCH_CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "hidden_size": 2048,
  "intermediate_size": 8192,
  "num_hidden_layers": 16,
  "num_attention_heads": 32,
  "num_key_value_heads": 8,
  "head_dim": 64,
  "vocab_size": 128256,
  "max_position_embeddings": 16384,
  "hidden_act": "silu",
  "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "torch_dtype": "bfloat16"
}"#;

/// Ascending: the last, the longest, is also the LookaheadKV run's.
const PREFILL_LENS: [usize; 2] = [2048, 8192];
const DECODE_BATCHES: [usize; 2] = [1, 64];
const DECODE_PROMPT_LEN: usize = 128;
const DECODE_STEPS: usize = 64;
/// The LookaheadKV budget of the TTFT-overhead run at the longest prefill.
const LOOKAHEAD_BUDGET: usize = 2048;

/// Writes [`BENCH_CONFIG`] and its tensors (uniform in ±0.03, norms 1) as one bf16 safetensors
/// file into `dir`.
fn write_bench_model(dir: &Path) {
    std::fs::write(dir.join("config.json"), BENCH_CONFIG).unwrap();
    let config: Value = serde_json::from_str(BENCH_CONFIG).unwrap();
    let get = |key: &str| config[key].as_u64().unwrap() as usize;
    let (hidden, inter, head_dim) = (
        get("hidden_size"),
        get("intermediate_size"),
        get("head_dim"),
    );
    let (q, kv) = (
        get("num_attention_heads") * head_dim,
        get("num_key_value_heads") * head_dim,
    );
    let mut shapes = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![get("vocab_size"), hidden],
        ),
        ("model.norm.weight".to_string(), vec![hidden]),
    ];
    for layer in 0..get("num_hidden_layers") {
        let p = format!("model.layers.{layer}");
        shapes.extend([
            (format!("{p}.input_layernorm.weight"), vec![hidden]),
            (format!("{p}.post_attention_layernorm.weight"), vec![hidden]),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, hidden]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, hidden]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, hidden]),
            (format!("{p}.self_attn.o_proj.weight"), vec![hidden, q]),
            (format!("{p}.mlp.gate_proj.weight"), vec![inter, hidden]),
            (format!("{p}.mlp.up_proj.weight"), vec![inter, hidden]),
            (format!("{p}.mlp.down_proj.weight"), vec![hidden, inter]),
        ]);
    }
    let data: Vec<Vec<u8>> = shapes
        .par_iter()
        .enumerate()
        .map(|(seed, (name, shape))| {
            let len: usize = shape.iter().product();
            if name.ends_with("norm.weight") {
                return half::bf16::ONE.to_le_bytes().repeat(len);
            }
            let mut state = (seed as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut bytes = Vec::with_capacity(2 * len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
                bytes.extend(half::bf16::from_f32(0.06 * unit - 0.03).to_le_bytes());
            }
            bytes
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = shapes
        .iter()
        .zip(&data)
        .map(|((name, shape), bytes)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::BF16,
                shape.clone(),
                bytes,
            )
            .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Seconds `run` takes, the median of three after one untimed warm-up.
fn median_secs(mut run: impl FnMut()) -> f64 {
    run();
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[1]
}

/// Seconds to prefill `prompt` under `policy` as one chunk (to the first token's logits), the
/// median of three runs after a warm-up; each run's sequence is released after it.
fn prefill(runner: &mut OfflineRunner, prompt: &[u32], policy: EvictionPolicy) -> f64 {
    median_secs(|| {
        let mut seq = RunnerSequence::default();
        runner
            .prefill_evicting(&mut seq, prompt, LogitsRequest::Last, policy)
            .unwrap();
        runner.release(&mut seq);
    })
}

#[test]
fn benchmark_decode_at_batch_1_and_64_and_prefill_at_2k_and_8k_on_a_1b_shape_llama() {
    const TEST: &str = "benchmark";
    let Some(info) = cuda_device(TEST) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_bench_model(dir.path());
    let model = Model::load(dir.path()).unwrap();
    let weight_bytes = model.weights.num_bytes(model.dtype);
    let module = Arc::new(LookaheadModule::random(
        &model.config,
        model.identity().unwrap(),
        RandomInit::default(),
    ));
    let max_prefill = PREFILL_LENS[PREFILL_LENS.len() - 1];
    // Every decoding sequence holds its prompt, the warm-up step and the timed steps, in whole
    // blocks.
    let decode_blocks = (DECODE_PROMPT_LEN + 1 + DECODE_STEPS).div_ceil(BLOCK_SIZE);
    let decode_entries = DECODE_BATCHES.iter().max().unwrap() * decode_blocks * BLOCK_SIZE;
    let mut runner = OfflineRunner::on(
        Device::Cuda(0),
        &model,
        BLOCK_SIZE,
        decode_entries.max(max_prefill) + BLOCK_SIZE,
        KvCacheDtype::Bf16,
        Some(module),
    )
    .expect("the CUDA backend builds");
    let device = info.to_string();

    let mut prefill_secs = 0.0;
    for len in PREFILL_LENS {
        let prompt = pseudo_random_prompt(model.config.vocab_size, len, 11);
        let policy = EvictionPolicy::default();
        prefill_secs = prefill(&mut runner, &prompt, policy);
        report(
            TEST,
            json!({"device": device, "run": "prefill", "prompt_tokens": len, "secs": prefill_secs,
                   "tokens_per_sec": len as f64 / prefill_secs}),
        );
    }
    // The last prefill was the longest: LookaheadKV's time to first token against it.
    let prompt = pseudo_random_prompt(model.config.vocab_size, max_prefill, 11);
    let lookahead = EvictionPolicy {
        policy: PolicyKind::Lookahead.with_knobs(PolicyKnobs::default()),
        budget: LOOKAHEAD_BUDGET,
    };
    let lookahead_secs = prefill(&mut runner, &prompt, lookahead);
    report(
        TEST,
        json!({"device": device, "run": "lookahead_ttft", "prompt_tokens": max_prefill,
               "budget": LOOKAHEAD_BUDGET, "full_secs": prefill_secs,
               "lookahead_secs": lookahead_secs,
               "overhead_fraction": lookahead_secs / prefill_secs - 1.0}),
    );

    for batch in DECODE_BATCHES {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|i| {
                pseudo_random_prompt(model.config.vocab_size, DECODE_PROMPT_LEN, 100 + i as u64)
            })
            .collect();
        let mut seqs: Vec<RunnerSequence> = (0..batch).map(|_| RunnerSequence::default()).collect();
        let mut work: Vec<_> = seqs
            .iter_mut()
            .zip(&prompts)
            .map(|(seq, prompt)| (seq, &prompt[..], LogitsRequest::Last))
            .collect();
        runner.step(&mut work).unwrap();
        let token = [1u32];
        let mut step = || {
            let mut work: Vec<_> = seqs
                .iter_mut()
                .map(|seq| (seq, &token[..], LogitsRequest::Last))
                .collect();
            runner.step(&mut work).unwrap();
        };
        step();
        let started = Instant::now();
        for _ in 0..DECODE_STEPS {
            step();
        }
        let secs = started.elapsed().as_secs_f64();
        let steps_per_sec = DECODE_STEPS as f64 / secs;
        report(
            TEST,
            json!({"device": device, "run": "decode", "batch": batch,
                   "prompt_tokens": DECODE_PROMPT_LEN, "steps": DECODE_STEPS,
                   "tokens_per_sec": (batch * DECODE_STEPS) as f64 / secs,
                   "weight_bytes": weight_bytes,
                   "weight_bytes_per_sec": weight_bytes as f64 * steps_per_sec}),
        );
        for seq in &mut seqs {
            runner.release(seq);
        }
    }
}
