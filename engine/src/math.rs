//! Scalar math kernels written so the compiler can vectorise loops that call them, shared by the
//! sampler, the CPU attention kernel and eviction scoring.

/// 1.5 * 2^23: adding it to a float of magnitude below 2^22 rounds it to an integer.
pub(crate) const ROUNDING_MAGIC: f32 = 12_582_912.0;
/// Below this, [`exp_nonpositive`] returns 0 (the true value is below 2e-38).
pub(crate) const EXP_UNDERFLOW: f32 = -87.0;
/// `ln 2` split in two, so that `n · LN2_HI` is exact for the `n` [`exp_nonpositive`] meets.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// Coefficients of the polynomial for `(exp(r) − 1 − r) / r²`, highest degree first.
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `exp(x)` for `x <= 0` (Cephes `expf`: range reduction by `ln 2`, degree-6 polynomial; relative
/// error about 2e-7). `x < -87` and `-inf` give 0, whose true value is below 2e-38. Not for NaN
/// or positive `x`. The AVX-512 attention kernels repeat these steps lane by lane.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    debug_assert!(
        x <= 0.0 || x.is_nan(),
        "exp_nonpositive takes x <= 0, got {x}"
    );
    let clamped = x.max(EXP_UNDERFLOW);
    // Nearest integer n to x / ln 2 by the 1.5 * 2^23 trick: adding it leaves n in the low
    // mantissa bits (plain float and integer ops, which vectorise; `as i32` saturates and does not).
    let shifted = clamped * std::f32::consts::LOG2_E + ROUNDING_MAGIC;
    let n = (shifted.to_bits() as i32).wrapping_sub(ROUNDING_MAGIC.to_bits() as i32);
    let nf = shifted - ROUNDING_MAGIC;
    // r = x - n ln 2.
    let r = clamped - nf * LN2_HI - nf * LN2_LO;
    let poly = EXP_POLY[1..]
        .iter()
        .fold(EXP_POLY[0], |acc, &c| acc * r + c);
    let exp_r = poly * (r * r) + r + 1.0;
    // n is in [-126, 0] after the clamp, so 2^n is a normal f32.
    let two_to_n = f32::from_bits(((n + 127) as u32) << 23);
    if x < EXP_UNDERFLOW {
        0.0
    } else {
        exp_r * two_to_n
    }
}

/// Sum with eight independent partial sums, so the compiler vectorises it.
#[inline(always)]
pub fn sum(values: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for lane in 0..8 {
            acc[lane] += chunk[lane];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product with eight independent partial sums, so the compiler vectorises it (a single
/// running sum would force sequential adds).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for lane in 0..8 {
            acc[lane] += x[lane] * y[lane];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_nonpositive_matches_std_exp_to_a_few_ulp() {
        let mut x = 0.0f32;
        while x > -90.0 {
            let want = x.exp();
            let got = exp_nonpositive(x);
            if x >= -87.0 {
                assert!(
                    ((got - want) / want).abs() < 4e-7,
                    "exp({x}): got {got}, want {want}"
                );
            } else {
                assert_eq!(got, 0.0);
            }
            x -= 0.003_7;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    }
}
