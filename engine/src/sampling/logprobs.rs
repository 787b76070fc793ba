//! Log probabilities reported to the client, always of the model's raw distribution
//! (`log_softmax` of the unprocessed logits), as vLLM's default `logprobs_mode`: penalties,
//! temperature and filters change what is drawn, not what is reported.
//!
//! They are computed only when a request asks for them (`logprobs: Some(_)`): the log-sum-exp
//! costs an exponential per vocabulary entry, which greedy decoding otherwise never pays. The top
//! `n <= 20` come from one pass with a bounded insertion list.

use super::kernels;

/// One token and its log probability under the raw model distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprob {
    /// Vocabulary id.
    pub token_id: u32,
    /// `log_softmax(raw logits)[token_id]`.
    pub logprob: f32,
}

/// `log(sum(exp(row)))`; NaN entries count as `-inf`. A row with no finite entry gives a
/// non-finite result.
pub fn log_sum_exp(row: &[f32]) -> f32 {
    let max = kernels::max(row);
    if !max.is_finite() {
        return max;
    }
    max + kernels::sum_exp(row, max, 1.0).ln() as f32
}

/// The `n` most likely tokens of `row`, most likely first (ties: lowest id first), as log
/// probabilities given the row's `log_sum_exp`. `n == 0` returns an empty list without allocating.
pub(crate) fn top_n(row: &[f32], n: usize, log_sum_exp: f32) -> Vec<TokenLogprob> {
    let n = n.min(row.len());
    if n == 0 {
        return Vec::new();
    }
    let mut best: Vec<TokenLogprob> = Vec::with_capacity(n + 1);
    for (id, &x) in row.iter().enumerate() {
        if x.is_nan() || (best.len() == n && x <= best[n - 1].logprob) {
            continue;
        }
        let at = best.partition_point(|b| b.logprob >= x);
        best.insert(
            at,
            TokenLogprob {
                token_id: id as u32,
                logprob: x,
            },
        );
        best.truncate(n);
    }
    for b in &mut best {
        b.logprob -= log_sum_exp;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_log_softmax(row: &[f32]) -> Vec<f64> {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        row.iter().map(|&x| x as f64 - lse).collect()
    }

    #[test]
    fn log_sum_exp_matches_the_f64_reference() {
        let row: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
            .collect();
        let expected = reference_log_softmax(&row);
        let lse = log_sum_exp(&row);
        for (id, &x) in row.iter().enumerate() {
            assert!((expected[id] - (x - lse) as f64).abs() < 1e-5);
        }
    }

    #[test]
    fn log_sum_exp_ignores_nan_and_negative_infinity() {
        let row = [1.0, f32::NAN, 3.0, 3.0, f32::NEG_INFINITY];
        let expected = (1.0f32.exp() + 2.0 * 3.0f32.exp()).ln();
        assert!((log_sum_exp(&row) - expected).abs() < 1e-6);
    }

    #[test]
    fn top_n_is_sorted_descending_with_ties_by_id() {
        let row = [0.5, 2.0, -1.0, 2.0, 1.0, f32::NAN];
        let lse = log_sum_exp(&row);
        let top = top_n(&row, 3, lse);
        let ids: Vec<u32> = top.iter().map(|t| t.token_id).collect();
        assert_eq!(ids, vec![1, 3, 4]);
        assert!(top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!((top[2].logprob - (1.0 - lse)).abs() < 1e-6);
        assert!(top_n(&row, 0, lse).is_empty());
        assert_eq!(top_n(&row[..2], 20, lse).len(), 2);
    }
}
