//! A model folder loaded into host memory: resolved configuration, generation defaults and weights.
//! Backends take a [`Model`] and place its weights on their device.

mod identity;
mod rope;
mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use identity::BaseModelIdentity;
pub use rope::RopeTables;
pub use weights::{LayerWeights, Linear, ModelWeights};

use crate::config::{GenerationConfig, ModelConfig};
use crate::error::Result;
use crate::loader::WeightFiles;

/// A Hugging Face model folder, loaded.
pub struct Model {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub generation: GenerationConfig,
    /// Shared so a backend can hold the weights without copying them.
    pub weights: Arc<ModelWeights>,
}

impl Model {
    /// Loads `config.json`, `generation_config.json` (optional) and the safetensors weights of `dir`.
    ///
    /// Fails with an error naming the file and the field or tensor when anything is missing,
    /// misshapen, of an unsupported dtype or malformed.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let generation =
            GenerationConfig::from_file_if_present(&dir.join("generation_config.json"))?;
        let files = WeightFiles::open(dir)?;
        let weights = Arc::new(ModelWeights::load(&config, &files)?);
        tracing::info!(
            dir = %dir.display(),
            architecture = ?config.architecture,
            layers = config.num_layers,
            hidden = config.hidden_size,
            parameters = weights.num_parameters(),
            "model loaded"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            generation,
            weights,
        })
    }

    /// Token ids that end generation: the model config's and the generation config's, merged.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut ids = self.generation.eos_token_ids.clone();
        ids.extend(&self.config.eos_token_ids);
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
