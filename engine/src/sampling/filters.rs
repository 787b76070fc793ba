//! The warpers of one sampling step, on a reusable candidate list: temperature + softmax, top-k,
//! top-p, min-p, and the final draw.
//!
//! Each function keeps the semantics of the Hugging Face `transformers` warper of the same name
//! (`TopKLogitsWarper`, `TopPLogitsWarper`, `MinPLogitsWarper`, `min_tokens_to_keep = 1`), checked
//! against fixtures the reference produced. Filtered tokens are removed from the list rather than
//! set to `-inf`, so later steps touch only survivors.
//!
//! Costs for a vocabulary of `V`: top-k is one `select_nth_unstable` (O(V)); top-p partitions by
//! falling probability thresholds and sorts only the tokens above them until the mass is reached,
//! so a peaked distribution costs a few O(V) passes and only a flat one degrades towards a full
//! sort; min-p is one pass.

use std::cmp::Ordering;

use super::kernels;

/// One token still in the running. `weight` is a logit before [`softmax`] and an unnormalised
/// probability after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    pub(crate) id: u32,
    pub(crate) weight: f32,
}

/// Top-p sorts, round by round, the tokens within this factor of the previous round's threshold.
const TOP_P_THRESHOLD_STEP: f32 = 16.0;

/// Most likely first; equal weights by ascending id so every order is deterministic.
fn descending(a: &Candidate, b: &Candidate) -> Ordering {
    b.weight.total_cmp(&a.weight).then(a.id.cmp(&b.id))
}

/// Refills `out` with the whole vocabulary in id order. NaN logits become `-inf` (never chosen).
pub(crate) fn fill(out: &mut Vec<Candidate>, logits: &[f32]) {
    out.clear();
    out.extend(logits.iter().enumerate().map(|(id, &x)| Candidate {
        id: id as u32,
        weight: if x.is_nan() { f32::NEG_INFINITY } else { x },
    }));
}

/// HF top-k: keeps every candidate whose logit is at least the `k`-th largest (ties at the
/// boundary survive, so more than `k` may remain). `k == 0` or `k >= len` keeps all.
pub(crate) fn top_k(candidates: &mut Vec<Candidate>, k: usize) {
    if k == 0 || k >= candidates.len() {
        return;
    }
    candidates.select_nth_unstable_by(k - 1, descending);
    let threshold = candidates[k - 1].weight;
    let mut end = k;
    for i in k..candidates.len() {
        if candidates[i].weight == threshold {
            candidates.swap(end, i);
            end += 1;
        }
    }
    candidates.truncate(end);
}

/// Turns logits into unnormalised probabilities `exp((logit - max) / temperature)` and returns
/// their sum (f64), the normaliser every later step divides by. `temperature` must be `> 0`. A row
/// with no finite maximum degrades without NaN: `+inf` logits share the mass, and an all-`-inf` row
/// becomes uniform.
pub(crate) fn softmax(candidates: &mut [Candidate], temperature: f32) -> f64 {
    let max = candidates
        .iter()
        .fold(f32::NEG_INFINITY, |m, c| m.max(c.weight));
    if max == f32::INFINITY {
        for c in candidates.iter_mut() {
            c.weight = f32::from(c.weight == f32::INFINITY);
        }
    } else if max == f32::NEG_INFINITY {
        candidates.iter_mut().for_each(|c| c.weight = 1.0);
    } else {
        let inv_temperature = 1.0 / temperature;
        for c in candidates.iter_mut() {
            c.weight = kernels::exp_nonpositive((c.weight - max) * inv_temperature);
        }
    }
    total(candidates)
}

/// The sum of the weights, in f64.
pub(crate) fn total(candidates: &[Candidate]) -> f64 {
    candidates.iter().map(|c| c.weight as f64).sum()
}

/// Scales weights to sum to one.
pub(crate) fn normalize(candidates: &mut [Candidate]) {
    let sum = total(candidates);
    if sum > 0.0 {
        for c in candidates.iter_mut() {
            c.weight = (c.weight as f64 / sum) as f32;
        }
    }
}

/// HF top-p on weights summing to `total`: keeps a token when the mass of the tokens more likely
/// than it is below `p` (HF's "ascending cumulative mass > 1 - p", vLLM's rule too); the most
/// likely token always survives. Leaves the survivors sorted most likely first. `p >= 1` keeps
/// all.
///
/// Sorts only what it must: each round moves the remaining tokens above a threshold (starting at
/// the top probability / [`TOP_P_THRESHOLD_STEP`], lowered by that factor each round) to the front
/// in one pass, sorts just those, and stops as soon as the mass reaches `p`.
pub(crate) fn top_p(candidates: &mut Vec<Candidate>, p: f32, total: f64) {
    if p >= 1.0 {
        return;
    }
    let p = p as f64 * total;
    let len = candidates.len();
    let max = candidates.iter().map(|c| c.weight).fold(0.0, f32::max);
    let mut threshold = max / TOP_P_THRESHOLD_STEP;
    let mut mass = 0.0f64;
    let mut sorted = 0;
    while sorted < len {
        let mut end = sorted;
        for i in sorted..len {
            if candidates[i].weight >= threshold {
                candidates.swap(end, i);
                end += 1;
            }
        }
        candidates[sorted..end].sort_unstable_by(descending);
        for i in sorted..end {
            if mass >= p {
                candidates.truncate(i);
                return;
            }
            mass += candidates[i].weight as f64;
        }
        sorted = end;
        // Below the smallest positive f32 the next round takes everything left (zeros included).
        threshold = if threshold > f32::MIN_POSITIVE {
            threshold / TOP_P_THRESHOLD_STEP
        } else {
            0.0
        };
    }
}

/// HF min-p: drops tokens whose probability is below `min_p` times the largest; the most likely
/// token always survives. Works on any positive weights (the ratio ignores normalisation).
pub(crate) fn min_p(candidates: &mut Vec<Candidate>, min_p: f32) {
    if min_p <= 0.0 {
        return;
    }
    let max = candidates.iter().map(|c| c.weight).fold(0.0, f32::max);
    let threshold = min_p * max;
    candidates.retain(|c| c.weight >= threshold);
}

/// Picks a candidate with probability proportional to its weight; `u` is uniform in `[0, 1)`.
/// Zero weights are never picked unless every weight is zero (then the first candidate).
pub(crate) fn draw(candidates: &[Candidate], u: f64) -> u32 {
    let target = u * total(candidates);
    let mut cumulative = 0.0f64;
    let mut last_positive = None;
    for c in candidates {
        if c.weight > 0.0 {
            cumulative += c.weight as f64;
            last_positive = Some(c.id);
            if cumulative > target {
                return c.id;
            }
        }
    }
    last_positive
        .or_else(|| candidates.first().map(|c| c.id))
        .expect("a sampling step always has at least one candidate; an empty vocabulary is a bug")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(logits: &[f32]) -> Vec<Candidate> {
        let mut out = Vec::new();
        fill(&mut out, logits);
        out
    }

    fn ids(c: &[Candidate]) -> Vec<u32> {
        let mut ids: Vec<u32> = c.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn top_k_keeps_the_k_largest_and_ties_at_the_boundary() {
        let mut c = candidates(&[1.0, 5.0, 3.0, 3.0, 0.0, 4.0]);
        top_k(&mut c, 3);
        assert_eq!(ids(&c), vec![1, 2, 3, 5]);
        let mut c = candidates(&[1.0, 5.0, 3.0]);
        top_k(&mut c, 0);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        let mut c = candidates(&[0.1, 0.4, 0.2, 0.3].map(f32::ln));
        let total = softmax(&mut c, 1.0);
        top_p(&mut c, 0.7, total);
        // 0.4 (before: 0) and 0.3 (before: 0.4) stay; 0.2 has 0.7 before it.
        assert_eq!(ids(&c), vec![1, 3]);
        let mut c = candidates(&[0.1, 0.4, 0.2, 0.3].map(f32::ln));
        let total = softmax(&mut c, 1.0);
        top_p(&mut c, 0.01, total);
        assert_eq!(ids(&c), vec![1]);
    }

    #[test]
    fn top_p_over_many_rounds_matches_a_full_sort() {
        let logits: Vec<f32> = (0..5000u32)
            .map(|i| ((i * 7919) % 5000) as f32 * 1e-3)
            .collect();
        let mut c = candidates(&logits);
        let total = softmax(&mut c, 1.0);
        let mut reference = c.clone();
        reference.sort_unstable_by(descending);
        let mut mass = 0.0f64;
        let keep = reference
            .iter()
            .take_while(|c| {
                let before = mass;
                mass += c.weight as f64;
                before < 0.99 * total
            })
            .count();
        top_p(&mut c, 0.99, total);
        let max = reference[0].weight;
        let first_round = reference
            .iter()
            .filter(|c| c.weight >= max / TOP_P_THRESHOLD_STEP);
        assert!(
            keep > first_round.count(),
            "the test must need more than one round"
        );
        assert_eq!(c, reference[..keep].to_vec());
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_top_probability() {
        let mut c = candidates(&[0.5, 0.3, 0.15, 0.05].map(f32::ln));
        softmax(&mut c, 1.0);
        min_p(&mut c, 0.25);
        assert_eq!(ids(&c), vec![0, 1, 2]);
        min_p(&mut c, 1.0);
        assert_eq!(ids(&c), vec![0]);
    }

    #[test]
    fn softmax_of_degenerate_rows_has_no_nan() {
        let mut c = candidates(&[f32::NEG_INFINITY, f32::NAN]);
        softmax(&mut c, 1.0);
        normalize(&mut c);
        assert_eq!(
            c.iter().map(|c| c.weight).collect::<Vec<_>>(),
            vec![0.5, 0.5]
        );
        let mut c = candidates(&[f32::INFINITY, 1.0]);
        softmax(&mut c, 0.5);
        assert_eq!(
            c.iter().map(|c| c.weight).collect::<Vec<_>>(),
            vec![1.0, 0.0]
        );
    }

    #[test]
    fn draw_never_picks_a_zero_weight_token() {
        let c = candidates(&[0.0, 1.0, 0.0, 2.0, 0.0]);
        for u in [0.0, 0.2, 1.0 / 3.0, 0.5, 0.999_999_999] {
            let id = draw(&c, u);
            assert!(id == 1 || id == 3, "u = {u} picked {id}");
        }
        assert_eq!(draw(&c, 0.0), 1);
        assert_eq!(draw(&c, 0.5), 3);
    }
}
