//! Which checkpoint projections each fused linear layer of a backend stacks, in the order its
//! output columns hold them: every backend fuses q/k/v and gate/up into one GEMM each, and
//! applies a lookahead module's LoRA pairs in the same column order.

use crate::lookahead::Projection;

pub const QKV: &[Projection] = &[Projection::Q, Projection::K, Projection::V];
pub const O: &[Projection] = &[Projection::O];
pub const GATE_UP: &[Projection] = &[Projection::Gate, Projection::Up];
pub const DOWN: &[Projection] = &[Projection::Down];
