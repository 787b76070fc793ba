//! The one accept layer of every port `glimpse serve` opens (gRPC, HTTP API, metrics): each
//! port's [`Incoming`] accepts TCP connections, holds at most `--max-connections` of them at once,
//! sets their socket options and, with TLS configured, finishes each handshake within
//! `--tls-handshake-timeout-secs` before handing the connection to the port's protocol server
//! (tonic for gRPC, [`serve_http1`] for HTTP and metrics). Failed accepts back off and are logged
//! once per interval ([`accept`]), so running out of file descriptors neither spins a core nor
//! floods the log.

mod accept;
mod connection;
mod http1;
mod throttle;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

pub use connection::Connection;
pub use http1::serve_http1;
pub use tls::{TlsError, load_tls};

use throttle::Throttle;

/// How long a warning about a port's accept failures or full connection slots waits before the
/// next one: one line per interval, with the count since the last.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What every port's connections share.
#[derive(Clone)]
pub struct Settings {
    /// Connections one port holds at once (`--max-connections`); more wait in the kernel's listen
    /// backlog, unaccepted, until one closes.
    pub max_connections: usize,
    /// Idle time before TCP keepalive probes start (`--tcp-keepalive-secs`).
    pub tcp_keepalive: Duration,
    /// The certificate and key every port presents, when TLS is on (`--tls-cert-file`).
    pub tls: Option<Arc<ServerConfig>>,
    /// Time a client has to finish the TLS handshake (`--tls-handshake-timeout-secs`); a
    /// connection still shaking hands after it is closed and its slot freed.
    pub tls_handshake_timeout: Duration,
}

/// The application protocol a port speaks, offered to TLS clients through ALPN.
#[derive(Debug, Clone, Copy)]
pub enum Protocol {
    /// HTTP/2 only: gRPC.
    Grpc,
    /// HTTP/1.1: the OpenAI-compatible API and `/metrics`.
    Http1,
}

impl Protocol {
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocol::Grpc => vec![b"h2".to_vec()],
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
        }
    }
}

/// The connections of one port, ready for its protocol server: a stream that never fails (accept
/// errors are handled beneath it) and ends when the port stops; dropping it closes the listening
/// socket.
pub struct Incoming {
    connections: mpsc::Receiver<Connection>,
}

impl tokio_stream::Stream for Incoming {
    type Item = Result<Connection, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.connections.poll_recv(cx).map(|next| next.map(Ok))
    }
}

/// Starts accepting connections on `listener`, the port named `port` in logs (`gRPC`, `HTTP`,
/// `metrics`), speaking `protocol`.
pub fn incoming(
    listener: TcpListener,
    port: &'static str,
    protocol: Protocol,
    settings: &Settings,
) -> Incoming {
    let (tx, rx) = mpsc::channel(16);
    let tls = settings.tls.as_ref().map(|config| {
        let mut config = ServerConfig::clone(config);
        config.alpn_protocols = protocol.alpn();
        TlsAcceptor::from(Arc::new(config))
    });
    let port = Port {
        name: port,
        listener,
        slots: Arc::new(Semaphore::new(settings.max_connections)),
        settings: settings.clone(),
        tls,
    };
    tokio::spawn(port.run(tx));
    Incoming { connections: rx }
}

/// One listening port and its connection slots.
struct Port {
    name: &'static str,
    listener: TcpListener,
    slots: Arc<Semaphore>,
    settings: Settings,
    tls: Option<TlsAcceptor>,
}

impl Port {
    /// Takes a slot, accepts, and hands the connection on (after its handshake, with TLS), until
    /// the port's server drops its [`Incoming`].
    async fn run(self, tx: mpsc::Sender<Connection>) {
        let mut full = Throttle::new(LOG_INTERVAL);
        let mut failures = Throttle::new(LOG_INTERVAL);
        loop {
            let slot = match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    if let Some(times) = full.hit(std::time::Instant::now()) {
                        tracing::warn!(
                            port = self.name,
                            limit = self.settings.max_connections,
                            times,
                            "the port holds its limit of connections (--max-connections); new \
                             connections wait in the listen backlog until one closes"
                        );
                    }
                    tokio::select! {
                        slot = Arc::clone(&self.slots).acquire_owned() => {
                            slot.expect("the slots are never closed")
                        }
                        () = tx.closed() => return,
                    }
                }
            };
            let stream = tokio::select! {
                stream = accept::accept(&self.listener, self.name, &mut failures) => stream,
                () = tx.closed() => return,
            };
            accept::configure(&stream, self.settings.tcp_keepalive);
            match &self.tls {
                None => {
                    if tx.send(Connection::plain(stream, slot)).await.is_err() {
                        return;
                    }
                }
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    let timeout = self.settings.tls_handshake_timeout;
                    let (tx, port) = (tx.clone(), self.name);
                    tokio::spawn(async move {
                        match tokio::time::timeout(timeout, handshake).await {
                            Ok(Ok(stream)) => {
                                let _ = tx.send(Connection::tls(stream, slot)).await;
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(port, %error, "TLS handshake failed");
                            }
                            Err(_) => tracing::debug!(
                                port,
                                ?timeout,
                                "TLS handshake not finished in time (--tls-handshake-timeout-secs)"
                            ),
                        }
                    });
                }
            }
        }
    }
}
