//! Branch-free loops over a whole logit row, written so the compiler vectorises them: argmax,
//! `exp` of non-positive numbers, and a sum of exponentials. A row is up to ~152K entries and is
//! walked once per sequence per step, so these dominate sampling's cost; `f32::exp` is a libm call
//! per element that no loop around it can vectorise.

/// Lanes processed side by side; independent accumulators let the compiler use vector registers
/// without reordering any single floating-point sum.
const LANES: usize = 8;

/// The index of the largest entry, lowest index among ties; NaN entries never win (a row of only
/// NaN gives 0). One pass.
pub(crate) fn argmax(row: &[f32]) -> u32 {
    let mut best = [f32::NEG_INFINITY; LANES];
    let mut best_at = [0u32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail_start = row.len() - chunks.remainder().len();
    for (chunk_index, chunk) in chunks.enumerate() {
        let base = (chunk_index * LANES) as u32;
        for lane in 0..LANES {
            let take = chunk[lane] > best[lane];
            best[lane] = if take { chunk[lane] } else { best[lane] };
            best_at[lane] = if take {
                base + lane as u32
            } else {
                best_at[lane]
            };
        }
    }
    let mut winner = (f32::NEG_INFINITY, 0u32);
    let mut found = false;
    let lanes = best.iter().zip(&best_at);
    let tail = row[tail_start..].iter().zip(tail_start as u32..);
    for (&value, at) in lanes.map(|(v, &a)| (v, a)).chain(tail) {
        let better = value > winner.0 || (value == winner.0 && at < winner.1);
        if value > f32::NEG_INFINITY && (!found || better) {
            winner = (value, at);
            found = true;
        }
    }
    winner.1
}

/// 1.5 * 2^23: adding it to a float of magnitude below 2^22 rounds it to an integer.
const ROUNDING_MAGIC: f32 = 12_582_912.0;

/// `exp(x)` for `x <= 0` (Cephes `expf`: range reduction by `ln 2`, degree-6 polynomial; relative
/// error about 2e-7). `x < -87` and `-inf` give 0, whose true value is below 2e-38. Not for NaN
/// or positive `x`.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    debug_assert!(
        x <= 0.0 || x.is_nan(),
        "exp_nonpositive takes x <= 0, got {x}"
    );
    let clamped = x.max(-87.0);
    // Nearest integer n to x / ln 2 by the 1.5 * 2^23 trick: adding it leaves n in the low
    // mantissa bits (plain float and integer ops, which vectorise; `as i32` saturates and does not).
    let shifted = clamped * std::f32::consts::LOG2_E + ROUNDING_MAGIC;
    let n = (shifted.to_bits() as i32).wrapping_sub(ROUNDING_MAGIC.to_bits() as i32);
    let nf = shifted - ROUNDING_MAGIC;
    // r = x - n ln 2, with ln 2 split in two so the product is exact.
    let r = clamped - nf * 0.693_359_4 + nf * 2.121_944_4e-4;
    let poly = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let exp_r = poly * (r * r) + r + 1.0;
    // n is in [-126, 0] after the clamp, so 2^n is a normal f32.
    let two_to_n = f32::from_bits(((n + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { exp_r * two_to_n }
}

/// `sum(exp((row[i] - max) * scale))`, for `row[i] <= max`, `scale > 0`, no NaN. Lanes sum in f32
/// over short blocks, blocks in f64, so the error stays near f32 rounding of one block.
pub(crate) fn sum_exp(row: &[f32], max: f32, scale: f32) -> f64 {
    const BLOCK: usize = 32 * LANES;
    let mut total = 0.0f64;
    let blocks = row.chunks_exact(BLOCK);
    let tail = blocks.remainder();
    let mut exps = [0.0f32; BLOCK];
    for block in blocks {
        // Two simple loops (map, then lane sums) vectorise where one fused loop does not.
        for (e, &x) in exps.iter_mut().zip(block) {
            *e = exp_nonpositive((x - max) * scale);
        }
        let mut sums = [0.0f32; LANES];
        for chunk in exps.chunks_exact(LANES) {
            for lane in 0..LANES {
                sums[lane] += chunk[lane];
            }
        }
        total += sums.iter().map(|&s| s as f64).sum::<f64>();
    }
    let tail_sum: f64 = tail
        .iter()
        .map(|&x| exp_nonpositive((x - max) * scale) as f64)
        .sum();
    total + tail_sum
}

/// The largest entry, ignoring NaN (`-inf` for an empty or all-NaN row).
pub(crate) fn max(row: &[f32]) -> f32 {
    let mut best = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for lane in 0..LANES {
            best[lane] = best[lane].max(chunk[lane]);
        }
    }
    best.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
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

    #[test]
    fn argmax_returns_the_first_maximum_across_lanes_and_tail() {
        let mut row = vec![0.0f32; 37];
        row[30] = 2.0;
        row[5] = 2.0;
        row[36] = 1.0;
        assert_eq!(argmax(&row), 5);
        row[36] = 3.0;
        assert_eq!(argmax(&row), 36);
        row[0] = f32::NAN;
        row[1] = 3.0;
        assert_eq!(argmax(&row), 1);
        assert_eq!(argmax(&[f32::NAN; 9]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[1.0, f32::INFINITY, 2.0]), 1);
    }

    #[test]
    fn sum_exp_and_max_agree_with_scalar_loops() {
        let row: Vec<f32> = (0..1003)
            .map(|i| ((i * 31 % 97) as f32 - 60.0) * 0.25)
            .collect();
        let m = max(&row);
        assert_eq!(m, row.iter().cloned().fold(f32::MIN, f32::max));
        let want: f64 = row.iter().map(|&x| ((x - m) as f64 * 0.5).exp()).sum();
        assert!((sum_exp(&row, m, 0.5) - want).abs() / want < 1e-6);
    }
}
