//! A model folder, opened: resolved configuration, generation defaults and the checkpoint's tensors
//! in their file dtype, memory-mapped ([`ModelWeights`]). Nothing here is laid out for a device
//! (this module imports no backend); each backend converts a [`Model`]'s tensors into its own
//! weights type when it is built.

mod identity;
mod rope;
mod weights;

use std::path::{Path, PathBuf};

pub use identity::BaseModelIdentity;
pub use rope::RopeTables;
pub use weights::{LayerWeights, LinearWeights, ModelWeights};

use crate::config::{DtypeChoice, GenerationConfig, ModelConfig, Quantization, WeightsDtype};
use crate::error::Result;
use crate::loader::WeightFiles;

/// A Hugging Face model folder, loaded.
pub struct Model {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub generation: GenerationConfig,
    pub weights: ModelWeights,
    /// The dtype a backend holds the matrices in (`--dtype`, resolved against the checkpoint's;
    /// Q8_0 under `--quantize int8`).
    pub dtype: WeightsDtype,
}

impl Model {
    /// Loads `config.json`, `generation_config.json` (optional) and the safetensors weights of
    /// `dir`, to run in the checkpoint's own dtype ([`DtypeChoice::Auto`]).
    ///
    /// Fails with an error naming the file and the field or tensor when anything is missing,
    /// misshapen, of an unsupported dtype or malformed.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_as(dir, DtypeChoice::Auto)
    }

    /// [`Model::load`], to run with its matrices in `dtype`.
    pub fn load_as(dir: &Path, dtype: DtypeChoice) -> Result<Self> {
        Self::load_quantized(dir, dtype, Quantization::None)
    }

    /// [`Model::load_as`], with the matrices quantized as `quantize` asks (which, when it
    /// quantizes, takes precedence over `dtype`).
    pub fn load_quantized(dir: &Path, dtype: DtypeChoice, quantize: Quantization) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let generation =
            GenerationConfig::from_file_if_present(&dir.join("generation_config.json"))?;
        let files = WeightFiles::open(dir)?;
        let weights = ModelWeights::load(&config, &files)?;
        // The checkpoint's dtype is its embedding table's: checkpoints store every matrix alike.
        let checkpoint_dtype = weights.embed_tokens.dtype();
        let dtype = quantize.resolve(dtype.resolve(checkpoint_dtype));
        tracing::info!(
            dir = %dir.display(),
            architecture = ?config.architecture,
            layers = config.num_layers,
            hidden = config.hidden_size,
            parameters = weights.num_parameters(),
            checkpoint_dtype = ?checkpoint_dtype,
            %dtype,
            "model loaded"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            generation,
            weights,
            dtype,
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
