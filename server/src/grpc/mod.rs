//! The `glimpse.v1.Generation` gRPC service. Handlers tokenize, validate with the engine's
//! validator, submit to the engine thread and forward its events as a stream; they never touch
//! the model. Every refusal is a [`RequestError`] turned into a status by [`status_of`]. A
//! dropped stream (client cancel or disconnect) drops the engine's event receiver, which aborts
//! the request and frees its blocks at the next step. `grpc-timeout` deadlines cover the whole
//! stream.

mod convert;
mod deadline;
mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use glimpse_engine::tokenizer::Tokenizer;
use glimpse_proto::v1::{self, generation_server::Generation};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::engine_loop::{EngineHandle, StreamEvent};
use crate::error::RequestError;
use status::refused;

pub use convert::{policy_message, wire_policy};
pub use status::status_of;

/// Admission control shared by the handlers: a bounded number of requests in flight and a
/// draining flag set at shutdown.
pub struct Admission {
    in_flight: AtomicUsize,
    max_in_flight: usize,
    draining: AtomicBool,
}

impl Admission {
    /// Admits at most `max_in_flight` requests at once (running + waiting).
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            max_in_flight,
            draining: AtomicBool::new(false),
        }
    }

    /// Refuses new requests from now on (running ones finish).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn try_admit(self: &Arc<Self>) -> Result<AdmissionGuard, RequestError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(RequestError::Draining);
        }
        let previous = self.in_flight.fetch_add(1, Ordering::SeqCst);
        if previous >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(RequestError::AtCapacity {
                max_in_flight: self.max_in_flight,
            });
        }
        Ok(AdmissionGuard(Arc::clone(self)))
    }
}

/// Releases an admission slot when the request's stream ends.
struct AdmissionGuard(Arc<Admission>);

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Everything the handlers share.
pub struct GenerationService {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub model_info: v1::ModelInfo,
    pub admission: Arc<Admission>,
}

type GenerateStream = ReceiverStream<Result<v1::GenerateResponse, Status>>;

#[tonic::async_trait]
impl Generation for GenerationService {
    type GenerateStream = GenerateStream;

    async fn generate(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<GenerateStream>, Status> {
        let arrival = Instant::now();
        let deadline = deadline::from_metadata(request.metadata()).map_err(refused)?;
        let raw = request.into_inner();
        let guard = self.admission.try_admit().map_err(refused)?;
        let engine_request =
            convert::prompt_ids(&self.tokenizer, raw.input.as_ref(), raw.add_special_tokens)
                .and_then(|prompt| convert::raw_request(&raw, prompt))
                .and_then(|request| self.engine.validator().validate_raw(request))
                .map_err(refused)?;
        let stop_token_ids = engine_request.stop().stop_token_ids.clone();
        let mut events = self.engine.submit_at(engine_request, arrival);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let _guard = guard;
            let mut last_token = None;
            loop {
                let event = match deadline {
                    Some(at) => match tokio::time::timeout_at(at.into(), events.recv()).await {
                        Ok(event) => event,
                        Err(_) => {
                            let _ = tx.send(Err(refused(RequestError::DeadlineExceeded))).await;
                            return;
                        }
                    },
                    None => events.recv().await,
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
                            if tx.send(Ok(tail)).await.is_err() {
                                return;
                            }
                        }
                        let _ = tx
                            .send(Ok(convert::final_message(
                                &finished,
                                last_token,
                                &stop_token_ids,
                            )))
                            .await;
                        return;
                    }
                    Some(StreamEvent::Error(e)) => {
                        let _ = tx.send(Err(refused(e))).await;
                        return;
                    }
                    None => {
                        let _ = tx.send(Err(refused(RequestError::Dropped))).await;
                        return;
                    }
                };
                if tx.send(message).await.is_err() {
                    // The client went away: dropping `events` aborts the request.
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn tokenize(
        &self,
        request: Request<v1::TokenizeRequest>,
    ) -> Result<Response<v1::TokenizeResponse>, Status> {
        let raw = request.into_inner();
        let ids = match &raw.input {
            Some(v1::tokenize_request::Input::Text(text)) => self
                .tokenizer
                .encode(text, raw.add_special_tokens.unwrap_or(true)),
            Some(v1::tokenize_request::Input::Chat(chat)) => {
                let text = convert::render_chat(&self.tokenizer, chat).map_err(refused)?;
                self.tokenizer
                    .encode(&text, raw.add_special_tokens.unwrap_or(false))
            }
            None => {
                return Err(refused(RequestError::InvalidParameter {
                    field: "input",
                    message: "set `text` or `chat`".into(),
                }));
            }
        }
        .map_err(|e| refused(RequestError::malformed(e)))?;
        let token_strings = if raw.return_token_strings {
            ids.iter()
                .map(|&id| self.tokenizer.id_to_token(id).unwrap_or_default())
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
        let vocab = self.engine.validator().limits().vocab_size;
        if let Some(bad) = raw.token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(refused(RequestError::InvalidParameter {
                field: "token_ids",
                message: format!("{bad} is outside the vocabulary of {vocab} tokens"),
            }));
        }
        let text = self
            .tokenizer
            .decode(&raw.token_ids, raw.skip_special_tokens.unwrap_or(true))
            .map_err(|e| refused(RequestError::malformed(e)))?;
        Ok(Response::new(v1::DetokenizeResponse { text }))
    }

    async fn get_model_info(
        &self,
        _: Request<v1::GetModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        Ok(Response::new(self.model_info.clone()))
    }
}
