//! `glimpse.v1` messages to and from the server's own types: a `GenerateRequest` becomes a
//! [`RawRequest`] for the one validator (only wire enums are decoded here), engine results become
//! wire messages. Refusals are [`RequestError`]s naming the field and the value.

use glimpse_engine::eviction::{EvictionPolicy, Policy, PolicyKind, PolicyKnobs, Pool};
use glimpse_engine::tokenizer::ChatMessage;
use glimpse_proto::v1;

use crate::engine_loop::{FinishReason, FinishedEvent, TokenEvent};
use crate::error::RequestError;
use crate::prompt::{Chat, Prompt};
use crate::validation::{RawPolicy, RawRequest, RawSampling};

/// The prompt of a request, to tokenize with [`crate::prompt::PromptWork`].
pub fn prompt(input: Option<v1::generate_request::Input>) -> Result<Prompt, RequestError> {
    use v1::generate_request::Input;
    match input {
        Some(Input::Text(text)) => Ok(Prompt::Text {
            text,
            field: "text",
        }),
        Some(Input::TokenIds(ids)) => Ok(Prompt::TokenIds(ids.ids)),
        Some(Input::Chat(chat)) => Ok(Prompt::Chat(chat_prompt(chat))),
        None => Err(RequestError::invalid(
            "input",
            "set one of `text`, `token_ids` or `chat`",
        )),
    }
}

/// A wire conversation as a prompt.
pub fn chat_prompt(chat: v1::ChatMessages) -> Chat {
    Chat {
        add_generation_prompt: chat.add_generation_prompt,
        messages: chat_messages(chat.messages),
        field: "chat.messages",
    }
}

/// A wire conversation as the tokenizer takes it.
fn chat_messages(messages: Vec<v1::ChatMessage>) -> Vec<ChatMessage> {
    messages
        .into_iter()
        .map(|m| ChatMessage::new(m.role, m.content))
        .collect()
}

/// The validator's view of `raw`, whose prompt is `prompt_ids`.
pub fn raw_request(
    raw: &v1::GenerateRequest,
    prompt_ids: Vec<u32>,
) -> Result<RawRequest, RequestError> {
    let kv_cache = raw.kv_cache.as_ref().map(raw_policy).transpose()?;
    let s = raw.sampling.unwrap_or_default();
    Ok(RawRequest {
        prompt_ids,
        sampling: RawSampling {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repetition_penalty: s.repetition_penalty,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            seed: s.seed,
            logprobs: (s.logprobs || s.top_logprobs > 0).then_some(s.top_logprobs as usize),
        },
        max_tokens: raw.max_tokens.map(|m| m as usize),
        min_tokens: raw.min_tokens as usize,
        stop_strings: raw.stop.clone(),
        stop_token_ids: raw.stop_token_ids.clone(),
        ignore_eos: raw.ignore_eos,
        skip_special_tokens: raw.skip_special_tokens,
        kv_cache,
    })
}

/// The request's KV policy with its wire enums decoded; the validator resolves the rest.
fn raw_policy(p: &v1::KvCachePolicy) -> Result<RawPolicy, RequestError> {
    let unknown = |field: &'static str, value: i32| {
        RequestError::invalid(field, format!("unknown value {value}"))
    };
    let kind =
        v1::KvPolicy::try_from(p.policy).map_err(|_| unknown("kv_cache.policy", p.policy))?;
    let pool = match v1::PoolKind::try_from(p.pool) {
        Ok(v1::PoolKind::Unspecified) => None,
        Ok(v1::PoolKind::Max) => Some(Pool::Max),
        Ok(v1::PoolKind::Avg) => Some(Pool::Avg),
        Err(_) => return Err(unknown("kv_cache.pool", p.pool)),
    };
    Ok(RawPolicy {
        kind: policy_kind(kind),
        budget: p.budget.map(|b| b as usize),
        knobs: PolicyKnobs {
            sinks: p.sinks.map(|s| s as usize),
            window: p.window.map(|w| w as usize),
            kernel: p.pool_kernel.map(|k| k as usize),
            pool,
            ..PolicyKnobs::default()
        },
        beta: p.beta,
    })
}

/// A wire policy as the engine names it (`None`: unspecified, the server's default).
fn policy_kind(kind: v1::KvPolicy) -> Option<PolicyKind> {
    match kind {
        v1::KvPolicy::Unspecified => None,
        v1::KvPolicy::Full => Some(PolicyKind::Full),
        v1::KvPolicy::StreamingLlm => Some(PolicyKind::StreamingLlm),
        v1::KvPolicy::Snapkv => Some(PolicyKind::SnapKv),
        v1::KvPolicy::Pyramidkv => Some(PolicyKind::PyramidKv),
        v1::KvPolicy::Lookahead => Some(PolicyKind::Lookahead),
    }
}

/// The wire name of an engine policy.
pub fn wire_policy(kind: PolicyKind) -> v1::KvPolicy {
    match kind {
        PolicyKind::Full => v1::KvPolicy::Full,
        PolicyKind::StreamingLlm => v1::KvPolicy::StreamingLlm,
        PolicyKind::SnapKv => v1::KvPolicy::Snapkv,
        PolicyKind::PyramidKv => v1::KvPolicy::Pyramidkv,
        PolicyKind::Lookahead => v1::KvPolicy::Lookahead,
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
    match policy.policy {
        Policy::Full => {}
        Policy::StreamingLlm { sinks } => message.sinks = Some(sinks as u32),
        Policy::SnapKv {
            window,
            kernel,
            pool,
        } => {
            (message.window, message.pool_kernel) = (Some(window as u32), Some(kernel as u32));
            message.pool = pool_kind(pool).into();
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
        }
        Policy::Lookahead { window, .. } => message.window = Some(window as u32),
    }
    message.policy = wire_policy(policy.policy.kind()).into();
    message
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
