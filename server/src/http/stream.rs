//! Server-Sent Events for `stream: true`: one `data: {chunk}` event per token of each choice, a
//! last chunk per choice with its finish reason, with `stream_options.include_usage` a chunk of no
//! choices and the usage, then `data: [DONE]`. An error after the response started is sent as
//! `data: {"error": ...}` before `[DONE]`. When the client goes away (or does not read for the
//! slow-reader timeout, see [`crate::outbox`]) the forwarding task returns, and dropping the
//! [`Choices`] aborts every sequence, freeing its blocks at the next engine step (as on gRPC).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use serde_json::Value;
use tracing::Instrument;

use super::choices::Choices;
use super::error::error_body;
use super::responses::Responder;
use crate::engine_loop::{FinishedEvent, StreamEvent};
use crate::error::RequestError;
use crate::outbox::{self, Outbox};

/// Events buffered between the forwarding task and the connection.
const CHANNEL_EVENTS: usize = 64;

/// Streams `choices` as an SSE response; a client that does not read for `idle_timeout` has it
/// aborted.
pub fn respond(
    responder: Responder,
    choices: Choices,
    include_usage: bool,
    idle_timeout: Duration,
) -> Response {
    let (tx, rx) = outbox::channel(CHANNEL_EVENTS, idle_timeout);
    // In the request's span: the forwarding task's log lines carry the request id too.
    tokio::spawn(forward(responder, choices, include_usage, tx).in_current_span());
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(rx))
        .expect("a static SSE response is valid")
}

type Sender = Outbox<Result<Bytes, Infallible>>;

fn event(data: &Value) -> Result<Bytes, Infallible> {
    Ok(Bytes::from(format!("data: {data}\n\n")))
}

fn done() -> Result<Bytes, Infallible> {
    Ok(Bytes::from_static(b"data: [DONE]\n\n"))
}

/// Forwards engine events as chunks until every choice finished, an error, or the client left.
async fn forward(responder: Responder, mut choices: Choices, include_usage: bool, tx: Sender) {
    let n = choices.len();
    let mut started = vec![false; n];
    let mut offsets = vec![0usize; n];
    let mut finished: Vec<Option<FinishedEvent>> = vec![None; n];
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return,
            next = choices.next() => next,
        };
        let chunk = match next {
            Some((i, StreamEvent::Token(token))) => {
                let chunk = responder.chunk(
                    i,
                    !started[i],
                    &token.text_delta,
                    std::slice::from_ref(&token),
                    offsets[i],
                    None,
                );
                offsets[i] += token.text_delta.chars().count();
                started[i] = true;
                chunk
            }
            Some((i, StreamEvent::Finished(last))) => {
                let reason = last.reason.label();
                let chunk = responder.chunk(
                    i,
                    !started[i],
                    &last.text_delta,
                    &[],
                    offsets[i],
                    Some(reason),
                );
                finished[i] = Some(last);
                chunk
            }
            Some((_, StreamEvent::Error(error))) => return fail(&responder, &tx, error).await,
            None => break,
        };
        if !tx.send(event(&chunk)).await {
            return;
        }
    }
    let finished: Vec<&FinishedEvent> = finished.iter().flatten().collect();
    if finished.len() < n {
        return fail(&responder, &tx, RequestError::Dropped).await;
    }
    if include_usage && !tx.send(event(&responder.usage_chunk(&finished))).await {
        return;
    }
    tx.send(done()).await;
}

async fn fail(responder: &Responder, tx: &Sender, error: RequestError) {
    if tx.send(event(&error_body(&responder.id, &error))).await {
        tx.send(done()).await;
    }
}
