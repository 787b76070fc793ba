//! The LookaheadKV module (Ahn et al., *LookaheadKV*; docs/design.md §4): learned embeddings appended after
//! the prompt during the last prefill chunk, plus one LoRA pair per linear layer that is active only
//! on those appended rows. Their attention to the prompt keys scores which prompt entries the
//! answer will need.
//!
//! This module owns the module's parameters in host memory ([`LookaheadModule`]), its file format
//! (one safetensors file, see [`LookaheadModule::save`]) and a seeded random initialisation for tests
//! and benchmarks ([`LookaheadModule::random`]). It must not know how the forward pass applies the
//! adapters, how scores become a selection, or how the module is trained: those read the public
//! fields. A module belongs to one base model, checked by [`BaseModelIdentity`] on load.
//!
//! # File format
//! One safetensors file, so PEFT-style tooling can read it and the weights loader's dtype handling
//! applies. Tensors (written as f32; f32, bf16 and f16 are read, widened to f32):
//! - `lookahead.embeddings`: `[num_tokens, hidden_size]`;
//! - `layers.{l}.{q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj}.lora_A`: `[rank, in]`;
//! - `layers.{l}.{…}.lora_B`: `[out, rank]`.
//!
//! `__metadata__` (strings): `format` = `glimpse-lookahead`, `format_version` = `1`, `num_tokens`,
//! `rank`, `alpha`, `base_model` (the base model's name) and `base_model_hash` (see
//! [`crate::model::Model::identity`]). Other metadata keys are ignored, so later writers may add
//! some; any other tensor is refused, so a file meant for a different format is not half-loaded.

mod file;
mod random;
#[cfg(test)]
mod tests;

pub use crate::model::BaseModelIdentity;
pub use random::RandomInit;

/// Lookahead tokens per module in the LookaheadKV paper: the default shape of a new module
/// and the default of the LookaheadKV policy.
pub const DEFAULT_NUM_TOKENS: usize = 32;

use crate::config::ModelConfig;

/// A LookaheadKV module for one base model: `num_tokens` learned token embeddings and, for every
/// decoder layer, a rank-`rank` LoRA pair on each of its seven linear layers. On lookahead rows a
/// linear layer computes `y = W·x + scale()·B·(A·x)`; prompt rows never see the adapters, so the
/// prompt's KV cache and first token are the same with and without the module.
///
/// Invariant (kept by [`LookaheadModule::load`] and [`LookaheadModule::random`]): every tensor has
/// the shape its field documents for this `num_tokens`, `rank`, `hidden_size` and base model.
#[derive(Debug, Clone, PartialEq)]
pub struct LookaheadModule {
    /// Lookahead rows appended after the prompt (32 in the paper).
    pub num_tokens: usize,
    /// LoRA rank `r` (8 in the paper).
    pub rank: usize,
    /// LoRA `α` (32 in the paper); the update is scaled by `α / r`.
    pub alpha: f32,
    pub hidden_size: usize,
    /// `[num_tokens, hidden_size]`, row-major: the input rows fed to layer 0 in place of token
    /// embeddings.
    pub embeddings: Vec<f32>,
    /// One per decoder layer, in layer order.
    pub layers: Vec<LayerAdapters>,
    /// The base model this module was made for.
    pub identity: BaseModelIdentity,
}

impl LookaheadModule {
    /// The LoRA scaling factor `α / r` (standard LoRA convention, so `α` can stay fixed while the
    /// rank is tuned).
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// The LoRA pairs of one decoder layer, one per linear layer, under the checkpoint's names. They
/// stay separate even though the model fuses q/k/v and gate/up: the file format and training speak
/// per projection, and a forward pass can stack them as it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerAdapters {
    pub q: LoraPair,
    pub k: LoraPair,
    pub v: LoraPair,
    pub o: LoraPair,
    pub gate: LoraPair,
    pub up: LoraPair,
    pub down: LoraPair,
}

impl LayerAdapters {
    /// The pair on `projection`, so callers can walk [`Projection::ALL`] instead of naming fields.
    pub fn get(&self, projection: Projection) -> &LoraPair {
        match projection {
            Projection::Q => &self.q,
            Projection::K => &self.k,
            Projection::V => &self.v,
            Projection::O => &self.o,
            Projection::Gate => &self.gate,
            Projection::Up => &self.up,
            Projection::Down => &self.down,
        }
    }

    /// Builds a layer by calling `make` once per projection, in [`Projection::ALL`] order (random
    /// initialisation depends on that order).
    pub(crate) fn try_build<E>(
        mut make: impl FnMut(Projection) -> Result<LoraPair, E>,
    ) -> Result<Self, E> {
        Ok(Self {
            q: make(Projection::Q)?,
            k: make(Projection::K)?,
            v: make(Projection::V)?,
            o: make(Projection::O)?,
            gate: make(Projection::Gate)?,
            up: make(Projection::Up)?,
            down: make(Projection::Down)?,
        })
    }
}

/// One LoRA update `ΔW = B·A` for a linear layer `in_features → out_features`; with the module's
/// scale, a lookahead row `x` gets `scale · B·(A·x)` added to its output.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    pub in_features: usize,
    pub out_features: usize,
    /// `[rank, in_features]`, row-major (PEFT's `lora_A.weight` layout).
    pub a: Vec<f32>,
    /// `[out_features, rank]`, row-major (PEFT's `lora_B.weight` layout).
    pub b: Vec<f32>,
}

/// The seven linear layers of a Llama-family decoder layer that carry a LoRA pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    /// Every projection, in decoder order; file writers, loaders and random initialisation all walk
    /// this list.
    pub const ALL: [Projection; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The checkpoint name of the layer (`q_proj`, …), used in tensor names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// Input width of this linear layer in `config`'s model.
    pub fn in_features(self, config: &ModelConfig) -> usize {
        match self {
            Self::Q | Self::K | Self::V | Self::Gate | Self::Up => config.hidden_size,
            Self::O => config.num_heads * config.head_dim,
            Self::Down => config.intermediate_size,
        }
    }

    /// Output width of this linear layer in `config`'s model (uses `head_dim`, which Qwen3 sets
    /// independently of `hidden_size / num_heads`).
    pub fn out_features(self, config: &ModelConfig) -> usize {
        match self {
            Self::Q => config.num_heads * config.head_dim,
            Self::K | Self::V => config.num_kv_heads * config.head_dim,
            Self::O | Self::Down => config.hidden_size,
            Self::Gate | Self::Up => config.intermediate_size,
        }
    }
}
