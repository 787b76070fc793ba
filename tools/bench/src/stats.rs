//! Latency statistics of a benchmark run: percentiles, summaries, TPOT, goodput and
//! peak concurrency, computed from per-request measurements after the run.
//!
//! Definitions follow `vllm bench serve` so numbers compare across engines:
//! TPOT = (E2E − TTFT) / (output tokens − 1); ITL = gaps between streamed chunks;
//! goodput (DistServe) = requests meeting every SLO, per second of the run.
//! Pure functions only; times are seconds in, milliseconds out where noted.

use serde::Serialize;

/// The `q`-th percentile (0..=100) with linear interpolation between closest ranks,
/// as `numpy.percentile(xs, q)` does by default. `None` for an empty sample.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    debug_assert!(
        sorted.windows(2).all(|w| w[0] <= w[1]),
        "input must be sorted"
    );
    let last = sorted.len().checked_sub(1)?;
    let rank = (q / 100.0).clamp(0.0, 1.0) * last as f64;
    let low = rank.floor() as usize;
    let high = rank.ceil() as usize;
    let frac = rank - low as f64;
    Some(sorted[low] + (sorted[high] - sorted[low]) * frac)
}

/// Mean, spread and tail of one latency metric, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean_ms: f64,
    pub std_ms: f64,
    pub min_ms: f64,
    pub p25_ms: f64,
    pub median_ms: f64,
    pub p75_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Summarises samples given in seconds; `None` when there are none. The standard
    /// deviation is the population one (numpy's default `ddof=0`).
    pub fn from_secs(samples_secs: &[f64]) -> Option<Self> {
        let mut ms: Vec<f64> = samples_secs.iter().map(|s| s * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let count = ms.len();
        let mean_ms = ms.iter().sum::<f64>() / count as f64;
        let var = ms.iter().map(|x| (x - mean_ms).powi(2)).sum::<f64>() / count as f64;
        Some(Self {
            count,
            mean_ms,
            std_ms: var.sqrt(),
            min_ms: *ms.first()?,
            p25_ms: percentile(&ms, 25.0)?,
            median_ms: percentile(&ms, 50.0)?,
            p75_ms: percentile(&ms, 75.0)?,
            p90_ms: percentile(&ms, 90.0)?,
            p95_ms: percentile(&ms, 95.0)?,
            p99_ms: percentile(&ms, 99.0)?,
            max_ms: *ms.last()?,
        })
    }
}

/// Spread of per-request token counts (prompt or output lengths), so a report shows the
/// lengths that were actually served, not only the ones asked for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Lengths {
    pub min: u64,
    pub mean: f64,
    pub median: f64,
    pub max: u64,
}

impl Lengths {
    /// `None` for no requests.
    pub fn from_counts(counts: &[u64]) -> Option<Self> {
        let mut sorted: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            min: *counts.iter().min()?,
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            median: percentile(&sorted, 50.0)?,
            max: *counts.iter().max()?,
        })
    }
}

/// Time per output token after the first: `(e2e − ttft) / (tokens − 1)`. `None` for
/// outputs of fewer than two tokens, which have no decode phase to measure.
pub fn time_per_output_token_secs(
    e2e_secs: f64,
    ttft_secs: f64,
    output_tokens: usize,
) -> Option<f64> {
    (output_tokens > 1).then(|| (e2e_secs - ttft_secs) / (output_tokens - 1) as f64)
}

/// Service-level objectives a request must meet, all at once, to count towards goodput
/// (`--slo ttft:MS,tpot:MS,e2el:MS`). An unset bound is not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

/// A malformed `--slo` value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SloError {
    #[error("--slo entry {0:?} is not NAME:MILLISECONDS")]
    Malformed(String),
    #[error("--slo metric {0:?} is unknown (expected ttft, tpot or e2el)")]
    UnknownMetric(String),
    #[error("--slo bound for {metric} must be a positive number of ms, got {value:?}")]
    Bound { metric: String, value: String },
}

impl std::str::FromStr for Slo {
    type Err = SloError;

    /// Parses `ttft:500,tpot:50` (commas or spaces between entries).
    fn from_str(spec: &str) -> Result<Self, SloError> {
        let mut slo = Slo::default();
        for entry in spec.split([',', ' ']).filter(|e| !e.is_empty()) {
            let (metric, value) = entry
                .split_once(':')
                .ok_or_else(|| SloError::Malformed(entry.to_owned()))?;
            let bound = value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| SloError::Bound {
                    metric: metric.to_owned(),
                    value: value.to_owned(),
                })?;
            match metric {
                "ttft" => slo.ttft_ms = Some(bound),
                "tpot" => slo.tpot_ms = Some(bound),
                "e2el" => slo.e2el_ms = Some(bound),
                other => return Err(SloError::UnknownMetric(other.to_owned())),
            }
        }
        Ok(slo)
    }
}

/// One successful request's latencies, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestLatency {
    pub ttft_secs: f64,
    pub tpot_secs: Option<f64>,
    pub e2e_secs: f64,
}

impl Slo {
    /// Whether a request meets every set bound. A request with no TPOT (one output
    /// token) meets any TPOT bound, as in vLLM.
    pub fn is_met_by(&self, r: &RequestLatency) -> bool {
        let within = |bound_ms: Option<f64>, secs: Option<f64>| match (bound_ms, secs) {
            (Some(bound), Some(secs)) => secs * 1e3 <= bound,
            _ => true,
        };
        within(self.ttft_ms, Some(r.ttft_secs))
            && within(self.tpot_ms, r.tpot_secs)
            && within(self.e2el_ms, Some(r.e2e_secs))
    }
}

/// Goodput of a run: how many requests met all SLOs, as a count, a fraction of all
/// requests sent (failures count as misses) and a rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Goodput {
    pub good_requests: usize,
    pub fraction: f64,
    pub requests_per_sec: f64,
}

/// Applies `slo` to the successful requests of a run of `total_requests` that took
/// `duration_secs`.
pub fn goodput(
    slo: &Slo,
    ok: &[RequestLatency],
    total_requests: usize,
    duration_secs: f64,
) -> Goodput {
    let good_requests = ok.iter().filter(|r| slo.is_met_by(r)).count();
    Goodput {
        good_requests,
        fraction: ratio(good_requests as f64, total_requests as f64),
        requests_per_sec: ratio(good_requests as f64, duration_secs),
    }
}

/// `num / den`, or 0 when the denominator is not positive (an empty or instant run).
pub fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 { num / den } else { 0.0 }
}

/// Largest number of requests in flight at once, from `(start, end)` times. A request
/// ending exactly when another starts does not overlap it.
pub fn peak_concurrency(intervals: &[(f64, f64)]) -> usize {
    let mut events: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // Ends sort before starts at the same instant.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    peak as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], [0,50,90,99,100]) = [1, 2.5, 3.7, 3.97, 4]
        let got: Vec<f64> = [0.0, 50.0, 90.0, 99.0, 100.0]
            .iter()
            .map(|&q| percentile(&xs, q).unwrap())
            .collect();
        let want = [1.0, 2.5, 3.7, 3.97, 4.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn percentiles_of_one_sample_are_that_sample_and_of_none_are_none() {
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summaries_report_milliseconds_and_population_std() {
        let s = Summary::from_secs(&[0.004, 0.001, 0.003, 0.002]).unwrap();
        assert_eq!(s.count, 4);
        assert!((s.mean_ms - 2.5).abs() < 1e-9);
        assert!((s.median_ms - 2.5).abs() < 1e-9);
        assert!((s.std_ms - 1.25f64.sqrt()).abs() < 1e-9);
        assert!((s.max_ms - 4.0).abs() < 1e-9);
        assert!((s.min_ms - 1.0).abs() < 1e-9);
        // numpy.percentile([1,2,3,4], [25,75,95]) = [1.75, 3.25, 3.85]
        assert!((s.p25_ms - 1.75).abs() < 1e-9);
        assert!((s.p75_ms - 3.25).abs() < 1e-9);
        assert!((s.p95_ms - 3.85).abs() < 1e-9);
        assert_eq!(Summary::from_secs(&[]), None);
    }

    #[test]
    fn lengths_give_min_mean_median_and_max() {
        let l = Lengths::from_counts(&[10, 40, 20, 30]).unwrap();
        assert_eq!((l.min, l.max), (10, 40));
        assert!((l.mean - 25.0).abs() < 1e-12);
        assert!((l.median - 25.0).abs() < 1e-12);
        assert_eq!(Lengths::from_counts(&[]), None);
    }

    #[test]
    fn tpot_excludes_the_first_token() {
        assert_eq!(time_per_output_token_secs(1.1, 0.1, 11), Some(0.1));
        assert_eq!(time_per_output_token_secs(0.5, 0.5, 1), None);
    }

    #[test]
    fn slo_specs_parse_and_name_their_mistakes() {
        let slo: Slo = "ttft:500,tpot:50".parse().unwrap();
        assert_eq!(
            slo,
            Slo {
                ttft_ms: Some(500.0),
                tpot_ms: Some(50.0),
                e2el_ms: None
            }
        );
        assert_eq!(
            "ttft".parse::<Slo>(),
            Err(SloError::Malformed("ttft".into()))
        );
        assert_eq!(
            "itl:5".parse::<Slo>(),
            Err(SloError::UnknownMetric("itl".into()))
        );
        assert!(matches!(
            "tpot:-1".parse::<Slo>(),
            Err(SloError::Bound { .. })
        ));
    }

    #[test]
    fn goodput_counts_requests_meeting_every_slo_over_all_sent() {
        let slo = Slo {
            ttft_ms: Some(100.0),
            tpot_ms: Some(10.0),
            e2el_ms: None,
        };
        let ok = [
            RequestLatency {
                ttft_secs: 0.05,
                tpot_secs: Some(0.005),
                e2e_secs: 1.0,
            },
            RequestLatency {
                ttft_secs: 0.20,
                tpot_secs: Some(0.005),
                e2e_secs: 1.0,
            },
            RequestLatency {
                ttft_secs: 0.05,
                tpot_secs: Some(0.020),
                e2e_secs: 1.0,
            },
            RequestLatency {
                ttft_secs: 0.05,
                tpot_secs: None,
                e2e_secs: 0.05,
            },
        ];
        // Five sent, one failed: two of five met both bounds.
        let g = goodput(&slo, &ok, 5, 2.0);
        assert_eq!(g.good_requests, 2);
        assert!((g.fraction - 0.4).abs() < 1e-12);
        assert!((g.requests_per_sec - 1.0).abs() < 1e-12);
    }

    #[test]
    fn peak_concurrency_counts_overlapping_requests_only() {
        assert_eq!(peak_concurrency(&[]), 0);
        assert_eq!(peak_concurrency(&[(0.0, 1.0), (1.0, 2.0)]), 1);
        assert_eq!(
            peak_concurrency(&[(0.0, 3.0), (1.0, 2.0), (1.5, 4.0), (3.5, 5.0)]),
            3
        );
    }
}
