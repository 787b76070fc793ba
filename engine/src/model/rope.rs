//! Rotary position embedding tables, computed exactly as Hugging Face `transformers` does (inverse
//! frequencies and angles in f32, `rotate_half` layout), including linear and Llama 3 scaling.

use crate::config::{RopeConfig, RopeScaling};
use crate::error::{EngineError, Result};

/// Precomputed `cos`/`sin` for positions `0..max_positions`, each row `[head_dim / 2]` (the two
/// halves of a head share one angle per frequency in the `rotate_half` convention).
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub half_dim: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTables {
    /// Builds tables for `max_positions` positions of a `head_dim`-wide head.
    ///
    /// Fails with [`EngineError::OutOfMemory`] when the tables do not fit in memory (their size
    /// comes from the model's `max_position_embeddings`), instead of aborting the process.
    pub fn new(rope: &RopeConfig, head_dim: usize, max_positions: usize) -> Result<Self> {
        let inv_freq = inverse_frequencies(rope, head_dim);
        let half_dim = head_dim / 2;
        let len = max_positions.checked_mul(half_dim);
        let out_of_memory = || EngineError::OutOfMemory {
            what: format!(
                "RoPE tables of {max_positions} positions × {half_dim} frequencies (`max_position_embeddings`, `head_dim`)"
            ),
            bytes: len.map_or(usize::MAX, |n| n.saturating_mul(2 * size_of::<f32>())),
        };
        let len = len.ok_or_else(out_of_memory)?;
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        cos.try_reserve_exact(len).map_err(|_| out_of_memory())?;
        sin.try_reserve_exact(len).map_err(|_| out_of_memory())?;
        for position in 0..max_positions {
            for &f in &inv_freq {
                let angle = position as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self { half_dim, cos, sin })
    }

    /// Number of positions covered.
    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half_dim
    }

    /// Rotates one head vector `x` (`[head_dim]`) in place for `position`.
    #[inline]
    pub fn rotate(&self, x: &mut [f32], position: usize) {
        let h = self.half_dim;
        let cos = &self.cos[position * h..(position + 1) * h];
        let sin = &self.sin[position * h..(position + 1) * h];
        let (lo, hi) = x.split_at_mut(h);
        for i in 0..h {
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * cos[i] - b * sin[i];
            hi[i] = b * cos[i] + a * sin[i];
        }
    }
}

/// `1 / theta^(2i/d)` in f32 as `transformers` computes it, then scaled.
fn inverse_frequencies(rope: &RopeConfig, head_dim: usize) -> Vec<f32> {
    let base: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / rope.theta.powf(i as f32 / head_dim as f32))
        .collect();
    match rope.scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old_len = original_max_position_embeddings as f32;
            let low_freq_wavelen = old_len / low_freq_factor;
            let high_freq_wavelen = old_len / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        f
                    };
                    // Medium band: neither shorter than the high-frequency cut nor longer than the low one.
                    let is_medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                    if is_medium {
                        let smooth = (old_len / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_the_identity() {
        let rope = RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::None,
        };
        let t = RopeTables::new(&rope, 8, 4).unwrap();
        let mut x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        t.rotate(&mut x, 0);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    }

    #[test]
    fn rotation_preserves_the_norm() {
        let rope = RopeConfig {
            theta: 500_000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            },
        };
        let t = RopeTables::new(&rope, 16, 300).unwrap();
        let mut x: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
        let before = norm(&x);
        t.rotate(&mut x, 299);
        assert!((norm(&x) - before).abs() < 1e-5);
    }

    #[test]
    fn tables_too_large_for_memory_are_an_error() {
        let rope = RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::None,
        };
        for positions in [1 << 50, usize::MAX] {
            let err = RopeTables::new(&rope, 8, positions).unwrap_err();
            assert!(
                matches!(err, EngineError::OutOfMemory { .. }),
                "{positions}: {err}"
            );
        }
    }
}
