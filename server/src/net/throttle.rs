//! At most one log line per interval for an event that can repeat thousands of times a second
//! (a failed accept while out of file descriptors, a full port), each line with the count since
//! the last.

use std::time::{Duration, Instant};

/// Counts events and says when one should be logged.
pub struct Throttle {
    interval: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// Counts an event at `now`; `Some(events since the last line, this one included)` when it
    /// is to be logged: the first event, then the first one an interval or more after the last
    /// line.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        let due = self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= self.interval);
        due.then(|| {
            self.last_logged = Some(now);
            std::mem::take(&mut self.unlogged)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_event_then_once_per_interval_with_the_count() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.hit(start), Some(1));
        for ms in 1..=9_999 {
            assert_eq!(throttle.hit(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.hit(start + Duration::from_secs(10)), Some(10_000));
        assert_eq!(throttle.hit(start + Duration::from_secs(11)), None);
        assert_eq!(throttle.hit(start + Duration::from_secs(25)), Some(2));
    }
}
