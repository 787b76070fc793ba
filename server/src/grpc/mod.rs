//! The `glimpse.v1.Generation` gRPC service. Handlers admit ([`Admission`], shared with HTTP;
//! Tokenize and Detokenize too), tokenize off the async runtime ([`PromptWork`]), validate with
//! the engine's validator, submit to the engine thread and forward its events as a stream; they
//! never touch the model. Every refusal is a [`RequestError`] turned into a status by
//! [`status_of`]; requests tonic cannot decode are refused through [`DecodeRefusals`]. A dropped
//! stream (client cancel or disconnect, also while the request is queued) drops the engine's event
//! receiver, which aborts the request and frees its blocks at the next step, and the admission slot
//! at once; so does a stream its client stops reading ([`crate::outbox`]). `grpc-timeout` deadlines
//! cover the whole stream.

mod auth;
mod convert;
mod deadline;
mod decode_refusals;
mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use glimpse_proto::v1::{self, generation_server::Generation};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::admission::Admission;
use crate::engine_loop::{EngineHandle, StreamEvent};
use crate::error::RequestError;
use crate::outbox;
use crate::prompt::{Prompt, PromptWork};
use crate::refusal::new_request_id;
use crate::validation::{ValidRequest, Validator};
use status::refused;

pub use auth::TokenCheck;
pub use convert::{policy_message, wire_policy};
pub use decode_refusals::DecodeRefusals;
pub use status::status_of;

/// Everything the handlers share.
pub struct GenerationService {
    pub engine: EngineHandle,
    pub prompts: PromptWork,
    pub model_info: v1::ModelInfo,
    pub admission: Arc<Admission>,
    /// A stream whose client does not read for this long is aborted (`--stream-idle-timeout-secs`).
    pub stream_idle_timeout: Duration,
}

type GenerateStream = ReceiverStream<Result<v1::GenerateResponse, Status>>;

impl GenerationService {
    /// Admits, tokenizes, validates and submits one generation request, and forwards its events
    /// from a task that runs in the request's span (every log line carries its id).
    async fn start(
        &self,
        mut raw: v1::GenerateRequest,
        id: String,
        deadline: Option<Instant>,
        arrival: Instant,
    ) -> Result<Response<GenerateStream>, Status> {
        let guard = self
            .admission
            .try_admit_request(&id)
            .map_err(|e| refused(&id, e))?;
        let engine_request = engine_request(&mut raw, &self.prompts, self.engine.validator())
            .await
            .map_err(|e| refused(&id, e))?;
        let stop_token_ids = engine_request.stop().stop_token_ids.clone();
        let mut events = self.engine.submit_at(engine_request, arrival);
        let (tx, rx) = outbox::channel(64, self.stream_idle_timeout);
        let forward = async move {
            let _guard = guard;
            let mut last_token = None;
            loop {
                let next = tokio::select! {
                    // A client that cancels while its request is queued (no event comes) leaves
                    // now, not when the engine reaches the request.
                    () = tx.closed() => return,
                    next = next_event(&mut events, deadline) => next,
                };
                let event = match next {
                    Ok(event) => event,
                    Err(deadline_passed) => {
                        tx.send(Err(refused(&id, deadline_passed))).await;
                        return;
                    }
                };
                let message = match event {
                    Some(StreamEvent::Token(token)) => {
                        last_token = Some(token.token_id);
                        Ok(convert::chunk(token))
                    }
                    Some(StreamEvent::Finished(finished)) => {
                        if !finished.text_delta.is_empty() {
                            let tail = v1::GenerateResponse {
                                kind: Some(v1::generate_response::Kind::Chunk(v1::Chunk {
                                    text: finished.text_delta.clone(),
                                    ..Default::default()
                                })),
                            };
                            if !tx.send(Ok(tail)).await {
                                return;
                            }
                        }
                        tx.send(Ok(convert::final_message(
                            &finished,
                            last_token,
                            &stop_token_ids,
                        )))
                        .await;
                        return;
                    }
                    Some(StreamEvent::Error(e)) => {
                        tx.send(Err(refused(&id, e))).await;
                        return;
                    }
                    None => {
                        tx.send(Err(refused(&id, RequestError::Dropped))).await;
                        return;
                    }
                };
                if !tx.send(message).await {
                    // The client went away or stopped reading: dropping `events` aborts the
                    // request.
                    return;
                }
            }
        };
        tokio::spawn(forward.in_current_span());
        Ok(Response::new(rx))
    }
}

/// A wire request as the engine takes it: its prompt (taken out of `raw`) tokenized off the
/// runtime, then the whole request validated. Fails with the refusal to send.
pub(crate) async fn engine_request(
    raw: &mut v1::GenerateRequest,
    prompts: &PromptWork,
    validator: &Validator,
) -> Result<ValidRequest, RequestError> {
    let prompt = convert::prompt(raw.input.take())?;
    let ids = prompts.prompt_ids(prompt, raw.add_special_tokens).await?;
    validator.validate_raw(convert::raw_request(raw, ids)?)
}

/// The engine's next event for a request, or `DeadlineExceeded` once `deadline` passed.
async fn next_event(
    events: &mut UnboundedReceiver<StreamEvent>,
    deadline: Option<Instant>,
) -> Result<Option<StreamEvent>, RequestError> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at.into(), events.recv())
            .await
            .map_err(|_| RequestError::DeadlineExceeded),
        None => Ok(events.recv().await),
    }
}

#[tonic::async_trait]
impl Generation for GenerationService {
    type GenerateStream = GenerateStream;

    async fn generate(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<GenerateStream>, Status> {
        let arrival = Instant::now();
        let deadline = deadline::from_metadata(request.metadata());
        let raw = request.into_inner();
        let id = raw
            .request_id
            .clone()
            .unwrap_or_else(|| new_request_id("gen"));
        let deadline = deadline.map_err(|e| refused(&id, e))?;
        let span = tracing::info_span!("request", request_id = %id);
        self.start(raw, id, deadline, arrival)
            .instrument(span)
            .await
    }

    async fn tokenize(
        &self,
        request: Request<v1::TokenizeRequest>,
    ) -> Result<Response<v1::TokenizeResponse>, Status> {
        let raw = request.into_inner();
        let id = new_request_id("tok");
        let _slot = self.admission.try_admit().map_err(|e| refused(&id, e))?;
        let prompt = match raw.input {
            Some(v1::tokenize_request::Input::Text(text)) => Prompt::Text {
                text,
                field: "text",
            },
            Some(v1::tokenize_request::Input::Chat(chat)) => {
                Prompt::Chat(convert::chat_prompt(chat))
            }
            None => {
                let error = RequestError::invalid("input", "set `text` or `chat`");
                return Err(refused(&id, error));
            }
        };
        let ids = self
            .prompts
            .prompt_ids(prompt, raw.add_special_tokens)
            .await
            .map_err(|e| refused(&id, e))?;
        let token_strings = if raw.return_token_strings {
            let tokenizer = self.prompts.tokenizer();
            ids.iter()
                .map(|&id| tokenizer.id_to_token(id).unwrap_or_default())
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(v1::TokenizeResponse {
            token_ids: ids,
            token_strings,
        }))
    }

    async fn detokenize(
        &self,
        request: Request<v1::DetokenizeRequest>,
    ) -> Result<Response<v1::DetokenizeResponse>, Status> {
        let raw = request.into_inner();
        let id = new_request_id("detok");
        let _slot = self.admission.try_admit().map_err(|e| refused(&id, e))?;
        let text = self
            .prompts
            .detokenize("token_ids", raw.token_ids, raw.skip_special_tokens)
            .await
            .map_err(|e| refused(&id, e))?;
        Ok(Response::new(v1::DetokenizeResponse { text }))
    }

    async fn get_model_info(
        &self,
        _: Request<v1::GetModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        Ok(Response::new(self.model_info.clone()))
    }
}
