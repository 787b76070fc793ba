//! Accepting one connection without spinning or flooding the log: errors that concern only the
//! connection being accepted (it was reset or aborted before `accept` returned it) are skipped
//! quietly; every other error — EMFILE and ENFILE (out of file descriptors), ENOBUFS and ENOMEM —
//! would repeat at once, so the loop sleeps, doubling the pause up to [`MAX_BACKOFF`], and warns
//! once per interval with the count of failed accepts.

use std::io;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use super::throttle::Throttle;

/// The first pause after a failed accept.
const MIN_BACKOFF: Duration = Duration::from_millis(5);
/// The longest pause between accepts while they fail.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The next connection on `listener` (the port `port`), however many accepts fail first.
pub async fn accept(
    listener: &TcpListener,
    port: &'static str,
    failures: &mut Throttle,
) -> TcpStream {
    let mut backoff = MIN_BACKOFF;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(error) if concerns_one_connection(&error) => {
                tracing::debug!(port, %error, "a connection failed while it was accepted");
            }
            Err(error) => {
                if let Some(failed_accepts) = failures.hit(Instant::now()) {
                    tracing::warn!(
                        port,
                        failed_accepts,
                        %error,
                        retry_in = ?backoff,
                        "accepting connections fails (out of file descriptors or memory?); \
                         backing off, with one such line per interval"
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Whether `error` is about the connection being accepted only, so the next accept can follow at
/// once (Linux reports the pending network errors of a new connection through `accept`).
fn concerns_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::PermissionDenied
    )
}

/// Socket options of every accepted connection: no Nagle delay (token streams are many small
/// writes) and TCP keepalive, so a peer that vanished without a FIN is noticed.
pub fn configure(stream: &TcpStream, keepalive: Duration) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(keepalive);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn descriptor_and_memory_exhaustion_back_off_while_a_reset_does_not() {
        for errno in [24, 23, 105, 12] {
            // EMFILE, ENFILE, ENOBUFS, ENOMEM
            assert!(
                !concerns_one_connection(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        for errno in [103, 104, 4] {
            // ECONNABORTED, ECONNRESET, EINTR
            assert!(
                concerns_one_connection(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }
}
