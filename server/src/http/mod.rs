//! The OpenAI-compatible HTTP API, on its own port beside gRPC: `POST /v1/completions`,
//! `POST /v1/chat/completions` (SSE when `stream`), `GET /v1/models`, `GET /health`,
//! `GET /version`, `POST /tokenize`, `POST /detokenize`. One request type, two wire formats: it
//! shares with gRPC the engine handle, the one validator, [`Admission`] (in-flight limit,
//! draining, serving state) and prompt handling ([`crate::prompt`]); this module only translates
//! OpenAI's JSON to a [`crate::validation::RawRequest`] and engine events back to JSON. Every
//! refusal is a [`crate::error::RequestError`] answered by [`error`] in OpenAI's error shape.

mod auth;
mod body;
mod choices;
mod convert;
mod error;
mod generate;
mod info;
mod responses;
mod stream;
mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use auth::require_token;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use crate::admission::Admission;
use crate::auth::BearerToken;
use crate::engine_loop::EngineHandle;
use crate::error::RequestError;
use crate::net::{Incoming, serve_http1};
use crate::prompt::PromptWork;
use crate::refusal::new_request_id;

pub(crate) use convert::Plan;
pub(crate) use generate::plan;
pub(crate) use responses::Endpoint;

/// Everything the handlers share.
pub struct HttpState {
    pub engine: EngineHandle,
    pub prompts: PromptWork,
    pub admission: Arc<Admission>,
    /// The one model id requests may name (`--model-name`).
    pub model_name: String,
    pub max_model_len: usize,
    /// Start-up time in Unix seconds: the model's `created`.
    pub started_unix_secs: u64,
    /// Larger request bodies are refused with 413 (`--http-max-body-bytes`).
    pub max_body_bytes: usize,
    /// A stream whose client does not read for this long is aborted (`--stream-idle-timeout-secs`).
    pub stream_idle_timeout: std::time::Duration,
}

/// The API's routes; unknown paths are 404 in OpenAI's error shape.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/v1/completions", post(generate::completions))
        .route("/v1/chat/completions", post(generate::chat))
        .route("/v1/models", get(info::models))
        .route("/health", get(info::health))
        .route("/version", get(info::version))
        .route("/tokenize", post(info::tokenize))
        .route("/detokenize", post(info::detokenize))
        .fallback(info::unknown_route)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

/// Serves the API on `incoming` until `shutdown` completes and open responses end; with `token`,
/// every path but `/health` requires it.
pub fn serve(
    incoming: Incoming,
    state: Arc<HttpState>,
    token: Option<BearerToken>,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let app = require_token(router(state), token);
    serve_http1(incoming, app, header_read_timeout, "HTTP", shutdown)
}

/// A JSON response.
fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// The request's id: the client's `X-Request-Id`, else a fresh `<prefix>-…`.
fn request_id(headers: &HeaderMap, prefix: &str) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map_or_else(|| new_request_id(prefix), str::to_string)
}

/// The request body, or why it could not be read (413 past the body limit).
fn body_bytes(
    state: &HttpState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, RequestError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            RequestError::BodyTooLarge {
                limit_bytes: state.max_body_bytes,
            }
        } else {
            RequestError::Malformed {
                message: rejection.body_text(),
            }
        }
    })
}
