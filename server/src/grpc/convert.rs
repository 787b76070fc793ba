//! Raw `glimpse.v1` requests become validated engine requests here, once; every refusal names the
//! field, the limit and the value (TGI's `validation.rs` habit). Engine results become wire messages.

use glimpse_engine::config::GenerationConfig;
use glimpse_engine::sampling::SamplingParams;
use glimpse_engine::tokenizer::{ChatMessage, Tokenizer};
use glimpse_proto::v1;
use tonic::Status;

use crate::engine_loop::{
    FinishReason, FinishedEvent, GenerationRequest, RequestError, RequestLimits, StopConditions,
    TokenEvent,
};

/// The prompt of a request, tokenized.
pub fn prompt_ids(
    tokenizer: &Tokenizer,
    input: Option<&v1::generate_request::Input>,
    add_special_tokens: Option<bool>,
) -> Result<Vec<u32>, Status> {
    use v1::generate_request::Input;
    let invalid = |e: glimpse_engine::EngineError| Status::invalid_argument(e.to_string());
    match input {
        Some(Input::Text(text)) => tokenizer
            .encode(text, add_special_tokens.unwrap_or(true))
            .map_err(invalid),
        Some(Input::TokenIds(ids)) => Ok(ids.ids.clone()),
        Some(Input::Chat(chat)) => {
            let text = render_chat(tokenizer, chat)?;
            tokenizer
                .encode(&text, add_special_tokens.unwrap_or(false))
                .map_err(invalid)
        }
        None => Err(Status::invalid_argument(
            "invalid `input`: set one of `text`, `token_ids` or `chat`",
        )),
    }
}

/// Renders a conversation with the model's chat template.
pub fn render_chat(tokenizer: &Tokenizer, chat: &v1::ChatMessages) -> Result<String, Status> {
    if chat.messages.is_empty() {
        return Err(Status::invalid_argument(
            "invalid `chat.messages`: at least one message is needed",
        ));
    }
    let messages: Vec<ChatMessage> = chat
        .messages
        .iter()
        .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
        .collect();
    tokenizer
        .render_chat(&messages, chat.add_generation_prompt.unwrap_or(true))
        .map_err(|e| Status::invalid_argument(format!("invalid `chat`: {e}")))
}

/// Builds and validates the engine request for `raw`, whose prompt is `prompt_ids`.
pub fn generation_request(
    raw: &v1::GenerateRequest,
    prompt_ids: Vec<u32>,
    defaults: &GenerationConfig,
    limits: RequestLimits,
) -> Result<GenerationRequest, Status> {
    check_policy(raw.kv_cache.as_ref())?;
    let s = raw.sampling.unwrap_or_default();
    let sampling = SamplingParams {
        temperature: s.temperature.or(defaults.temperature).unwrap_or(1.0),
        top_k: s.top_k.or(defaults.top_k.map(|k| k as u32)).unwrap_or(0),
        top_p: s.top_p.or(defaults.top_p).unwrap_or(1.0),
        min_p: s.min_p.unwrap_or(0.0),
        repetition_penalty: s.repetition_penalty.unwrap_or(1.0),
        presence_penalty: s.presence_penalty.unwrap_or(0.0),
        frequency_penalty: s.frequency_penalty.unwrap_or(0.0),
        seed: s.seed,
        logprobs: (s.logprobs || s.top_logprobs > 0).then_some(s.top_logprobs as usize),
    };
    let room = limits.max_model_len.saturating_sub(prompt_ids.len()).max(1);
    let request = GenerationRequest {
        stop: StopConditions {
            max_tokens: raw.max_tokens.map_or(room, |m| m as usize),
            min_tokens: raw.min_tokens as usize,
            stop_strings: raw.stop.clone(),
            stop_token_ids: raw.stop_token_ids.clone(),
            ignore_eos: raw.ignore_eos,
        },
        prompt_ids,
        sampling,
        skip_special_tokens: raw.skip_special_tokens.unwrap_or(true),
    };
    request.validate(limits).map_err(status_of)?;
    Ok(request)
}

/// Only the full cache runs until KV eviction lands; other policies are refused, not ignored.
fn check_policy(policy: Option<&v1::KvCachePolicy>) -> Result<(), Status> {
    let Some(p) = policy else { return Ok(()) };
    match v1::KvPolicy::try_from(p.policy) {
        Ok(v1::KvPolicy::Unspecified | v1::KvPolicy::Full) => Ok(()),
        Ok(other) => Err(Status::unimplemented(format!(
            "`kv_cache.policy` {} is not available on this server (supported: FULL)",
            other.as_str_name()
        ))),
        Err(_) => Err(Status::invalid_argument(format!(
            "invalid `kv_cache.policy`: unknown value {}",
            p.policy
        ))),
    }
}

/// The gRPC status for a refused or failed request (the one place this mapping lives).
pub fn status_of(error: RequestError) -> Status {
    match error {
        RequestError::InvalidParameter { .. } | RequestError::TooLong { .. } => {
            Status::invalid_argument(error.to_string())
        }
        RequestError::Internal { .. } => Status::internal(error.to_string()),
        RequestError::ShuttingDown => Status::unavailable(error.to_string()),
    }
}

/// A streamed token as a wire chunk.
pub fn chunk(token: TokenEvent) -> v1::GenerateResponse {
    let logprobs = token
        .logprob
        .map(|logprob| v1::TokenLogprob {
            token_id: token.token_id,
            logprob,
            top: token
                .top_logprobs
                .iter()
                .map(|t| v1::TopLogprob {
                    token_id: t.token_id,
                    logprob: t.logprob,
                    text: None,
                })
                .collect(),
        })
        .into_iter()
        .collect();
    v1::GenerateResponse {
        kind: Some(v1::generate_response::Kind::Chunk(v1::Chunk {
            token_ids: vec![token.token_id],
            text: token.text_delta,
            logprobs,
        })),
    }
}

/// The closing message; `last_token` tells EOS from a stop token.
pub fn final_message(
    finished: &FinishedEvent,
    last_token: Option<u32>,
    stop_token_ids: &[u32],
) -> v1::GenerateResponse {
    use v1::FinishReason as Wire;
    let (reason, stop_string, stop_token_id) = match &finished.reason {
        FinishReason::Stop => match last_token {
            Some(t) if stop_token_ids.contains(&t) => (Wire::StopToken, None, Some(t)),
            t => (Wire::Eos, None, t),
        },
        FinishReason::StopString(s) => (Wire::StopString, Some(s.clone()), None),
        FinishReason::Length => (Wire::Length, None, None),
        FinishReason::Abort => (Wire::Abort, None, None),
    };
    let (u, t) = (&finished.usage, &finished.timings);
    v1::GenerateResponse {
        kind: Some(v1::generate_response::Kind::Final(v1::Final {
            finish_reason: reason.into(),
            stop_string,
            stop_token_id,
            usage: Some(v1::Usage {
                prompt_tokens: u.prompt_tokens as u32,
                completion_tokens: u.completion_tokens as u32,
                kv_entries_kept: u.kv_entries_kept as u32,
                kv_blocks_freed: u.kv_blocks_freed as u32,
            }),
            timings: Some(v1::Timings {
                queue_secs: t.queue.as_secs_f64(),
                prefill_secs: t.prefill.as_secs_f64(),
                eviction_secs: t.eviction.as_secs_f64(),
                time_to_first_token_secs: t.time_to_first_token.as_secs_f64(),
                total_secs: t.total.as_secs_f64(),
            }),
            applied_policy: Some(v1::KvCachePolicy {
                policy: v1::KvPolicy::Full.into(),
                ..Default::default()
            }),
        })),
    }
}
