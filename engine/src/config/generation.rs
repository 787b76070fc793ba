//! `generation_config.json`: the model's own stop tokens and default sampling settings.

use std::path::Path;

use serde::Deserialize;

use super::raw::OneOrMany;
use crate::error::{EngineError, Result};

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
    top_k: Option<usize>,
}

impl GenerationConfig {
    /// Reads `path` if it exists; a missing file is not an error (many models have none).
    pub fn from_file_if_present(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        let raw: RawGenerationConfig = serde_json::from_str(&text).map_err(|e| {
            EngineError::config(path, format!("malformed generation_config.json: {e}"))
        })?;
        Ok(Self {
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw
                .eos_token_id
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
            max_length: raw.max_length,
            temperature: raw.temperature,
            top_p: raw.top_p,
            top_k: raw.top_k,
        })
    }
}
