//! Training LookaheadKV modules (docs/design.md §4; Ahn et al., §3.3): the model answers each training
//! prompt greedily with the full cache; the mean attention its answer pays to each prompt key is
//! the ground truth per (layer, KV head); the lookahead rows' attention is the prediction; the loss
//! is their mean KL divergence; only the module's embeddings and LoRA pairs learn.
//!
//! Training runs on candle-core's autograd, on the CPU now and, through candle's devices, wherever
//! the backend runs later. The base model is re-expressed with differentiable ops ([`ops`]) in
//! [`FrozenModel`]; prompt K/V come from a gradient-free pass ([`AttentionTarget`]), so only the
//! lookahead rows are differentiated.
//!
//! - [`data`]: prompts (sampled from the model itself, or given) and the model's answers;
//! - [`AttentionTarget`]: ground truth and prompt K/V of one example;
//! - [`objective`]: the lookahead rows' scores and the KL loss;
//! - [`Trainer`]: batches, Adam, validation, checkpoints.

mod adam;
mod adapters;
pub mod data;
mod frozen;
pub mod objective;
mod ops;
mod target;
#[cfg(test)]
mod tests;
mod trainer;

pub use adam::AdamOptions;
pub use adapters::TrainableModule;
pub use frozen::FrozenModel;
pub use target::AttentionTarget;
pub use trainer::{StepReport, TrainOptions, Trainer, checkpoint_module_path};

use candle_core::DType;

/// Float type of the training tensors: `F32` to train, `F64` for gradient checks. Callers name
/// it through this type, so candle stays inside the training module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F64,
}

impl Precision {
    pub(crate) fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F64 => DType::F64,
        }
    }
}
