//! Admission control shared by both wires: a bounded number of requests in flight, their ids
//! unique among live requests, and the
//! server's one health state ([`Health`]: starting, serving, draining, stopped), which gRPC
//! health (every service name it answers for) and HTTP `/health` both read, so they agree at
//! every moment.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::error::RequestError;

/// Where the server is in its life; only [`Health::Serving`] reports healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Warming up: health says NOT_SERVING; a request that comes anyway queues behind the
    /// warm-up generation.
    Starting,
    /// Warm-up done, admitting requests.
    Serving,
    /// A shutdown signal arrived: running requests finish, new ones are refused.
    Draining,
    /// The engine thread ended: nothing can be served again.
    Stopped,
}

/// Who gets in: at most `max_in_flight` engine sequences at once, none while draining.
pub struct Admission {
    in_flight: AtomicUsize,
    max_in_flight: usize,
    health: watch::Sender<Health>,
    /// Ids of the generation requests in flight.
    live_ids: Mutex<HashSet<String>>,
}

impl Admission {
    /// Admits at most `max_in_flight` requests at once (running + waiting).
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            max_in_flight,
            health: watch::Sender::new(Health::Starting),
            live_ids: Mutex::new(HashSet::new()),
        }
    }

    /// The warm-up generation went through: serving, unless a signal or the engine's end came
    /// first (health only moves forward).
    pub fn mark_warmed_up(&self) {
        self.advance(Health::Serving);
    }

    /// Refuses new requests from now on (running ones finish).
    pub fn start_draining(&self) {
        self.advance(Health::Draining);
    }

    /// The engine thread ended: not serving, for good.
    pub fn mark_engine_stopped(&self) {
        self.advance(Health::Stopped);
    }

    /// Moves to `next` if it is later in the server's life than the current state.
    fn advance(&self, next: Health) {
        self.health.send_if_modified(|health| {
            let later = next as u8 > *health as u8;
            if later {
                *health = next;
            }
            later
        });
    }

    /// The health state now.
    pub fn health(&self) -> Health {
        *self.health.borrow()
    }

    /// The health state now and at every change (gRPC health's `Watch`).
    pub fn watch_health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// Completes when the engine thread has ended.
    pub async fn engine_stopped(&self) {
        let mut health = self.health.subscribe();
        let _ = health.wait_for(|h| *h == Health::Stopped).await;
    }

    /// Whether health should report serving: warmed up, not draining, engine running.
    pub fn is_serving(&self) -> bool {
        self.health() == Health::Serving
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Takes one slot for one engine sequence until the guard drops; refused while draining or
    /// at the limit.
    pub fn try_admit(self: &Arc<Self>) -> Result<AdmissionGuard, RequestError> {
        if matches!(self.health(), Health::Draining | Health::Stopped) {
            return Err(RequestError::Draining);
        }
        let previous = self.in_flight.fetch_add(1, Ordering::SeqCst);
        if previous >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(RequestError::AtCapacity {
                max_in_flight: self.max_in_flight,
            });
        }
        Ok(AdmissionGuard {
            admission: Arc::clone(self),
            id: None,
        })
    }

    /// [`Admission::try_admit`] for the generation request `id`, which holds the id until the
    /// guard drops; refused while another live request holds it.
    pub fn try_admit_request(self: &Arc<Self>, id: &str) -> Result<AdmissionGuard, RequestError> {
        let mut guard = self.try_admit()?;
        let fresh = self
            .live_ids
            .lock()
            .expect("the live id set is never poisoned")
            .insert(id.to_string());
        if !fresh {
            return Err(RequestError::DuplicateRequestId {
                request_id: id.to_string(),
            });
        }
        guard.id = Some(id.to_string());
        Ok(guard)
    }
}

/// Releases an admission slot (and the request's id) when the request's stream ends.
pub struct AdmissionGuard {
    admission: Arc<Admission>,
    id: Option<String>,
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        if let Some(id) = &self.id {
            self.admission
                .live_ids
                .lock()
                .expect("the live id set is never poisoned")
                .remove(id);
        }
        self.admission.in_flight.fetch_sub(1, Ordering::SeqCst);
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

    #[test]
    fn an_id_is_refused_while_live_and_free_again_after() {
        let admission = Arc::new(Admission::new(4));
        let first = admission.try_admit_request("a").unwrap();
        assert_eq!(
            admission.try_admit_request("a").err(),
            Some(RequestError::DuplicateRequestId {
                request_id: "a".into()
            })
        );
        assert_eq!(admission.in_flight(), 1);
        drop(first);
        assert!(admission.try_admit_request("a").is_ok());
    }

    #[test]
    fn health_only_moves_forward() {
        let admission = Admission::new(1);
        assert_eq!(admission.health(), Health::Starting);
        admission.start_draining();
        admission.mark_warmed_up();
        assert_eq!(admission.health(), Health::Draining);
        admission.mark_engine_stopped();
        admission.start_draining();
        assert_eq!(admission.health(), Health::Stopped);
    }
}
