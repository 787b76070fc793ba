//! Subcommands of the `glimpse` binary and what they share: model location, engine options,
//! logging.

pub mod generate;
pub mod health;
mod kv_memory;
pub mod serve;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use glimpse_engine::EngineError;
use glimpse_engine::backend::{Device, create_backend};
use glimpse_engine::config::{DtypeChoice, KvCacheDtypeChoice, Quantization};
use glimpse_engine::eviction::{EvictionPolicy, PolicyKind, PolicyKnobs};
use glimpse_engine::hub::{MODEL_FLAG_HELP, ModelLocation, find_model};
use glimpse_engine::lookahead::LookaheadModule;
use glimpse_engine::model::Model;
use glimpse_engine::tokenizer::Tokenizer;
use glimpse_scheduler::num_blocks_for_budget;
use glimpse_server::engine_loop::{BatchLimits, EngineCore, EvictionSettings, InputLimits};
use glimpse_server::metrics::DeviceMemory;

/// How logs are written.
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr through `tracing`, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: logs piped to files or read by tests stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The bundled model: `models/stories260K` under the working directory, else beside the sources.
pub fn default_model_dir() -> PathBuf {
    let local = PathBuf::from("models/stories260K");
    if local.join("config.json").exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/stories260K")
}

/// Options that build an engine: model, device, KV pool, batching limits.
#[derive(Args, Clone)]
pub struct EngineArgs {
    #[arg(long, env = "GLIMPSE_MODEL", help = MODEL_FLAG_HELP)]
    pub model: Option<PathBuf>,
    /// Device to run on: `cpu`, or `cuda[:N]` (checked at start-up: driver, device, compute
    /// capability, NVRTC; the CUDA backend has not yet run on a GPU: scripts/gpu-check.sh).
    #[arg(long, default_value = "cpu", env = "GLIMPSE_DEVICE")]
    pub device: Device,
    /// Dtype the weight matrices are held in: `auto` (the checkpoint's: bf16 stays bf16, f32 and
    /// f16 run in f32), `f32` or `bf16` (half the memory; activations stay f32).
    #[arg(long, default_value_t = DtypeChoice::Auto, env = "GLIMPSE_DTYPE")]
    pub dtype: DtypeChoice,
    /// Quantize the weight matrices at load: `none`, or `int8` (every matrix in llama.cpp's Q8_0
    /// blocks — 32 int8 values and an f16 scale — whatever --dtype says; activations are
    /// quantized per row and block of 32 at each GEMM, everything else stays f32).
    #[arg(long, default_value_t = Quantization::None, env = "GLIMPSE_QUANTIZE")]
    pub quantize: Quantization,
    /// Dtype the KV cache stores keys and values in: `auto` (on the CPU f32: K/V are f32
    /// activations in every --dtype; on CUDA bf16, the only pool it stores), `f32`, `bf16`
    /// (twice the entries in the same bytes; attention and eviction scoring widen them to f32) or
    /// `fp8` (CPU only: E4M3 with a per-(layer, KV head) scale calibrated at start-up, four times
    /// the entries of f32).
    #[arg(long, default_value_t = KvCacheDtypeChoice::Auto, env = "GLIMPSE_KV_CACHE_DTYPE")]
    pub kv_cache_dtype: KvCacheDtypeChoice,
    /// KV cache memory in bytes (takes precedence over --kv-memory-fraction).
    #[arg(long, env = "GLIMPSE_KV_MEMORY_BYTES")]
    pub kv_memory_bytes: Option<u64>,
    /// Fraction of the memory available at start-up given to the KV cache: the host's for
    /// `--device cpu`, the device's free memory less the weights for `cuda:N` (capped at what
    /// `max_num_seqs` sequences of the model's full length can use).
    #[arg(long, default_value_t = 0.25, env = "GLIMPSE_KV_MEMORY_FRACTION")]
    pub kv_memory_fraction: f64,
    /// Entries per KV block.
    #[arg(long, default_value_t = 16, env = "GLIMPSE_BLOCK_SIZE")]
    pub block_size: usize,
    /// Token budget of one step (prefill chunks + decodes).
    #[arg(long, default_value_t = 2048, env = "GLIMPSE_MAX_NUM_BATCHED_TOKENS")]
    pub max_num_batched_tokens: usize,
    /// Most sequences running at once.
    #[arg(long, default_value_t = 256, env = "GLIMPSE_MAX_NUM_SEQS")]
    pub max_num_seqs: usize,
    /// Reuse the KV of full prompt blocks computed for earlier requests (automatic prefix
    /// caching, docs/design.md §7); `--enable-prefix-caching false` recomputes every prompt.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "GLIMPSE_ENABLE_PREFIX_CACHING")]
    pub enable_prefix_caching: bool,
    /// KV eviction policy of requests that name none, by name (`full`, `snapkv`, ...; each
    /// policy with the defaults of docs/design.md §4).
    #[arg(long, default_value = "full", value_parser = parse_kv_policy, env = "GLIMPSE_KV_POLICY")]
    pub kv_policy: PolicyKind,
    /// Prompt entries kept per layer and KV head by requests that set no budget.
    #[arg(long, default_value_t = 256, env = "GLIMPSE_KV_BUDGET")]
    pub kv_budget: usize,
    /// Jinja chat template file used instead of the model's (for models without one, such as the
    /// bundled stories260K); chat requests are refused when the model has none and this is unset.
    #[arg(long, env = "GLIMPSE_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,
    /// LookaheadKV module (a safetensors file trained for this model by `train-lookahead`);
    /// without one the lookahead policy is refused.
    #[arg(long, env = "GLIMPSE_LOOKAHEAD_MODULE")]
    pub lookahead_module: Option<PathBuf>,
    #[command(flatten)]
    pub input: InputLimitArgs,
}

/// Bounds on one request's input (the validator's [`InputLimits`]); refusals name the flag.
#[derive(Args, Clone)]
pub struct InputLimitArgs {
    /// Largest text prompt, or chat (roles and contents together), in bytes, checked before
    /// tokenizing [default: 32 bytes per token of the model's maximum length].
    #[arg(long, env = "GLIMPSE_MAX_PROMPT_BYTES")]
    pub max_prompt_bytes: Option<NonZeroUsize>,
    /// Most stop strings per request.
    #[arg(long, default_value_t = 16, env = "GLIMPSE_MAX_STOP_STRINGS")]
    pub max_stop_strings: usize,
    /// Longest stop string in bytes.
    #[arg(long, default_value_t = 256, env = "GLIMPSE_MAX_STOP_STRING_BYTES")]
    pub max_stop_string_bytes: usize,
    /// Most stop token ids per request.
    #[arg(long, default_value_t = 64, env = "GLIMPSE_MAX_STOP_TOKEN_IDS")]
    pub max_stop_token_ids: usize,
}

impl InputLimitArgs {
    /// The limits for a model of `max_model_len` tokens.
    pub fn limits(&self, max_model_len: usize) -> InputLimits {
        let defaults = InputLimits::for_model_len(max_model_len);
        InputLimits {
            max_prompt_bytes: self
                .max_prompt_bytes
                .map_or(defaults.max_prompt_bytes, NonZeroUsize::get),
            max_stop_strings: self.max_stop_strings,
            max_stop_string_bytes: self.max_stop_string_bytes,
            max_stop_token_ids: self.max_stop_token_ids,
        }
    }
}

/// `--kv-policy`: a policy by its name; dashes stand for underscores (`streaming-llm`, as the flag
/// has always been spelt, or `streaming_llm`, as metrics label it).
fn parse_kv_policy(name: &str) -> Result<PolicyKind, EngineError> {
    name.replace('-', "_").parse()
}

/// A loaded model and tokenizer, and an engine core ready to run.
pub struct LoadedEngine {
    /// Where the model was found and the name it goes by (`ORG/NAME` for a hub model).
    pub location: ModelLocation,
    pub model: Model,
    pub tokenizer: Arc<Tokenizer>,
    pub core: EngineCore,
    /// The GPU's memory at start-up, before the weights and pool were allocated; `None` on the CPU.
    pub device_memory: Option<DeviceMemory>,
}

impl EngineArgs {
    /// Loads the model and tokenizer, sizes the KV pool and builds the engine core.
    pub fn load(&self) -> anyhow::Result<LoadedEngine> {
        let location = find_model(&self.model.clone().unwrap_or_else(default_model_dir))?;
        let dir = &location.dir;
        let model = Model::load_quantized(dir, self.dtype, self.quantize)
            .with_context(|| format!("loading model from {}", dir.display()))?;
        let mut tokenizer = Tokenizer::from_dir(dir)
            .with_context(|| format!("loading tokenizer from {}", dir.display()))?;
        if let Some(path) = &self.chat_template {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("reading --chat-template {}", path.display()))?;
            tokenizer
                .set_chat_template(&source)
                .with_context(|| format!("--chat-template {}", path.display()))?;
        }
        let tokenizer = Arc::new(tokenizer);
        let kv_dtype = self.kv_cache_dtype.resolve(self.device);
        let bytes_per_block =
            glimpse_engine::backend::KvGeometry::new(&model.config, self.block_size, 1, kv_dtype)?
                .bytes_per_block();
        let device_memory = kv_memory::probe_device_memory(self.device)?;
        let budget = match self.kv_memory_bytes {
            Some(bytes) => bytes,
            None => {
                // A fraction of free memory, but never more than `max_num_seqs` full-length
                // sequences can fill: a small model should not pin gigabytes.
                let weight_bytes = model.weights.num_bytes(model.dtype) as u64;
                let available =
                    kv_memory::available_bytes(self.device, device_memory, weight_bytes)?;
                let fraction = (available as f64 * self.kv_memory_fraction) as u64;
                fraction.min(self.useful_kv_bytes(model.config.max_model_len, bytes_per_block)?)
            }
        };
        let pool = num_blocks_for_budget(budget, bytes_per_block as u64, self.block_size)?;
        tracing::info!(
            kv_cache_dtype = %kv_dtype,
            kv_bytes = pool.used_bytes,
            num_blocks = pool.num_blocks,
            block_size = self.block_size,
            max_cached_tokens = pool.max_cached_tokens,
            "KV cache pool sized"
        );
        let lookahead = match &self.lookahead_module {
            Some(path) => {
                let module = LookaheadModule::load(path, &model)?;
                tracing::info!(
                    path = %path.display(),
                    num_tokens = module.num_tokens,
                    rank = module.rank,
                    "lookahead module loaded"
                );
                Some(Arc::new(module))
            }
            None => None,
        };
        let lookahead_tokens = lookahead.as_ref().map(|m| m.num_tokens);
        let policy = self.kv_policy.with_knobs(PolicyKnobs {
            num_tokens: lookahead_tokens,
            ..PolicyKnobs::default()
        });
        let eviction = EvictionSettings {
            default_policy: EvictionPolicy {
                policy,
                budget: self.kv_budget,
            },
            default_budget: self.kv_budget,
            lookahead_tokens,
        };
        anyhow::ensure!(
            eviction.supports(self.kv_policy),
            "--kv-policy {} needs --lookahead-module",
            self.kv_policy
        );
        eviction.default_policy.validate()?;
        let backend = create_backend(
            self.device,
            &model,
            self.block_size,
            pool.num_blocks,
            kv_dtype,
            lookahead,
        )?;
        let limits = BatchLimits {
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_num_seqs: self.max_num_seqs,
            enable_prefix_caching: self.enable_prefix_caching,
        };
        let core = EngineCore::new(&model, Arc::clone(&tokenizer), backend, limits, eviction)?
            .with_input_limits(self.input.limits(model.config.max_model_len));
        Ok(LoadedEngine {
            location,
            model,
            tokenizer,
            core,
            device_memory,
        })
    }

    /// The KV bytes `--max-num-seqs` sequences of the model's full length can fill; an error
    /// naming the flags when that does not fit in 64 bits.
    fn useful_kv_bytes(&self, max_model_len: usize, bytes_per_block: usize) -> anyhow::Result<u64> {
        let tokens = self
            .max_num_seqs
            .checked_mul(max_model_len)
            .with_context(|| {
                format!(
                    "--max-num-seqs {} times the model's max_model_len {max_model_len} overflows",
                    self.max_num_seqs
                )
            })?;
        let blocks = tokens.div_ceil(self.block_size);
        blocks
            .checked_mul(bytes_per_block)
            .and_then(|bytes| u64::try_from(bytes).ok())
            .with_context(|| {
                format!(
                    "the KV cache of --max-num-seqs {} sequences of {max_model_len} tokens \
                     ({blocks} blocks of {bytes_per_block} bytes, --block-size {}) overflows; \
                     lower --max-num-seqs or set --kv-memory-bytes",
                    self.max_num_seqs, self.block_size
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    fn engine_args(max_num_seqs: usize) -> EngineArgs {
        let seqs = max_num_seqs.to_string();
        Cli::parse_from(["glimpse", "--max-num-seqs", &seqs]).engine
    }

    #[test]
    fn kv_sizes_past_64_bits_are_errors_naming_the_flags() {
        assert_eq!(engine_args(4).useful_kv_bytes(512, 1000).unwrap(), 128_000);
        let error = engine_args(usize::MAX).useful_kv_bytes(2, 64).unwrap_err();
        assert!(error.to_string().contains("--max-num-seqs"), "{error}");
        let error = engine_args(4)
            .useful_kv_bytes(usize::MAX / 8, 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--max-num-seqs 4") && error.contains("--kv-memory-bytes"),
            "{error}"
        );
    }
}
