//! `POST /v1/completions` and `POST /v1/chat/completions`: read the body, convert it, admit and
//! submit its choices, then answer whole or as a stream. Dropping the handler (a client that
//! left before a whole answer) drops the choices, which aborts them.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::choices::Choices;
use super::convert::{self, Plan};
use super::error::ApiError;
use super::responses::{Endpoint, Responder};
use super::wire::{ChatBody, CompletionBody};
use super::{HttpState, body, body_bytes, json_response, request_id, stream};
use crate::error::RequestError;
use crate::prompt::PromptWork;

pub async fn completions(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(state, Endpoint::Completions, &headers, body).await
}

pub async fn chat(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(state, Endpoint::Chat, &headers, body).await
}

async fn generate(
    state: Arc<HttpState>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrival = Instant::now();
    let id = request_id(headers, endpoint.id_prefix());
    let span = tracing::info_span!("request", request_id = %id);
    match answer(&state, endpoint, &id, body, arrival)
        .instrument(span)
        .await
    {
        Ok(response) => response,
        Err(error) => ApiError {
            request_id: id,
            error,
        }
        .into_response(),
    }
}

/// A request body of `endpoint` parsed, its `model` checked against `model_name` and its
/// prompt tokenized: the request of choice 0 and how to answer, before validation.
pub(crate) async fn plan(
    endpoint: Endpoint,
    bytes: &[u8],
    model_name: &str,
    prompts: &PromptWork,
) -> Result<Plan, RequestError> {
    match endpoint {
        Endpoint::Completions => {
            let body: CompletionBody = body::parse(bytes)?;
            convert::check_model(body.generation.model.as_deref(), model_name)?;
            convert::completion(body, prompts).await
        }
        Endpoint::Chat => {
            let body: ChatBody = body::parse(bytes)?;
            convert::check_model(body.generation.model.as_deref(), model_name)?;
            convert::chat(body, prompts).await
        }
    }
}

async fn answer(
    state: &HttpState,
    endpoint: Endpoint,
    id: &str,
    body: Result<Bytes, BytesRejection>,
    arrival: Instant,
) -> Result<Response, RequestError> {
    // The first choice's slot, taken before the prompt is tokenized: that work counts too.
    let first_slot = state.admission.try_admit_request(id)?;
    let bytes = body_bytes(state, body)?;
    let plan = plan(endpoint, &bytes, &state.model_name, &state.prompts).await?;
    let choices = Choices::submit(
        &state.engine,
        &state.admission,
        first_slot,
        &plan.raw,
        plan.n,
        arrival,
    )?;
    let responder = Responder {
        endpoint,
        id: id.to_string(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: state.model_name.clone(),
        tokenizer: Arc::clone(state.prompts.tokenizer()),
        logprobs: plan.raw.sampling.logprobs.is_some(),
        token_ids: plan.return_token_ids,
    };
    if plan.stream {
        return Ok(stream::respond(
            responder,
            choices,
            plan.include_usage,
            state.stream_idle_timeout,
        ));
    }
    let outputs = choices.collect().await?;
    Ok(json_response(
        StatusCode::OK,
        &responder.completion(&outputs),
    ))
}
