//! Row-wise kernels of the forward pass: RMSNorm, SwiGLU, residual add, bias add. Each works on
//! flat `[rows, width]` buffers in place or into a reused output, so a step allocates nothing.

use rayon::prelude::*;

/// Rows below which threading costs more than it saves.
const PARALLEL_MIN_ROWS: usize = 8;

/// `out[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight`, as `transformers` (`LlamaRMSNorm`) does in f32.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    let norm_row = |(xr, or): (&[f32], &mut [f32])| rms_norm_row(xr, weight, eps, or);
    if x.len() / width >= PARALLEL_MIN_ROWS {
        x.par_chunks(width)
            .zip(out.par_chunks_mut(width))
            .for_each(norm_row);
    } else {
        x.chunks(width)
            .zip(out.chunks_mut(width))
            .for_each(norm_row);
    }
}

/// RMSNorm of one row.
#[inline]
pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_square + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * scale);
    }
}

/// RMSNorm of every `head_dim` slice of a row in place (Qwen3's q/k norm).
pub fn rms_norm_heads_in_place(row: &mut [f32], weight: &[f32], eps: f32) {
    let head_dim = weight.len();
    let mut normed = [0.0f32; 512];
    assert!(head_dim <= normed.len(), "head_dim {head_dim} exceeds 512");
    for head in row.chunks_mut(head_dim) {
        rms_norm_row(head, weight, eps, &mut normed[..head_dim]);
        head.copy_from_slice(&normed[..head_dim]);
    }
}

/// SwiGLU: `out[r, i] = silu(gate_up[r, i]) · gate_up[r, I + i]` for rows laid out `[gate | up]`.
pub fn silu_mul(gate_up: &[f32], intermediate: usize, out: &mut [f32]) {
    let act_row = |(gu, o): (&[f32], &mut [f32])| {
        let (gate, up) = gu.split_at(intermediate);
        for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    };
    if gate_up.len() / (2 * intermediate) >= PARALLEL_MIN_ROWS {
        gate_up
            .par_chunks(2 * intermediate)
            .zip(out.par_chunks_mut(intermediate))
            .for_each(act_row);
    } else {
        gate_up
            .chunks(2 * intermediate)
            .zip(out.chunks_mut(intermediate))
            .for_each(act_row);
    }
}

/// `acc += x`, element-wise.
pub fn add_in_place(acc: &mut [f32], x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// Adds `bias` to every row of `rows`.
pub fn add_bias(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_scales_to_unit_root_mean_square() {
        let x = [3.0, 4.0, 0.0, 0.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &[1.0, 1.0, 2.0, 1.0], 0.0, &mut out);
        assert!((out[0] - 1.2).abs() < 1e-6 && (out[1] - 1.6).abs() < 1e-6);
    }

    #[test]
    fn silu_mul_gates_the_up_projection() {
        let mut out = [0.0; 2];
        silu_mul(&[0.0, 1.0, 5.0, 2.0], 2, &mut out);
        let silu1 = 1.0 / (1.0 + (-1.0f32).exp());
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 2.0 * silu1).abs() < 1e-6);
    }
}
