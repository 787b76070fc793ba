//! Raw `glimpse.v1` requests become validated engine requests here, once; every refusal names the
//! field, the limit and the value (TGI's `validation.rs` habit). Engine results become wire messages.

use glimpse_engine::config::GenerationConfig;
use glimpse_engine::eviction::{EvictionPolicy, Policy, Pool};
use glimpse_engine::sampling::SamplingParams;
use glimpse_engine::tokenizer::{ChatMessage, Tokenizer};
use glimpse_proto::v1;
use tonic::Status;

use crate::engine_loop::{
    EvictionSettings, FinishReason, FinishedEvent, GenerationRequest, RequestError, RequestLimits,
    StopConditions, TokenEvent,
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
    let kv_cache = eviction_policy(raw.kv_cache.as_ref(), limits.eviction)?;
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
        kv_cache,
    };
    request.validate(limits).map_err(status_of)?;
    Ok(request)
}

/// The request's KV policy, or `None` for the server default. Unset knobs take the policy's
/// defaults (DESIGN §4) and an unset budget the server's; the engine validates the result
/// (budget, window below budget, ...) and whether LookaheadKV is loaded.
fn eviction_policy(
    raw: Option<&v1::KvCachePolicy>,
    settings: EvictionSettings,
) -> Result<Option<EvictionPolicy>, Status> {
    let Some(p) = raw else { return Ok(None) };
    let kind = v1::KvPolicy::try_from(p.policy).map_err(|_| {
        Status::invalid_argument(format!(
            "invalid `kv_cache.policy`: unknown value {}",
            p.policy
        ))
    })?;
    let default = settings.default_policy;
    let pool = match v1::PoolKind::try_from(p.pool) {
        Ok(v1::PoolKind::Unspecified | v1::PoolKind::Max) => Pool::Max,
        Ok(v1::PoolKind::Avg) => Pool::Avg,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "invalid `kv_cache.pool`: unknown value {}",
                p.pool
            )));
        }
    };
    let window = |default: usize| p.window.map_or(default, |w| w as usize);
    let kernel = p.pool_kernel.map_or(7, |k| k as usize);
    let policy = match kind {
        v1::KvPolicy::Unspecified => default.policy,
        v1::KvPolicy::Full => Policy::Full,
        v1::KvPolicy::StreamingLlm => Policy::StreamingLlm {
            sinks: p.sinks.map_or(4, |s| s as usize),
        },
        v1::KvPolicy::Snapkv => Policy::SnapKv {
            window: window(32),
            kernel,
            pool,
        },
        v1::KvPolicy::Pyramidkv => Policy::PyramidKv {
            window: window(32),
            kernel,
            pool,
            beta: beta(p.beta)?,
        },
        v1::KvPolicy::Lookahead => Policy::Lookahead {
            num_tokens: settings.lookahead_tokens.unwrap_or(32),
            window: window(0),
        },
    };
    let budget = match (p.budget, kind) {
        (Some(budget), _) => budget as usize,
        (None, v1::KvPolicy::Unspecified) if default.budget > 0 => default.budget,
        (None, _) => settings.default_budget,
    };
    Ok(Some(EvictionPolicy { policy, budget }))
}

/// PyramidKV's β is a whole number of steps (kvpress takes an int); the wire carries a float.
fn beta(raw: Option<f32>) -> Result<usize, Status> {
    match raw {
        None => Ok(20),
        Some(b) if b >= 1.0 && b.fract() == 0.0 && b <= 1e6 => Ok(b as usize),
        Some(b) => Err(Status::invalid_argument(format!(
            "invalid `kv_cache.beta`: must be a whole number of at least 1, got {b}"
        ))),
    }
}

/// The wire form of a policy, knobs included.
pub fn policy_message(policy: EvictionPolicy) -> v1::KvCachePolicy {
    let mut message = v1::KvCachePolicy {
        budget: (policy.policy != Policy::Full).then_some(policy.budget as u32),
        ..Default::default()
    };
    let pool_kind = |pool: Pool| match pool {
        Pool::Max => v1::PoolKind::Max,
        Pool::Avg => v1::PoolKind::Avg,
    };
    let kind = match policy.policy {
        Policy::Full => v1::KvPolicy::Full,
        Policy::StreamingLlm { sinks } => {
            message.sinks = Some(sinks as u32);
            v1::KvPolicy::StreamingLlm
        }
        Policy::SnapKv {
            window,
            kernel,
            pool,
        } => {
            (message.window, message.pool_kernel) = (Some(window as u32), Some(kernel as u32));
            message.pool = pool_kind(pool).into();
            v1::KvPolicy::Snapkv
        }
        Policy::PyramidKv {
            window,
            kernel,
            pool,
            beta,
        } => {
            (message.window, message.pool_kernel) = (Some(window as u32), Some(kernel as u32));
            message.pool = pool_kind(pool).into();
            message.beta = Some(beta as f32);
            v1::KvPolicy::Pyramidkv
        }
        Policy::Lookahead { window, .. } => {
            message.window = Some(window as u32);
            v1::KvPolicy::Lookahead
        }
    };
    message.policy = kind.into();
    message
}

/// The gRPC status for a refused or failed request (the one place this mapping lives).
pub fn status_of(error: RequestError) -> Status {
    match error {
        RequestError::InvalidParameter { .. } | RequestError::TooLong { .. } => {
            Status::invalid_argument(error.to_string())
        }
        RequestError::NotConfigured { .. } => Status::failed_precondition(error.to_string()),
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
    let (u, t, policy) = (&finished.usage, &finished.timings, finished.policy);
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
            applied_policy: Some(policy_message(policy)),
        })),
    }
}
