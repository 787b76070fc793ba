//! The per-(layer, KV head) scales of the KV pool's keys and values, and their calibration for
//! an fp8 pool.
//!
//! An E4M3 code holds 3 mantissa bits over exponents 2^-6..2^8, so each head's keys and values
//! are divided by a scale that maps their largest magnitude near 448 before rounding. A scale per
//! head cannot be taken from the requests being served: it would depend on which came first, and
//! batching and arrival order must stay invisible (docs/design.md §3). So it is calibrated once,
//! when the backend is created, from a prefill of a fixed English text (bundled here, tokenized
//! with the model's own tokenizer) into an f32 pool: each head's scale is the power of two at or
//! above `amax · HEADROOM / 448`, where `amax` is the largest magnitude of what the head stored
//! (keys after RoPE and q/k norm). Powers of two make dividing by the scale, and multiplying it
//! back, exact, so where attention applies it does not change a bit. Values beyond the headroom
//! saturate to ±448 · scale.
//!
//! Why text and not a fixed sequence of token ids, which would need no tokenizer: both fit the
//! served prompts of the bundled models within the headroom (their per-head amax reached up to
//! 3.8× the text's and 2.4× the ids', [`HEADROOM`]), but the outlier activations of large models
//! ride on particular tokens — the first one, punctuation, line breaks — which text has and a
//! spread of ids may miss. A model folder without a tokenizer is refused for fp8.

use super::CpuBackend;
use super::kv_cache::{CpuKvCache, HeadScales, PoolLayer};
use super::stored::E4m3;
use crate::backend::{Backend, KvGeometry};
use crate::batch::{ForwardBatch, ForwardOutput, SequenceInput};
use crate::config::KvCacheDtype;
use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// The text fp8 scales are calibrated on: plain English prose with some digits and punctuation.
const CALIBRATION_TEXT: &str = include_str!("kv_calibration.txt");

/// Of the calibration text, at most this many tokens are prefilled (fewer when the model's
/// context is shorter).
const CALIBRATION_TOKENS: usize = 256;

/// The margin a head's scale leaves above the largest magnitude the calibration saw, before
/// rounding up to a power of two (which adds up to 2× more). Measured (2026-12-06): served
/// prompts reach up to 1.7× the calibration's per-head amax on stories260K (its 128 evaluation
/// prompts) and 3.8× on retrieval-byte-6l (20 retrieval prompts of 2048 bytes, against 256 bytes
/// of calibration), so 8 leaves at least 2× to spare; what it costs is nothing measurable, since
/// E4M3 spans 15 binades and K/V are not that spread out: stories260K's KL(f32 ‖ fp8) per position
/// is 0.036 with an effective headroom of 1, 4 or 64.
const HEADROOM: f32 = 8.0;

/// Per-(layer, KV head) multipliers of what the pool stores: a key or value is its stored
/// element widened, times its head's scale. `[layer][kv_head]` each.
#[derive(Debug, Clone, PartialEq)]
pub struct KvScales {
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
}

impl KvScales {
    /// Scales of 1: what f32 and bf16 pools use, so their stored elements are the K/V rounded.
    pub fn unit(geometry: &KvGeometry) -> Self {
        let heads = geometry.num_layers * geometry.num_kv_heads;
        Self {
            keys: vec![1.0; heads],
            values: vec![1.0; heads],
        }
    }

    /// The scales that fit the per-head largest magnitudes `amax` of keys and values.
    pub fn for_amax(keys: &[f32], values: &[f32]) -> Self {
        let fit = |amax: &[f32]| amax.iter().map(|&a| scale_for(a)).collect();
        Self {
            keys: fit(keys),
            values: fit(values),
        }
    }

    /// The scales of `layer`'s `num_kv_heads` heads.
    pub fn layer(&self, layer: usize, num_kv_heads: usize) -> HeadScales<'_> {
        let heads = layer * num_kv_heads..(layer + 1) * num_kv_heads;
        HeadScales {
            keys: &self.keys[heads.clone()],
            values: &self.values[heads],
        }
    }
}

/// The power of two at or above `amax · HEADROOM / 448`; 1 for a head that stored only zeros
/// (or non-finite values, which no scale fits).
fn scale_for(amax: f32) -> f32 {
    let wanted = amax * HEADROOM / E4m3::MAX;
    if !(wanted.is_finite() && wanted > 0.0) {
        return 1.0;
    }
    let wanted = wanted.max(f32::MIN_POSITIVE);
    let bits = wanted.to_bits();
    match bits & 0x7F_FFFF {
        0 => wanted,
        _ => f32::from_bits(((bits >> 23) + 1) << 23),
    }
}

/// The calibration prefill of an fp8 backend: the tokens, and the f32 pool that holds them.
pub(super) struct Calibration {
    tokens: Vec<u32>,
    pub geometry: KvGeometry,
}

impl Calibration {
    /// The calibration text tokenized with the tokenizer in `model.dir`, cut to the model's
    /// context, and a pool of `block_size` blocks for it shaped like `geometry`, in f32.
    ///
    /// Fails with the tokenizer's error when `model.dir` has no usable `tokenizer.json`.
    pub fn new(model: &Model, geometry: KvGeometry) -> Result<Self> {
        let tokenizer =
            Tokenizer::from_dir(&model.dir).map_err(|e| EngineError::InvalidParameter {
                field: "kv_cache_dtype",
                message: format!(
                    "fp8 calibrates its scales on a text tokenized with the model's tokenizer: {e}"
                ),
            })?;
        let mut tokens = tokenizer.encode(CALIBRATION_TEXT, true)?;
        tokens.truncate(CALIBRATION_TOKENS.min(model.config.max_model_len));
        let geometry = KvGeometry {
            num_blocks: tokens.len().div_ceil(geometry.block_size),
            dtype: KvCacheDtype::F32,
            ..geometry
        };
        Ok(Self { tokens, geometry })
    }

    /// Prefills the tokens on `backend`, whose pool must be [`Calibration::geometry`]'s, and
    /// returns the scales that fit what each head stored.
    pub fn run(&self, backend: &mut CpuBackend) -> Result<KvScales> {
        let table: Vec<u32> = (0..self.geometry.num_blocks as u32).collect();
        let batch = ForwardBatch {
            sequences: vec![SequenceInput::whole_prompt(&self.tokens, &table)],
        };
        backend.forward(&batch, &mut ForwardOutput::default())?;
        let (keys, values) = head_amax(&backend.cache);
        let scales = KvScales::for_amax(&keys, &values);
        let range = |v: &[f32]| {
            let min = v.iter().copied().fold(f32::INFINITY, f32::min);
            (min, v.iter().copied().fold(0.0, f32::max))
        };
        let ((key_min, key_max), (value_min, value_max)) =
            (range(&scales.keys), range(&scales.values));
        tracing::info!(
            tokens = self.tokens.len(),
            key_min,
            key_max,
            value_min,
            value_max,
            "fp8 KV scales calibrated"
        );
        Ok(scales)
    }
}

/// The largest magnitude of the keys and of the values each (layer, KV head) of an f32 `pool`
/// holds, `[layer][kv_head]`.
fn head_amax(pool: &CpuKvCache) -> (Vec<f32>, Vec<f32>) {
    let g = *pool.geometry();
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for layer in 0..g.num_layers {
        let PoolLayer::F32(view) = pool.layer(layer) else {
            unreachable!("calibration prefills into an f32 pool");
        };
        let amax = |stored: &[f32], out: &mut Vec<f32>| {
            let mut heads = vec![0.0f32; g.num_kv_heads];
            for (piece, elements) in stored.chunks_exact(view.head_stride).enumerate() {
                let head = &mut heads[piece % g.num_kv_heads];
                *head = elements.iter().fold(*head, |m, x| m.max(x.abs()));
            }
            out.extend(heads);
        };
        amax(view.keys, &mut keys);
        amax(view.values, &mut values);
    }
    (keys, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_is_the_power_of_two_that_fits_the_amax_with_headroom_in_448() {
        let fits = E4m3::MAX / HEADROOM;
        assert_eq!(scale_for(fits), 1.0);
        assert_eq!(scale_for(fits * 1.01), 2.0);
        assert_eq!(scale_for(fits / 16.0), 1.0 / 16.0);
        assert_eq!(scale_for(fits / 16.0 * 0.6), 1.0 / 16.0);
        assert_eq!(scale_for(fits / 32.0), 1.0 / 32.0);
        for amax in [0.0, f32::NAN, f32::INFINITY] {
            assert_eq!(scale_for(amax), 1.0, "{amax}");
        }
    }
}
