//! LoRA deltas on the lookahead rows of a forward pass: `y += (α/r)·(x·Aᵀ)·Bᵀ` for the rows of
//! one sequence's lookahead block only (DESIGN §4). Prompt and decode rows never pass through
//! here, which is what keeps LookaheadKV from changing a prompt's keys, values or logits.

use super::linear::matmul_nt;
use crate::lookahead::LoraPair;

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
pub struct OutputColumns<'a> {
    pub y: &'a mut [f32],
    pub width: usize,
    pub column: usize,
}

/// Adds the scaled LoRA delta of `pair` for `rows` rows of `x` (`[rows, in_features]`) into
/// `out`'s columns `column..column + out_features`.
pub fn add_lora_delta(
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
