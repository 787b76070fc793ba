//! The float64 attention reference of the attention kernel tests.

/// f64 attention of one head's query over the attended keys and values.
pub fn attention_reference(
    q: &[f32],
    keys: &[Vec<f64>],
    values: &[Vec<f64>],
    scale: f64,
) -> Vec<f64> {
    let d = q.len();
    if keys.is_empty() {
        return vec![0.0; d];
    }
    let scores: Vec<f64> = keys
        .iter()
        .map(|k| {
            k.iter()
                .zip(q)
                .map(|(&k, &q)| k * f64::from(q))
                .sum::<f64>()
                * scale
        })
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    (0..d)
        .map(|i| {
            weights
                .iter()
                .zip(values)
                .map(|(w, v)| w * v[i])
                .sum::<f64>()
                / total
        })
        .collect()
}
