//! `generation_config.json`: the model's own stop tokens and default sampling settings, checked
//! at load against the same ranges as a request's ([`SamplingParams::validate`]): a bad default
//! refuses the model at start-up instead of making every request that relies on it fail.

use std::path::Path;

use serde::Deserialize;

use super::raw::OneOrMany;
use crate::error::{EngineError, Result};
use crate::sampling::SamplingParams;

/// Defaults a model ships for generation. Absent file → empty defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    pub bos_token_id: Option<u32>,
    /// Every id that ends generation (HF allows one id or a list).
    pub eos_token_ids: Vec<u32>,
    pub max_length: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
}

#[derive(Deserialize)]
struct RawGenerationConfig {
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    max_length: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// Signed so that a negative value is reported by name, not as a JSON type error.
    top_k: Option<i64>,
}

impl GenerationConfig {
    /// Reads `path` if it exists; a missing file is not an error (many models have none).
    ///
    /// Fails with [`EngineError::Config`] naming the file, the field, its range and the value
    /// when the JSON is malformed or a sampling default is out of range.
    pub fn from_file_if_present(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses and checks the JSON text of a `generation_config.json`; `path` is only used in error
    /// messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawGenerationConfig = serde_json::from_str(text).map_err(|e| {
            EngineError::config(path, format!("malformed generation_config.json: {e}"))
        })?;
        let top_k = raw
            .top_k
            .map(|k| {
                u32::try_from(k).map(|k| k as usize).map_err(|_| {
                    EngineError::config(
                        path,
                        format!("`top_k` must be in [0, {}] (0 disables), got {k}", u32::MAX),
                    )
                })
            })
            .transpose()?;
        let config = Self {
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw
                .eos_token_id
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
            max_length: raw.max_length,
            temperature: raw.temperature,
            top_p: raw.top_p,
            top_k,
        };
        config.sampling_defaults().validate().map_err(|e| match e {
            EngineError::InvalidParameter { field, message } => {
                EngineError::config(path, format!("`{field}` {message}"))
            }
            other => other,
        })?;
        Ok(config)
    }

    /// The sampling settings of a request that sets none: these defaults over vLLM's.
    fn sampling_defaults(&self) -> SamplingParams {
        let fallback = SamplingParams::default();
        SamplingParams {
            temperature: self.temperature.unwrap_or(fallback.temperature),
            top_p: self.top_p.unwrap_or(fallback.top_p),
            top_k: self.top_k.map_or(fallback.top_k, |k| k as u32),
            ..fallback
        }
    }
}
