//! Branch-free loops over a whole logit row, written so the compiler vectorises them: argmax,
//! a sum of exponentials (through [`crate::math::exp_nonpositive`]), and the row maximum. A row is up to ~152K entries and is
//! walked once per sequence per step, so these dominate sampling's cost; `f32::exp` is a libm call
//! per element that no loop around it can vectorise.

pub(crate) use crate::math::exp_nonpositive;

/// Lanes processed side by side; independent accumulators let the compiler use vector registers
/// without reordering any single floating-point sum.
const LANES: usize = 8;

/// The index of the largest entry, lowest index among ties; NaN entries never win (a row of only
/// NaN gives 0). One pass.
pub fn argmax(row: &[f32]) -> u32 {
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
