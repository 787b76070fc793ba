//! 1-D pooling of a score row, exactly as PyTorch's `max_pool1d` / `avg_pool1d` with stride 1 and
//! padding `kernel / 2` (SnapKV §3.3 "clustering via pooling"; kvpress `SnapKVPress.score`).
//!
//! Knows nothing of attention or selection: a row in, a row of the same length out.

/// How neighbouring scores are pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// `max_pool1d`: padding never wins (it is −∞).
    Max,
    /// `avg_pool1d` with PyTorch's default `count_include_pad=True`: every window divides by the
    /// kernel size, padding counting as zeros (what SnapKV and kvpress use).
    Avg,
}

impl Pool {
    /// Every pooling kind, in the order listings show them.
    pub const ALL: [Pool; 2] = [Pool::Max, Pool::Avg];

    /// The kind's name, as request bodies spell it (`max`, `avg`).
    pub const fn name(self) -> &'static str {
        match self {
            Pool::Max => "max",
            Pool::Avg => "avg",
        }
    }
}

impl std::str::FromStr for Pool {
    type Err = crate::error::EngineError;

    /// A pooling kind by its [`name`](Pool::name); the error lists the names.
    fn from_str(name: &str) -> crate::error::Result<Self> {
        Pool::ALL
            .into_iter()
            .find(|pool| pool.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Pool::ALL.iter().map(|p| p.name()).collect();
                crate::error::EngineError::InvalidParameter {
                    field: "eviction.pool",
                    message: format!("must be one of {}, got `{name}`", names.join(", ")),
                }
            })
    }
}

/// A pooling kind with its (odd) kernel size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pooling {
    pub pool: Pool,
    pub kernel: usize,
}

/// Pools `input` into `out` (same length). The caller owes an odd, non-zero kernel (validated in
/// [`super::EvictionPolicy::validate`]) and equal lengths.
pub fn pool1d(input: &[f32], pooling: Pooling, out: &mut [f32]) {
    match pooling.pool {
        Pool::Max => max_pool1d(input, pooling.kernel, out),
        Pool::Avg => avg_pool1d(input, pooling.kernel, true, out),
    }
}

/// PyTorch `max_pool1d(kernel, stride=1, padding=kernel/2)`.
pub fn max_pool1d(input: &[f32], kernel: usize, out: &mut [f32]) {
    assert_window(input, kernel, out);
    let half = kernel / 2;
    for (i, o) in out.iter_mut().enumerate() {
        let (lo, hi) = (i.saturating_sub(half), (i + half + 1).min(input.len()));
        *o = input[lo..hi]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
    }
}

/// PyTorch `avg_pool1d(kernel, stride=1, padding=kernel/2, count_include_pad)`: with
/// `count_include_pad` every window divides by `kernel`; without, by its number of real entries.
pub fn avg_pool1d(input: &[f32], kernel: usize, count_include_pad: bool, out: &mut [f32]) {
    assert_window(input, kernel, out);
    let half = kernel / 2;
    for (i, o) in out.iter_mut().enumerate() {
        let (lo, hi) = (i.saturating_sub(half), (i + half + 1).min(input.len()));
        let sum: f32 = input[lo..hi].iter().sum();
        let count = if count_include_pad { kernel } else { hi - lo };
        *o = sum / count as f32;
    }
}

fn assert_window(input: &[f32], kernel: usize, out: &[f32]) {
    assert!(
        !kernel.is_multiple_of(2),
        "pooling kernel must be odd (validated policy), got {kernel}"
    );
    assert_eq!(input.len(), out.len(), "pooling keeps the row length");
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn pool_names_round_trip_and_an_unknown_one_lists_them() {
        for pool in Pool::ALL {
            assert_eq!(pool.name().parse::<Pool>().unwrap(), pool);
        }
        let error = "mean".parse::<Pool>().unwrap_err().to_string();
        assert!(
            error.contains("max, avg") && error.contains("`mean`"),
            "{error}"
        );
    }
}
