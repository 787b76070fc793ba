//! Admission control shared by both wires: a bounded number of requests in flight, a draining
//! flag set at shutdown, and whether the server is serving (warm-up done, not draining), which
//! gRPC health and HTTP `/health` both report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::error::RequestError;

/// Who gets in: at most `max_in_flight` engine sequences at once, none while draining.
pub struct Admission {
    in_flight: AtomicUsize,
    max_in_flight: usize,
    warmed_up: AtomicBool,
    draining: AtomicBool,
}

impl Admission {
    /// Admits at most `max_in_flight` requests at once (running + waiting).
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            max_in_flight,
            warmed_up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// The warm-up generation went through: health reports serving until draining starts.
    pub fn mark_warmed_up(&self) {
        self.warmed_up.store(true, Ordering::SeqCst);
    }

    /// Whether health should report serving: warmed up and not draining.
    pub fn is_serving(&self) -> bool {
        self.warmed_up.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    /// Refuses new requests from now on (running ones finish).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Takes one slot for one engine sequence until the guard drops; refused while draining or
    /// at the limit.
    pub fn try_admit(self: &Arc<Self>) -> Result<AdmissionGuard, RequestError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(RequestError::Draining);
        }
        let previous = self.in_flight.fetch_add(1, Ordering::SeqCst);
        if previous >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(RequestError::AtCapacity {
                max_in_flight: self.max_in_flight,
            });
        }
        Ok(AdmissionGuard(Arc::clone(self)))
    }
}

/// Releases an admission slot when the request's stream ends.
pub struct AdmissionGuard(Arc<Admission>);

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_back_when_guards_drop_and_draining_refuses_everyone() {
        let admission = Arc::new(Admission::new(1));
        let guard = admission.try_admit().unwrap();
        assert_eq!(
            admission.try_admit().err(),
            Some(RequestError::AtCapacity { max_in_flight: 1 })
        );
        drop(guard);
        assert_eq!(admission.in_flight(), 0);
        admission.mark_warmed_up();
        assert!(admission.is_serving());
        admission.start_draining();
        assert!(!admission.is_serving());
        assert_eq!(admission.try_admit().err(), Some(RequestError::Draining));
    }
}
