//! The bounded channel between a response stream's forwarding task and its connection, with the
//! slow-reader timeout (`--stream-idle-timeout-secs`). The connection drains the channel only as
//! fast as the client reads; a client that stops reading (or opens a tiny flow-control window and
//! never widens it) would otherwise hold its admission slot and KV blocks for as long as its
//! connection lives. A send that waits longer than the timeout gives the stream up: the
//! forwarding task returns, which drops the engine's event receiver (the request is aborted and
//! its blocks freed at the next step) and the admission slot. Both wires stream through it.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The sending end: what a forwarding task writes the response's messages into.
pub struct Outbox<T> {
    tx: mpsc::Sender<T>,
    idle_timeout: Duration,
}

/// An outbox of `capacity` messages and the stream the connection sends from.
pub fn channel<T>(capacity: usize, idle_timeout: Duration) -> (Outbox<T>, ReceiverStream<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    (Outbox { tx, idle_timeout }, ReceiverStream::new(rx))
}

impl<T> Outbox<T> {
    /// Queues `message`; false when the client went away or did not read for the idle timeout,
    /// and the stream is to be given up.
    pub async fn send(&self, message: T) -> bool {
        // A reading client leaves room in the channel: no timer is armed per message then.
        let message = match self.tx.try_send(message) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(message)) => message,
        };
        match tokio::time::timeout(self.idle_timeout, self.tx.send(message)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                tracing::info!(
                    idle_timeout_secs = self.idle_timeout.as_secs_f64(),
                    "the client did not read the response stream; aborting it (--stream-idle-timeout-secs)"
                );
                false
            }
        }
    }

    /// Completes when the client went away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_reader_that_stops_reading_is_given_up_after_the_idle_timeout() {
        let idle = Duration::from_millis(100);
        let (outbox, mut stream) = channel(1, idle);
        assert!(outbox.send(1).await);
        let started = std::time::Instant::now();
        assert!(
            !outbox.send(2).await,
            "the channel is full and nobody reads"
        );
        assert!(started.elapsed() >= idle);
        assert_eq!(stream.next().await, Some(1));
        assert!(outbox.send(3).await, "a reading client is served again");
        drop(stream);
        assert!(!outbox.send(4).await, "a client that went away");
    }
}
