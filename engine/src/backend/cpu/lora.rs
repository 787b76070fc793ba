//! LoRA deltas on the lookahead rows of a forward pass: `y += (α/r)·(x·Aᵀ)·Bᵀ` for the rows of
//! one sequence's lookahead block only (docs/design.md §4). Prompt and decode rows never pass through
//! here, which is what keeps LookaheadKV from changing a prompt's keys, values or logits.
//!
//! The adapters are packed for the GEMM once, when the backend is built ([`PackedLora`]): the `A`s
//! of the projections one fused linear layer feeds (q/k/v, gate/up) are stacked into one matrix,
//! since they read the same input rows, so a fused linear layer costs one `x·Aᵀ` product and one
//! `·Bᵀ` product per target. Stacking changes no bits: the GEMM accumulates each output element
//! in the same order whatever the other columns.

use super::linear::{PackedMatrix, matmul_packed};
use super::row_span;
use crate::backend::eviction_pass::SequenceRows;
use crate::backend::fused::{DOWN, GATE_UP, O, QKV};
use crate::lookahead::{LookaheadModule, Projection};

/// Reused intermediate buffers of the small GEMMs.
#[derive(Default)]
pub struct LoraScratch {
    /// `x·Aᵀ` of every target, `[rows, targets·rank]`.
    low_rank: Vec<f32>,
    /// One target's columns of `low_rank`, `[rows, rank]`.
    target: Vec<f32>,
    /// `(x·Aᵀ)·Bᵀ` of one target, `[rows, out_features]`.
    delta: Vec<f32>,
}

/// The adapters of one fused linear layer, packed: its targets' `A`s stacked `[targets·rank, in]`
/// and each target's `B` `[out_features, rank]`.
pub struct FusedAdapters {
    rank: usize,
    a: PackedMatrix,
    b: Vec<PackedMatrix>,
}

/// One decoder layer's [`FusedAdapters`], one per fused linear layer.
pub struct LayerAdapters {
    pub qkv: FusedAdapters,
    pub o: FusedAdapters,
    pub gate_up: FusedAdapters,
    pub down: FusedAdapters,
}

/// A lookahead module's adapters packed for the CPU GEMM, with their scale `α/r`.
pub struct PackedLora {
    scale: f32,
    layers: Vec<LayerAdapters>,
}

impl PackedLora {
    pub fn new(module: &LookaheadModule) -> Self {
        let fused = |layer: &crate::lookahead::LayerAdapters, targets: &[Projection]| {
            let pairs: Vec<_> = targets.iter().map(|&p| layer.get(p)).collect();
            let in_features = pairs[0].in_features;
            let stacked: Vec<f32> = pairs
                .iter()
                .flat_map(|pair| pair.a.iter().copied())
                .collect();
            FusedAdapters {
                rank: module.rank,
                a: PackedMatrix::pack(&stacked, pairs.len() * module.rank, in_features),
                b: pairs
                    .iter()
                    .map(|pair| PackedMatrix::pack(&pair.b, pair.out_features, module.rank))
                    .collect(),
            }
        };
        Self {
            scale: module.scale(),
            layers: module
                .layers
                .iter()
                .map(|layer| LayerAdapters {
                    qkv: fused(layer, QKV),
                    o: fused(layer, O),
                    gate_up: fused(layer, GATE_UP),
                    down: fused(layer, DOWN),
                })
                .collect(),
        }
    }
}

/// One fused linear layer's adapters as its projection applies them: on the lookahead rows of
/// `sequences` only, scaled by `scale = α/r`.
#[derive(Clone, Copy)]
pub struct LayerLora<'a> {
    adapters: &'a FusedAdapters,
    scale: f32,
    sequences: &'a [SequenceRows],
}

impl<'a> LayerLora<'a> {
    /// The adapters `pick` chooses of layer `layer` of `lora`, if a module is loaded, over the
    /// pass's `sequences`.
    pub fn of(
        lora: Option<&'a PackedLora>,
        layer: usize,
        sequences: &'a [SequenceRows],
        pick: impl FnOnce(&'a LayerAdapters) -> &'a FusedAdapters,
    ) -> Option<Self> {
        lora.map(|lora| Self {
            adapters: pick(&lora.layers[layer]),
            scale: lora.scale,
            sequences,
        })
    }

    /// Adds the deltas of the targets to `y` on every lookahead row; every other row is left exactly
    /// as the base projection made it. `x` is the projection's input `[T, in]` and `y` its output
    /// `[T, out]`, which holds the targets' outputs side by side in order.
    pub fn add_deltas(&self, x: &[f32], y: &mut [f32], scratch: &mut LoraScratch) {
        let FusedAdapters { rank, a, b } = self.adapters;
        let (rank, in_features) = (*rank, a.cols());
        let y_width: usize = b.iter().map(PackedMatrix::rows).sum();
        for rows in self.sequences.iter().filter(|r| r.num_lookahead > 0) {
            let (span, n) = (rows.lookahead_rows(), rows.num_lookahead);
            scratch.low_rank.resize(n * a.rows(), 0.0);
            matmul_packed(
                &x[row_span(span.clone(), in_features)],
                n,
                a,
                &mut scratch.low_rank,
            );
            let y = &mut y[row_span(span, y_width)];
            let mut column = 0;
            for (i, b) in b.iter().enumerate() {
                scratch.target.clear();
                for row in scratch.low_rank.chunks_exact(a.rows()) {
                    scratch
                        .target
                        .extend_from_slice(&row[i * rank..(i + 1) * rank]);
                }
                scratch.delta.resize(n * b.rows(), 0.0);
                matmul_packed(&scratch.target, n, b, &mut scratch.delta);
                for (y_row, delta_row) in y
                    .chunks_exact_mut(y_width)
                    .zip(scratch.delta.chunks_exact(b.rows()))
                {
                    for (out, &d) in y_row[column..column + b.rows()].iter_mut().zip(delta_row) {
                        *out += self.scale * d;
                    }
                }
                column += b.rows();
            }
        }
    }
}
