//! PyramidKV's per-layer budgets (Cai et al. 2024, §3 "pyramidal information funneling"), in the
//! kvpress 0.5.5 variant (`PyramidKVPress.get_layer_budget`, itself from KVCache-Factory).
//!
//! Pure arithmetic over budgets; knows nothing of scores.

/// Per-layer budgets (window included) for `num_layers` layers that decrease linearly with depth
/// and average the uniform `budget`.
///
/// With `B = budget`, `w = window`, `n = prompt_len`:
/// `min = B / β`, `max = 2B − min`; if `max ≥ n − w` then `max = n − w`, `min = 2B − max`.
/// If not `n ≥ max ≥ min ≥ w`, every layer gets `B` (kvpress falls back to SnapKV's uniform
/// budget). Otherwise layer `l` gets `round(max − l·(max − min)/(L − 1))`, rounding half to even
/// as Python's `round`. kvpress states the budget as `n·(1 − ratio)`, which is `B` here.
///
/// Consequence of the `min ≥ w` condition (kvpress's, absent from KVCache-Factory, which adds the
/// window on top of `max − l·steps` instead): unless `B ≥ β·w` or the prompt is short enough for
/// `max` to clamp (`2B − B/β ≥ n − w`), the pyramid is flat. With the defaults (β = 20, w = 32),
/// budgets below 640 on long prompts behave exactly as SnapKV.
///
/// The sum is `L·B` whenever the pyramid applies: layers `l` and `L−1−l` pair to `2B`, and
/// half-to-even rounding sends the two halves of such a pair opposite ways.
pub fn pyramid_budgets(
    budget: usize,
    window: usize,
    beta: usize,
    prompt_len: usize,
    num_layers: usize,
) -> Vec<usize> {
    let (b, w, n) = (budget as f64, window as f64, prompt_len as f64);
    let mut min = b / beta as f64;
    let mut max = 2.0 * b - min;
    if max >= n - w {
        max = n - w;
        min = 2.0 * b - max;
    }
    if !(n >= max && max >= min && min >= w) {
        return vec![budget.max(1); num_layers];
    }
    let steps = if num_layers > 1 {
        (max - min) / (num_layers - 1) as f64
    } else {
        0.0
    };
    (0..num_layers)
        .map(|layer| (max - layer as f64 * steps).round_ties_even() as usize)
        .collect()
}
