//! Model configuration: a serde mirror of Hugging Face `config.json` ([`RawConfig`]) resolved once
//! into a plain [`ModelConfig`] the rest of the engine reads. Every architecture quirk (Qwen2's q/k/v
//! bias, Qwen3's q/k norm and explicit `head_dim`, Llama 3 RoPE scaling, Mistral's sliding window) is
//! decided here, so the forward pass only sees flags. Unsupported configurations fail at load, never
//! in the middle of a forward pass.

mod dtype;
mod generation;
mod raw;

use std::path::Path;

pub use dtype::{DtypeChoice, KvCacheDtype, KvCacheDtypeChoice, Quantization, WeightsDtype};
pub use generation::GenerationConfig;
use raw::{RawConfig, RawRope};

use crate::error::{EngineError, Result};

/// The most positions a model may declare (`max_position_embeddings`): 2^24, above the longest
/// context any released model supports (10M tokens). RoPE tables and KV sizing are derived from
/// this number before any request arrives, so an absurd value must be refused here rather than
/// fail as a multi-terabyte allocation.
pub const MAX_POSITION_EMBEDDINGS: usize = 1 << 24;

/// Decoder families Glimpse runs. They share one forward pass; the differences are flags on
/// [`ModelConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Architecture {
    const SUPPORTED: &'static str =
        "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

    fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" | "llama" => Some(Self::Llama),
            "MistralForCausalLM" | "mistral" => Some(Self::Mistral),
            "Qwen2ForCausalLM" | "qwen2" => Some(Self::Qwen2),
            "Qwen3ForCausalLM" | "qwen3" => Some(Self::Qwen3),
            _ => None,
        }
    }
}

/// How rotary frequencies are stretched for long contexts (HF `rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.1's piecewise scaling of low and medium frequencies.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
}

/// Rotary position embedding parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    pub theta: f32,
    pub scaling: RopeScaling,
}

/// The resolved model configuration. Sizes are in elements, not bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Longest sequence (prompt + output) the model serves exactly: `max_position_embeddings`,
    /// capped by a sliding window when the model has one (Glimpse attends the full context, which
    /// equals windowed attention only while the context fits in the window).
    pub max_model_len: usize,
    pub rms_norm_eps: f32,
    pub rope: RopeConfig,
    /// Bias on q/k/v projections (Qwen2 always; Llama/Mistral with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Bias on gate/up/down projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3).
    pub qk_norm: bool,
    /// The output projection reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Reads and resolves `config.json`. Errors name the file and the offending field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Resolves the JSON text of a `config.json`; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| EngineError::config(path, format!("malformed config.json: {e}")))?;
        raw.resolve(path)
    }

    /// Number of query heads sharing one KV head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Width of the fused q/k/v projection output.
    pub fn qkv_width(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }
}

impl RawConfig {
    fn resolve(self, path: &Path) -> Result<ModelConfig> {
        let architecture = self.architecture(path)?;
        let need = |value: Option<usize>, field: &str| {
            value.ok_or_else(|| EngineError::config(path, format!("missing field `{field}`")))
        };
        let hidden_size = need(self.hidden_size, "hidden_size")?;
        let num_heads = need(self.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = self.num_key_value_heads.unwrap_or(num_heads);
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let config = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_layers: need(self.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: need(self.vocab_size, "vocab_size")?,
            max_model_len: self.max_model_len(path)?,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope: self.rope(path)?,
            qkv_bias: architecture == Architecture::Qwen2 || self.attention_bias.unwrap_or(false),
            o_bias: architecture != Architecture::Qwen2 && self.attention_bias.unwrap_or(false),
            mlp_bias: self.mlp_bias.unwrap_or(false),
            qk_norm: architecture == Architecture::Qwen3,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_ids: self.eos_token_id.map(|e| e.into_vec()).unwrap_or_default(),
        };
        validate(&config, self.hidden_act.as_deref(), path)?;
        Ok(config)
    }

    fn architecture(&self, path: &Path) -> Result<Architecture> {
        let name = self
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| self.model_type.clone())
            .ok_or_else(|| EngineError::config(path, "missing `architectures` and `model_type`"))?;
        Architecture::from_hf_name(&name).ok_or(EngineError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            architecture: name,
            supported: Architecture::SUPPORTED,
        })
    }

    fn max_model_len(&self, path: &Path) -> Result<usize> {
        let max_positions = self
            .max_position_embeddings
            .ok_or_else(|| EngineError::config(path, "missing field `max_position_embeddings`"))?;
        let window = match (self.sliding_window, self.use_sliding_window) {
            (Some(w), Some(true) | None) if w > 0 => Some(w),
            _ => None,
        };
        Ok(window.map_or(max_positions, |w| w.min(max_positions)))
    }

    fn rope(&self, path: &Path) -> Result<RopeConfig> {
        // transformers 5 moved `rope_theta`/`rope_scaling` into `rope_parameters`; accept both.
        let params: Option<&RawRope> = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let theta = params
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0) as f32;
        let Some(p) = params else {
            return Ok(RopeConfig {
                theta,
                scaling: RopeScaling::None,
            });
        };
        let kind = p
            .rope_type
            .as_deref()
            .or(p.kind.as_deref())
            .unwrap_or("default");
        let factor = |field: &str| {
            p.factor.map(|f| f as f32).ok_or_else(|| {
                EngineError::config(path, format!("rope scaling `{kind}` needs `{field}`"))
            })
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: factor("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: factor("factor")?,
                low_freq_factor: p.low_freq_factor.unwrap_or(1.0) as f32,
                high_freq_factor: p.high_freq_factor.unwrap_or(4.0) as f32,
                original_max_position_embeddings: p.original_max_position_embeddings.ok_or_else(
                    || {
                        EngineError::config(
                            path,
                            "rope scaling `llama3` needs `original_max_position_embeddings`",
                        )
                    },
                )?,
            },
            other => {
                return Err(EngineError::config(
                    path,
                    format!(
                        "unsupported rope scaling type `{other}` (supported: default, linear, llama3)"
                    ),
                ));
            }
        };
        Ok(RopeConfig { theta, scaling })
    }
}

fn validate(c: &ModelConfig, hidden_act: Option<&str>, path: &Path) -> Result<()> {
    let fail = |msg: String| Err(EngineError::config(path, msg));
    if let Some(act) = hidden_act
        && act != "silu"
    {
        return fail(format!(
            "unsupported `hidden_act` `{act}` (supported: silu)"
        ));
    }
    for (field, value) in [
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("num_hidden_layers", c.num_layers),
        ("num_attention_heads", c.num_heads),
        ("num_key_value_heads", c.num_kv_heads),
        ("head_dim", c.head_dim),
        ("vocab_size", c.vocab_size),
        ("max_position_embeddings", c.max_model_len),
    ] {
        if value == 0 {
            return fail(format!("`{field}` must be positive, got 0"));
        }
    }
    if c.max_model_len > MAX_POSITION_EMBEDDINGS {
        return fail(format!(
            "`max_position_embeddings` must be at most {MAX_POSITION_EMBEDDINGS}, got {}",
            c.max_model_len
        ));
    }
    if !c.num_heads.is_multiple_of(c.num_kv_heads) {
        return fail(format!(
            "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})",
            c.num_heads, c.num_kv_heads
        ));
    }
    if !c.head_dim.is_multiple_of(2) {
        return fail(format!(
            "`head_dim` must be even for RoPE, got {}",
            c.head_dim
        ));
    }
    // Every later width (`qkv_width`, the projections' shapes, KV entry sizes) multiplies these.
    let qkv_heads = c
        .num_kv_heads
        .checked_mul(2)
        .and_then(|kv| kv.checked_add(c.num_heads));
    if qkv_heads.and_then(|h| h.checked_mul(c.head_dim)).is_none() {
        return fail(format!(
            "`head_dim` {} × (`num_attention_heads` {} + 2 × `num_key_value_heads` {}) overflows",
            c.head_dim, c.num_heads, c.num_kv_heads
        ));
    }
    for (field, value) in [
        ("rms_norm_eps", c.rms_norm_eps),
        ("rope_theta", c.rope.theta),
    ] {
        positive(path, field, value)?;
    }
    validate_rope_scaling(&c.rope.scaling, path)?;
    if let Some(bad) = c
        .eos_token_ids
        .iter()
        .find(|&&id| id as usize >= c.vocab_size)
    {
        return fail(format!(
            "`eos_token_id` {bad} is outside the vocabulary ({})",
            c.vocab_size
        ));
    }
    Ok(())
}

/// `rope_scaling`'s numbers: a zero factor would divide every frequency by zero, and Llama 3's
/// band edges must be ordered (its smoothing divides by their difference).
fn validate_rope_scaling(scaling: &RopeScaling, path: &Path) -> Result<()> {
    match *scaling {
        RopeScaling::None => Ok(()),
        RopeScaling::Linear { factor } => positive(path, "rope_scaling.factor", factor),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            positive(path, "rope_scaling.factor", factor)?;
            positive(path, "rope_scaling.low_freq_factor", low_freq_factor)?;
            positive(path, "rope_scaling.high_freq_factor", high_freq_factor)?;
            if high_freq_factor <= low_freq_factor {
                return Err(EngineError::config(
                    path,
                    format!(
                        "`rope_scaling.high_freq_factor` must be greater than `low_freq_factor` ({low_freq_factor}), got {high_freq_factor}"
                    ),
                ));
            }
            if original_max_position_embeddings == 0 {
                return Err(EngineError::config(
                    path,
                    "`rope_scaling.original_max_position_embeddings` must be positive, got 0",
                ));
            }
            Ok(())
        }
    }
}

/// `Ok` when `value` is finite and above zero (NaN fails), else an error naming `field`.
fn positive(path: &Path, field: &str, value: f32) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(EngineError::config(
            path,
            format!("`{field}` must be a finite number > 0, got {value}"),
        ))
    }
}

#[cfg(test)]
mod tests;
