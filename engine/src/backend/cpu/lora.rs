//! LoRA deltas on the lookahead rows of a forward pass: `y += (α/r)·(x·Aᵀ)·Bᵀ` for the rows of
//! one sequence's lookahead block only (docs/design.md §4). Prompt and decode rows never pass through
//! here, which is what keeps LookaheadKV from changing a prompt's keys, values or logits.

use super::linear::matmul_nt;
use super::row_span;
use super::rows::SequenceRows;
use crate::lookahead::{LayerAdapters, LookaheadModule, LoraPair, Projection};

/// Reused intermediate buffers of the two small GEMMs.
#[derive(Default)]
pub struct LoraScratch {
    /// `x·Aᵀ`, `[rows, rank]`.
    low_rank: Vec<f32>,
    /// `(x·Aᵀ)·Bᵀ`, `[rows, out_features]`.
    delta: Vec<f32>,
}

/// Where a delta lands: columns `column..` of the rows of `y`, each `width` wide (a fused
/// projection's output holds several projections side by side).
struct OutputColumns<'a> {
    pub y: &'a mut [f32],
    pub width: usize,
    pub column: usize,
}

/// Adds the scaled LoRA delta of `pair` for `rows` rows of `x` (`[rows, in_features]`) into
/// `out`'s columns `column..column + out_features`.
fn add_lora_delta(
    x: &[f32],
    rows: usize,
    pair: &LoraPair,
    scale: f32,
    out: OutputColumns<'_>,
    scratch: &mut LoraScratch,
) {
    let OutputColumns { y, width, column } = out;
    let rank = pair.a.len() / pair.in_features;
    scratch.low_rank.resize(rows * rank, 0.0);
    scratch.delta.resize(rows * pair.out_features, 0.0);
    matmul_nt(
        x,
        rows,
        pair.in_features,
        &pair.a,
        rank,
        &mut scratch.low_rank,
    );
    matmul_nt(
        &scratch.low_rank,
        rows,
        rank,
        &pair.b,
        pair.out_features,
        &mut scratch.delta,
    );
    for (y_row, delta_row) in y
        .chunks_mut(width)
        .zip(scratch.delta.chunks(pair.out_features))
    {
        for (out, &d) in y_row[column..column + pair.out_features]
            .iter_mut()
            .zip(delta_row)
        {
            *out += scale * d;
        }
    }
}

/// One layer's lookahead adapters as its projections apply them: on the lookahead rows of
/// `sequences` only, scaled by `scale = α/r`.
#[derive(Clone, Copy)]
pub struct LayerLora<'a> {
    adapters: &'a LayerAdapters,
    scale: f32,
    sequences: &'a [SequenceRows],
}

impl<'a> LayerLora<'a> {
    /// Layer `layer`'s adapters of `module`, if one is loaded, over the pass's `sequences`.
    pub fn of(
        module: Option<&'a LookaheadModule>,
        layer: usize,
        sequences: &'a [SequenceRows],
    ) -> Option<Self> {
        module.map(|m| Self {
            adapters: &m.layers[layer],
            scale: m.scale(),
            sequences,
        })
    }

    /// Adds the deltas of `targets` to `y` on every lookahead row; every other row is left exactly
    /// as the base projection made it. `x` is the projection's input `[T, in]` and `y` its output
    /// `[T, out]`, where a fused projection holds the targets' outputs side by side in order.
    pub fn add_deltas(
        &self,
        targets: &[Projection],
        x: &[f32],
        y: &mut [f32],
        scratch: &mut LoraScratch,
    ) {
        let pairs = targets.iter().map(|&p| self.adapters.get(p));
        let y_width: usize = pairs.clone().map(|pair| pair.out_features).sum();
        for rows in self.sequences.iter().filter(|r| r.num_lookahead > 0) {
            let span = rows.lookahead_rows();
            let mut column = 0;
            for pair in pairs.clone() {
                let out = OutputColumns {
                    y: &mut y[row_span(span.clone(), y_width)],
                    width: y_width,
                    column,
                };
                let x = &x[row_span(span.clone(), pair.in_features)];
                add_lora_delta(x, rows.num_lookahead, pair, self.scale, out, scratch);
                column += pair.out_features;
            }
        }
    }
}
