//! The periodic engine summary in the log, like vLLM's: while the engine has work, one INFO line
//! per interval with the running and waiting requests, the KV-cache usage and the prompt and
//! generation throughput over the interval. It is a [`StepObserver`], so it sees only steps the
//! engine ran (none while idle, none of the warm-up); it reads the clock once per step and logs at
//! most once per interval.

use std::time::{Duration, Instant};

use crate::engine_loop::{EngineCore, StepObserver, StepReport};

/// Logs an [`Interval`]'s [`Summary`] every `every`.
pub struct StatsLog {
    every: Duration,
    interval: Interval,
    /// The engine ran out of work at the last step: the next step opens a fresh interval, so
    /// idle time does not dilute the rates.
    idle: bool,
}

impl StatsLog {
    /// A log line every `every`; `None` when `every` is zero (the summary is off).
    pub fn every(every: Duration) -> Option<Self> {
        (!every.is_zero()).then(|| Self {
            every,
            interval: Interval::starting(Instant::now()),
            idle: true,
        })
    }
}

impl StepObserver for StatsLog {
    fn on_step(&mut self, core: &EngineCore, report: &StepReport) {
        let now = Instant::now();
        if self.idle {
            self.interval = Interval::starting(now);
        }
        self.idle = !core.has_work();
        self.interval.add(report);
        if now.duration_since(self.interval.start) < self.every {
            return;
        }
        let scheduler = core.scheduler();
        let summary = self.interval.summary(
            now,
            Load {
                running: scheduler.num_running(),
                waiting: scheduler.num_waiting(),
                kv_blocks_used: scheduler.allocator().num_used(),
                kv_blocks_total: core.backend().geometry().num_blocks,
            },
        );
        tracing::info!(
            running = summary.running,
            waiting = summary.waiting,
            kv_usage_percent = format_args!("{:.1}", summary.kv_usage_percent),
            prompt_tokens_per_sec = format_args!("{:.1}", summary.prompt_tokens_per_sec),
            generation_tokens_per_sec = format_args!("{:.1}", summary.generation_tokens_per_sec),
            "engine"
        );
        self.interval = Interval::starting(now);
    }
}

/// The engine's load at the end of an interval.
#[derive(Debug, Clone, Copy)]
struct Load {
    running: usize,
    waiting: usize,
    kv_blocks_used: usize,
    kv_blocks_total: usize,
}

/// Tokens counted since `start`.
#[derive(Debug, Clone, Copy)]
struct Interval {
    start: Instant,
    prompt_tokens: usize,
    generation_tokens: usize,
}

/// What one summary line says.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Summary {
    running: usize,
    waiting: usize,
    kv_usage_percent: f64,
    prompt_tokens_per_sec: f64,
    generation_tokens_per_sec: f64,
}

impl Interval {
    fn starting(start: Instant) -> Self {
        Self {
            start,
            prompt_tokens: 0,
            generation_tokens: 0,
        }
    }

    /// Counts a step's prefilled and sampled tokens.
    fn add(&mut self, report: &StepReport) {
        self.prompt_tokens += report.num_prefill_tokens;
        self.generation_tokens += report.num_sampled;
    }

    /// The summary of the interval ending at `now` (rates are 0 for an empty interval).
    fn summary(&self, now: Instant, load: Load) -> Summary {
        let secs = now.duration_since(self.start).as_secs_f64();
        let rate = |tokens: usize| {
            if secs > 0.0 {
                tokens as f64 / secs
            } else {
                0.0
            }
        };
        Summary {
            running: load.running,
            waiting: load.waiting,
            kv_usage_percent: 100.0 * load.kv_blocks_used as f64 / load.kv_blocks_total as f64,
            prompt_tokens_per_sec: rate(self.prompt_tokens),
            generation_tokens_per_sec: rate(self.generation_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(prefill: usize, sampled: usize) -> StepReport {
        StepReport {
            num_prefill_tokens: prefill,
            num_sampled: sampled,
            ..StepReport::default()
        }
    }

    #[test]
    fn rates_are_the_interval_tokens_over_its_seconds() {
        let start = Instant::now();
        let mut interval = Interval::starting(start);
        interval.add(&step(300, 2));
        interval.add(&step(0, 4));
        interval.add(&step(100, 4));
        let load = Load {
            running: 3,
            waiting: 1,
            kv_blocks_used: 25,
            kv_blocks_total: 200,
        };
        let summary = interval.summary(start + Duration::from_secs(4), load);
        assert_eq!(
            summary,
            Summary {
                running: 3,
                waiting: 1,
                kv_usage_percent: 12.5,
                prompt_tokens_per_sec: 100.0,
                generation_tokens_per_sec: 2.5,
            }
        );
    }

    #[test]
    fn an_empty_interval_has_zero_rates() {
        let start = Instant::now();
        let load = Load {
            running: 0,
            waiting: 0,
            kv_blocks_used: 0,
            kv_blocks_total: 8,
        };
        let summary = Interval::starting(start).summary(start, load);
        assert_eq!(summary.prompt_tokens_per_sec, 0.0);
        assert_eq!(summary.generation_tokens_per_sec, 0.0);
        assert_eq!(summary.kv_usage_percent, 0.0);
    }

    #[test]
    fn a_zero_interval_turns_the_summary_off() {
        assert!(StatsLog::every(Duration::ZERO).is_none());
        assert!(StatsLog::every(Duration::from_secs(10)).is_some());
    }
}
