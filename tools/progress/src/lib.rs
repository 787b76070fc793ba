//! Progress of the long jobs (benchmarks, training, evaluation): a bar on a terminal, and log lines
//! where there is none (a job under `nohup`, in CI or in a container writes its stderr to a file,
//! where a bar is hidden and a half-hour job would otherwise say nothing until it ends).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress of one job of a known number of steps; clones share it.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    /// Set when stderr is not a terminal: progress goes to the log every tenth of the job.
    log: Option<Arc<LogState>>,
}

struct LogState {
    label: String,
    /// Tenths of the job already logged.
    logged_tenths: AtomicU64,
}

impl LogState {
    /// Whether `position` of `len` steps completes a tenth of the job not yet logged (and from
    /// now on counts as logged).
    fn newly_completed(&self, position: u64, len: u64) -> bool {
        let tenths = completed_tenths(position, len);
        self.logged_tenths.fetch_max(tenths, Ordering::Relaxed) < tenths
    }
}

/// A bar of `len` steps on stderr when it is a terminal, so stdout stays the report; `{msg}`
/// shows what the job sets with `set_message` (e.g. the current loss). Otherwise an `INFO` log
/// line at every tenth of the job, with the message.
pub fn bar(label: &str, len: usize) -> Progress {
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}) {msg}",
    )
    .expect("the template is a valid constant");
    let bar = ProgressBar::new(len as u64)
        .with_style(style)
        .with_prefix(label.to_owned());
    let log = (!std::io::stderr().is_terminal()).then(|| {
        Arc::new(LogState {
            label: label.to_owned(),
            logged_tenths: AtomicU64::new(0),
        })
    });
    Progress { bar, log }
}

impl Progress {
    pub fn inc(&self, delta: u64) {
        self.bar.inc(delta);
        self.log_if_due();
    }

    pub fn set_position(&self, position: u64) {
        self.bar.set_position(position);
        self.log_if_due();
    }

    pub fn set_message(&self, message: String) {
        self.bar.set_message(message);
    }

    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }

    fn log_if_due(&self) {
        let Some(log) = &self.log else { return };
        let (position, len) = (self.bar.position(), self.bar.length().unwrap_or(0));
        if !log.newly_completed(position, len) {
            return;
        }
        let elapsed_seconds = format!("{:.0}", self.bar.elapsed().as_secs_f64());
        let message = self.bar.message();
        if message.is_empty() {
            tracing::info!(job = %log.label, done = position, total = len, elapsed_seconds, "progress");
        } else {
            tracing::info!(job = %log.label, done = position, total = len, elapsed_seconds, status = %message, "progress");
        }
    }
}

/// Whole tenths of a job of `len` steps done after `position` steps (10 when done; 0 for an
/// empty job, which has nothing to report).
fn completed_tenths(position: u64, len: u64) -> u64 {
    match len {
        0 => 0,
        _ => position.min(len) * 10 / len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_reported_once_per_completed_tenth() {
        let log = LogState {
            label: "eval".into(),
            logged_tenths: AtomicU64::new(0),
        };
        let reported: Vec<u64> = (0..=25).filter(|&p| log.newly_completed(p, 25)).collect();
        // 25 steps: tenths complete at 3, 5, 8, 10, 13, 15, 18, 20, 23 and 25
        assert_eq!(reported, [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]);
        // a position seen again, or going back (set_position on resume), logs nothing new
        assert!(!log.newly_completed(25, 25));
        assert!(!log.newly_completed(12, 25));
        assert_eq!(completed_tenths(3, 1000), 0);
        assert_eq!(completed_tenths(7, 5), 10);
        assert_eq!(completed_tenths(0, 0), 0);
    }
}
