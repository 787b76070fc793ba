//! When each benchmark request is sent: the arrival process of `vllm bench serve`.
//!
//! An infinite rate sends everything at t = 0. A finite rate draws inter-arrival gaps from
//! a Gamma distribution with shape `burstiness` and mean `1 / rate`: shape 1 is the
//! exponential distribution (a Poisson process); lower shapes are burstier (coefficient of
//! variation `1 / sqrt(shape)`), higher ones more regular. This module only computes
//! offsets; it sends nothing and reads no clock.

use rand::Rng;
use rand_distr::{Distribution, Exp, Gamma};

/// A bad `--request-rate` or `--burstiness`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("--request-rate must be positive (or inf), got {0}")]
    Rate(f64),
    #[error("--burstiness must be positive and finite, got {0}")]
    Burstiness(f64),
}

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArrivalProcess {
    /// Every request at t = 0 (`--request-rate inf`).
    AllAtOnce,
    /// Exponential gaps with mean `1 / rate_per_sec`.
    Poisson { rate_per_sec: f64 },
    /// Gamma gaps with the given shape and mean `1 / rate_per_sec`.
    Gamma { rate_per_sec: f64, shape: f64 },
}

impl ArrivalProcess {
    /// Resolves the CLI pair; burstiness 1 is Poisson. Fails on a non-positive rate or
    /// burstiness, naming the flag and the value.
    pub fn new(rate_per_sec: f64, burstiness: f64) -> Result<Self, ScheduleError> {
        if rate_per_sec.is_nan() || rate_per_sec <= 0.0 {
            return Err(ScheduleError::Rate(rate_per_sec));
        }
        if !burstiness.is_finite() || burstiness <= 0.0 {
            return Err(ScheduleError::Burstiness(burstiness));
        }
        Ok(if rate_per_sec.is_infinite() {
            Self::AllAtOnce
        } else if burstiness == 1.0 {
            Self::Poisson { rate_per_sec }
        } else {
            Self::Gamma {
                rate_per_sec,
                shape: burstiness,
            }
        })
    }

    /// Send times in seconds from the start of the run, one per request, non-decreasing;
    /// the first request goes at t = 0.
    pub fn offsets_secs(&self, num_requests: usize, rng: &mut impl Rng) -> Vec<f64> {
        let gaps: Vec<f64> = match *self {
            Self::AllAtOnce => vec![0.0; num_requests.saturating_sub(1)],
            Self::Poisson { rate_per_sec } => {
                let exp = Exp::new(rate_per_sec).expect("rate was validated positive");
                exp.sample_iter(&mut *rng)
                    .take(num_requests.saturating_sub(1))
                    .collect()
            }
            Self::Gamma {
                rate_per_sec,
                shape,
            } => {
                let gamma = Gamma::new(shape, 1.0 / (rate_per_sec * shape))
                    .expect("shape and rate were validated positive");
                gamma
                    .sample_iter(&mut *rng)
                    .take(num_requests.saturating_sub(1))
                    .collect()
            }
        };
        let mut offsets = Vec::with_capacity(num_requests);
        let mut t = 0.0;
        if num_requests > 0 {
            offsets.push(t);
        }
        for gap in gaps {
            t += gap;
            offsets.push(t);
        }
        offsets
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn gaps(process: ArrivalProcess, n: usize) -> Vec<f64> {
        let offsets = process.offsets_secs(n, &mut StdRng::seed_from_u64(7));
        offsets.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn mean_and_cv(xs: &[f64]) -> (f64, f64) {
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn poisson_intervals_have_the_requested_mean_rate() {
        let process = ArrivalProcess::new(4.0, 1.0).unwrap();
        assert_eq!(process, ArrivalProcess::Poisson { rate_per_sec: 4.0 });
        let (mean, cv) = mean_and_cv(&gaps(process, 20_001));
        assert!((mean - 0.25).abs() < 0.01, "mean gap {mean}");
        assert!(
            (cv - 1.0).abs() < 0.05,
            "exponential gaps have cv 1, got {cv}"
        );
    }

    #[test]
    fn lower_burstiness_gives_burstier_gaps_at_the_same_rate() {
        let bursty = mean_and_cv(&gaps(ArrivalProcess::new(2.0, 0.25).unwrap(), 20_001));
        let regular = mean_and_cv(&gaps(ArrivalProcess::new(2.0, 4.0).unwrap(), 20_001));
        for (mean, _) in [bursty, regular] {
            assert!((mean - 0.5).abs() < 0.03, "mean gap {mean}");
        }
        assert!(
            (bursty.1 - 2.0).abs() < 0.15,
            "cv 1/sqrt(0.25) = 2, got {}",
            bursty.1
        );
        assert!(
            (regular.1 - 0.5).abs() < 0.05,
            "cv 1/sqrt(4) = 0.5, got {}",
            regular.1
        );
    }

    #[test]
    fn an_infinite_rate_sends_everything_at_time_zero() {
        let process = ArrivalProcess::new(f64::INFINITY, 1.0).unwrap();
        let offsets = process.offsets_secs(5, &mut StdRng::seed_from_u64(0));
        assert_eq!(offsets, vec![0.0; 5]);
    }

    #[test]
    fn offsets_start_at_zero_and_never_decrease() {
        let process = ArrivalProcess::new(10.0, 0.5).unwrap();
        let offsets = process.offsets_secs(100, &mut StdRng::seed_from_u64(3));
        assert_eq!(offsets.len(), 100);
        assert_eq!(offsets[0], 0.0);
        assert!(offsets.windows(2).all(|w| w[1] >= w[0]));
        assert!(
            process
                .offsets_secs(0, &mut StdRng::seed_from_u64(3))
                .is_empty()
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let process = ArrivalProcess::new(3.0, 1.0).unwrap();
        let a = process.offsets_secs(50, &mut StdRng::seed_from_u64(11));
        let b = process.offsets_secs(50, &mut StdRng::seed_from_u64(11));
        assert_eq!(a, b);
    }

    #[test]
    fn non_positive_rates_and_burstiness_are_rejected() {
        assert_eq!(ArrivalProcess::new(0.0, 1.0), Err(ScheduleError::Rate(0.0)));
        assert_eq!(
            ArrivalProcess::new(1.0, -1.0),
            Err(ScheduleError::Burstiness(-1.0))
        );
        assert!(ArrivalProcess::new(f64::NAN, 1.0).is_err());
    }
}
