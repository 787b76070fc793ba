//! The one linear step of the forward pass: `y = x·Wᵀ + b` over every row of the flat batch (one
//! GEMM, docs/design.md §2), then the lookahead LoRA deltas on lookahead rows only (docs/design.md §4).

use std::time::{Duration, Instant};

use super::lora::{LayerLora, LoraScratch};
use super::ops;
use super::weights::Linear;
use super::{linear, resize};

/// Scratch and clocks of a pass's projections.
#[derive(Default)]
pub struct Projector {
    lora: LoraScratch,
    /// Time in GEMMs during the current forward pass.
    pub matmul_time: Duration,
    /// Time in LoRA deltas during the current forward pass.
    pub lora_time: Duration,
}

impl Projector {
    /// `x [T, in] → y [T, out]` (`y` resized): `y = x·Wᵀ + b`, then, with `lora`, the deltas of
    /// each of its targets on the lookahead rows.
    pub fn project(
        &mut self,
        x: &[f32],
        layer: &Linear,
        y: &mut Vec<f32>,
        lora: Option<LayerLora<'_>>,
    ) {
        let in_features = layer.weight.cols();
        debug_assert_eq!(x.len() % in_features, 0, "x holds whole rows");
        let rows = x.len() / in_features;
        let started = Instant::now();
        resize(y, rows * layer.out_features);
        linear::matmul_packed(x, rows, &layer.weight, y);
        if let Some(bias) = &layer.bias {
            ops::add_bias(y, bias);
        }
        self.matmul_time += started.elapsed();
        if let Some(lora) = lora {
            let started = Instant::now();
            lora.add_deltas(x, y, &mut self.lora);
            self.lora_time += started.elapsed();
        }
    }
}
