//! The differentiable forms of the transformer's building blocks. candle's fused kernels
//! (`softmax_last_dim`, `rms_norm`, `rope`) have no backward pass, so training composes these from
//! elementary ops that do; each matches the engine's inference kernel numerically (same formula,
//! same order of normalisation) so a module is trained on the function it will run under.

use candle_core::{D, Result, Tensor};

/// Softmax over the last axis, shifted by the (gradient-free) row maximum for stability.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// RMSNorm over the last axis as Llama defines it: `x / sqrt(mean(x²) + eps) · weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_rms)?.broadcast_mul(weight)
}

/// SiLU, `x · σ(x)`, with the sigmoid written out.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    let sigmoid = (x.neg()?.exp()? + 1.0)?.recip()?;
    x.mul(&sigmoid)
}

/// Rotary embedding in the `rotate_half` layout for `x [heads, tokens, head_dim]`, with `cos` and
/// `sin` `[tokens, head_dim / 2]` for the tokens' positions.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let lo = x.narrow(D::Minus1, 0, half)?;
    let hi = x.narrow(D::Minus1, half, half)?;
    let (cos, sin) = (cos.unsqueeze(0)?, sin.unsqueeze(0)?);
    let new_lo = (lo.broadcast_mul(&cos)? - hi.broadcast_mul(&sin)?)?;
    let new_hi = (hi.broadcast_mul(&cos)? + lo.broadcast_mul(&sin)?)?;
    Tensor::cat(&[new_lo, new_hi], D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn close(a: &Tensor, b: &[f32]) {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn softmax_is_normalised_and_differentiable() {
        let x = Var::from_vec(vec![1f32, 2.0, 3.0], 3, &Device::Cpu).unwrap();
        let p = softmax_last_dim(x.as_tensor()).unwrap();
        let e: Vec<f32> = [1f32, 2.0, 3.0].iter().map(|v| (v - 3.0).exp()).collect();
        let s: f32 = e.iter().sum();
        close(&p, &e.iter().map(|v| v / s).collect::<Vec<_>>());
        // d p_2 / d x: p_2 (δ − p).
        let grads = p
            .narrow(0, 2, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = grads
            .get(x.as_tensor())
            .expect("softmax must carry a gradient");
        let p: Vec<f32> = p.to_vec1().unwrap();
        close(g, &[-p[2] * p[0], -p[2] * p[1], p[2] * (1.0 - p[2])]);
    }

    #[test]
    fn rope_rotates_each_pair_by_its_angle() {
        // One head, one token, head_dim 4: pairs (x0, x2) and (x1, x3).
        let x = Tensor::new(&[[[1f32, 2.0, 3.0, 4.0]]], &Device::Cpu).unwrap();
        let (c, s) = (0.5f32, 0.75f32);
        let cos = Tensor::new(&[[c, 1.0]], &Device::Cpu).unwrap();
        let sin = Tensor::new(&[[s, 0.0]], &Device::Cpu).unwrap();
        let y = rope(&x, &cos, &sin).unwrap();
        close(&y, &[1.0 * c - 3.0 * s, 2.0, 3.0 * c + 1.0 * s, 4.0]);
    }

    #[test]
    fn rms_norm_and_silu_match_their_formulas() {
        let x = Tensor::new(&[[3f32, 4.0]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[2f32, 1.0], &Device::Cpu).unwrap();
        let rms = (12.5f32 + 1e-5).sqrt();
        close(&rms_norm(&x, &w, 1e-5).unwrap(), &[6.0 / rms, 4.0 / rms]);
        let y = silu(&x.to_dtype(DType::F32).unwrap()).unwrap();
        close(
            &y,
            &[3.0 / (1.0 + (-3f32).exp()), 4.0 / (1.0 + (-4f32).exp())],
        );
    }
}
