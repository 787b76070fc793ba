//! HTTP/1.1 over a port's [`Incoming`] (the OpenAI-compatible API and `/metrics`), with hyper's
//! header-read timeout: it runs from a connection's start and from the end of each response until
//! the next request's header is complete, so a connection that sends nothing, sends a partial
//! header, or idles between requests for longer is closed and its slot freed.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_stream::StreamExt;

use super::Incoming;

/// Serves `app` on `incoming` until `shutdown` completes (it then stops accepting and waits for
/// open responses to end); `port` names it in logs.
pub fn serve_http1(
    mut incoming: Incoming,
    app: Router,
    header_read_timeout: Duration,
    port: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let connection = tokio::select! {
                next = incoming.next() => match next {
                    Some(Ok(connection)) => connection,
                    _ => break,
                },
                () = &mut shutdown => break,
            };
            let service = TowerToHyperService::new(app.clone());
            let served =
                graceful.watch(builder.serve_connection(TokioIo::new(connection), service));
            tokio::spawn(async move {
                if let Err(error) = served.await {
                    tracing::debug!(port, %error, "HTTP connection ended with an error");
                }
            });
        }
        drop(incoming);
        graceful.shutdown().await;
    })
}
