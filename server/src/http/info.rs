//! The endpoints around generation: the model listing, health (200 only while serving, 503
//! while warming up or draining), the version, tokenization both ways (each holding an admission
//! slot while it works, as generation does), and the 404 of unknown routes.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::Instrument;

use super::convert::{chat_prompt, check_model};
use super::error::ApiError;
use super::wire::{DetokenizeBody, TokenizeBody};
use super::{HttpState, body, body_bytes, json_response, request_id};
use crate::admission::AdmissionGuard;
use crate::error::RequestError;
use crate::prompt::Prompt;

pub async fn models(State(state): State<Arc<HttpState>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{
            "id": state.model_name, "object": "model", "created": state.started_unix_secs,
            "owned_by": "glimpse", "max_model_len": state.max_model_len,
        }]}),
    )
}

pub async fn health(State(state): State<Arc<HttpState>>) -> StatusCode {
    if state.admission.is_serving() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

pub async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"version": env!("CARGO_PKG_VERSION")}),
    )
}

/// `{"prompt": text}` or `{"messages": [...]}` → `{"tokens", "count", "max_model_len"}`.
pub async fn tokenize(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let id = request_id(&headers, "tok");
    answer(&id, async {
        let (_slot, body): (_, TokenizeBody) =
            admitted(&state, &id, body, |b: &TokenizeBody| b.model.as_deref())?;
        let prompt = match (body.prompt, body.messages) {
            (Some(text), None) => Prompt::Text {
                text,
                field: "prompt",
            },
            (None, Some(list)) => Prompt::Chat(chat_prompt(list, body.add_generation_prompt)),
            _ => {
                return Err(RequestError::invalid(
                    "prompt",
                    "set exactly one of `prompt` or `messages`",
                ));
            }
        };
        let ids = state
            .prompts
            .prompt_ids(prompt, body.add_special_tokens)
            .await?;
        Ok(json!({"count": ids.len(), "tokens": ids, "max_model_len": state.max_model_len}))
    })
    .await
}

/// `{"tokens": [...]}` → `{"prompt": text}`.
pub async fn detokenize(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let id = request_id(&headers, "detok");
    answer(&id, async {
        let (_slot, body): (_, DetokenizeBody) =
            admitted(&state, &id, body, |b: &DetokenizeBody| b.model.as_deref())?;
        let ids = body
            .tokens
            .ok_or_else(|| RequestError::invalid("tokens", "a list of token ids is needed"))?;
        let text = state.prompts.detokenize("tokens", ids, None).await?;
        Ok(json!({ "prompt": text }))
    })
    .await
}

pub async fn unknown_route(headers: HeaderMap, method: Method, uri: Uri) -> Response {
    answer(&request_id(&headers, "req"), async {
        Err(RequestError::UnknownRoute {
            method: method.to_string(),
            path: uri.path().to_string(),
        })
    })
    .await
}

/// The first steps of a tokenization request: an admission slot and its id `id` (held while it
/// works; refused while another live request holds the id), then its body parsed and its `model`
/// (read by `model`) checked against the served one.
fn admitted<T: serde::de::DeserializeOwned>(
    state: &HttpState,
    id: &str,
    body: Result<Bytes, BytesRejection>,
    model: impl Fn(&T) -> Option<&str>,
) -> Result<(AdmissionGuard, T), RequestError> {
    let slot = state.admission.try_admit_request(id)?;
    let body: T = body::parse(&body_bytes(state, body)?)?;
    check_model(model(&body), &state.model_name)?;
    Ok((slot, body))
}

/// A JSON answer, or the refusal in OpenAI's error shape; the work's log lines carry `id`.
async fn answer(
    id: &str,
    work: impl Future<Output = Result<serde_json::Value, RequestError>>,
) -> Response {
    let span = tracing::info_span!("request", request_id = %id);
    match work.instrument(span).await {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(error) => ApiError {
            request_id: id.to_string(),
            error,
        }
        .into_response(),
    }
}
