//! OpenAI bodies into the server's wire-neutral [`RawRequest`] for the one validator: prompts
//! through [`crate::prompt`] (chat through the model's template, as gRPC chat), the `kv_cache`
//! extension into a [`RawPolicy`] with policy and pooling names parsed by the engine's own tables.
//! Only what OpenAI spells differently from gRPC is decoded here; every limit is the validator's.

use glimpse_engine::EngineError;
use glimpse_engine::eviction::{PolicyKind, PolicyKnobs, Pool};
use glimpse_engine::tokenizer::ChatMessage;
use serde_json::Value;

use super::body;
use super::wire::{
    ChatBody, CompletionBody, Content, GenerationBody, KvCacheBody, MessageBody, PromptBody, Stop,
    StreamOptions,
};
use crate::error::RequestError;
use crate::prompt::{Chat, Prompt, PromptWork};
use crate::validation::{RawPolicy, RawRequest, RawSampling};

/// A generation request ready to submit: the request of choice 0 and how to answer.
#[derive(Debug)]
pub struct Plan {
    pub raw: RawRequest,
    /// Choices: separate sequences of the same prompt.
    pub n: usize,
    pub stream: bool,
    /// With `stream`: a last chunk with no choices and the usage.
    pub include_usage: bool,
    /// Choices and chunks carry their generated `token_ids` (vLLM's `return_token_ids`).
    pub return_token_ids: bool,
}

/// Refuses a `model` other than the served one; no `model` means the served one.
pub fn check_model(model: Option<&str>, served: &str) -> Result<(), RequestError> {
    match model {
        Some(requested) if requested != served => Err(RequestError::UnknownModel {
            requested: requested.into(),
            served: served.into(),
        }),
        _ => Ok(()),
    }
}

/// `POST /v1/completions`.
pub async fn completion(body: CompletionBody, prompts: &PromptWork) -> Result<Plan, RequestError> {
    if body.echo == Some(true) {
        return Err(RequestError::invalid("echo", "is not supported, got true"));
    }
    let one = |len: usize| {
        RequestError::invalid(
            "prompt",
            format!("one prompt per request is supported, got a list of {len}"),
        )
    };
    let prompt = match body.prompt {
        None => return Err(RequestError::invalid("prompt", "a prompt is needed")),
        Some(PromptBody::Text(text)) => text,
        Some(PromptBody::TokenIds(ids)) => return plan_for(body.generation, ids, body.logprobs),
        Some(PromptBody::Texts(mut texts)) if texts.len() == 1 => texts.remove(0),
        Some(PromptBody::TokenIdLists(mut lists)) if lists.len() == 1 => {
            return plan_for(body.generation, lists.remove(0), body.logprobs);
        }
        Some(PromptBody::Texts(texts)) => return Err(one(texts.len())),
        Some(PromptBody::TokenIdLists(lists)) => return Err(one(lists.len())),
    };
    let prompt = Prompt::Text {
        text: prompt,
        field: "prompt",
    };
    let ids = prompts.prompt_ids(prompt, None).await?;
    plan_for(body.generation, ids, body.logprobs)
}

fn plan_for(
    generation: GenerationBody,
    prompt_ids: Vec<u32>,
    logprobs: Option<u32>,
) -> Result<Plan, RequestError> {
    let max_tokens = generation.max_tokens;
    plan(generation, prompt_ids, logprobs, max_tokens)
}

/// `POST /v1/chat/completions`.
pub async fn chat(body: ChatBody, prompts: &PromptWork) -> Result<Plan, RequestError> {
    let chat = chat_prompt(
        body.messages.unwrap_or_default(),
        body.add_generation_prompt,
    );
    let ids = prompts.prompt_ids(Prompt::Chat(chat), None).await?;
    let logprobs = match (body.logprobs, body.top_logprobs) {
        (Some(true), top) => Some(top.unwrap_or(0)),
        (_, Some(top)) if top > 0 => {
            return Err(RequestError::invalid(
                "top_logprobs",
                format!("needs `logprobs: true`, got {top} without it"),
            ));
        }
        _ => None,
    };
    let max_tokens = body.max_completion_tokens.or(body.generation.max_tokens);
    plan(body.generation, ids, logprobs, max_tokens)
}

/// OpenAI's `messages` as a prompt.
pub fn chat_prompt(messages: Vec<MessageBody>, add_generation_prompt: Option<bool>) -> Chat {
    Chat {
        messages: chat_messages(messages),
        add_generation_prompt,
        field: "messages",
    }
}

/// A conversation as the tokenizer takes it; text parts of a message are joined.
fn chat_messages(messages: Vec<MessageBody>) -> Vec<ChatMessage> {
    messages
        .into_iter()
        .map(|m| {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => parts
                    .into_iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text)
                    .collect(),
            };
            ChatMessage::new(m.role, content)
        })
        .collect()
}

fn plan(
    g: GenerationBody,
    prompt_ids: Vec<u32>,
    logprobs: Option<u32>,
    max_tokens: Option<u32>,
) -> Result<Plan, RequestError> {
    let n = match g.n {
        Some(0) => return Err(RequestError::invalid("n", "must be at least 1, got 0")),
        n => n.unwrap_or(1) as usize,
    };
    let top_k = match g.top_k {
        None => None,
        Some(-1) => Some(0),
        Some(k) => Some(u32::try_from(k).map_err(|_| {
            RequestError::invalid(
                "top_k",
                format!("must be -1 or 0 (disabled) or a positive count, got {k}"),
            )
        })?),
    };
    let stream = g.stream.unwrap_or(false);
    let options: StreamOptions = match g.stream_options {
        None | Some(Value::Null) => StreamOptions::default(),
        Some(value) => body::object(value, "stream_options.")?,
    };
    let kv_cache = match g.kv_cache {
        None | Some(Value::Null) => None,
        Some(value) => Some(raw_policy(body::object(value, "kv_cache.")?)?),
    };
    let stop_strings = match g.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    let raw = RawRequest {
        prompt_ids,
        sampling: RawSampling {
            temperature: g.temperature,
            top_k,
            top_p: g.top_p,
            min_p: g.min_p,
            repetition_penalty: g.repetition_penalty,
            presence_penalty: g.presence_penalty,
            frequency_penalty: g.frequency_penalty,
            seed: g.seed,
            logprobs: logprobs.map(|k| k as usize),
        },
        max_tokens: max_tokens.map(|m| m as usize),
        min_tokens: g.min_tokens.unwrap_or(0) as usize,
        stop_strings,
        stop_token_ids: g.stop_token_ids.unwrap_or_default(),
        ignore_eos: g.ignore_eos.unwrap_or(false),
        skip_special_tokens: g.skip_special_tokens,
        kv_cache,
    };
    Ok(Plan {
        raw,
        n,
        stream,
        include_usage: stream && options.include_usage.unwrap_or(false),
        return_token_ids: g.return_token_ids.unwrap_or(false),
    })
}

/// The `kv_cache` extension: names parsed by the engine's policy and pooling tables; the
/// validator resolves the rest, as for gRPC.
fn raw_policy(body: KvCacheBody) -> Result<RawPolicy, RequestError> {
    let named = |field: &'static str| {
        move |error: EngineError| match error {
            EngineError::InvalidParameter { message, .. } => RequestError::invalid(field, message),
            other => RequestError::from_engine(other),
        }
    };
    let kind = body
        .policy
        .as_deref()
        .map(str::parse::<PolicyKind>)
        .transpose()
        .map_err(named("kv_cache.policy"))?;
    let pool = body
        .pool
        .as_deref()
        .map(str::parse::<Pool>)
        .transpose()
        .map_err(named("kv_cache.pool"))?;
    Ok(RawPolicy {
        kind,
        budget: body.budget.map(|b| b as usize),
        knobs: PolicyKnobs {
            sinks: body.sinks.map(|s| s as usize),
            window: body.window.map(|w| w as usize),
            kernel: body.pool_kernel.map(|k| k as usize),
            pool,
            ..PolicyKnobs::default()
        },
        beta: body.beta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_cache_names_parse_through_the_engine_tables_and_unknown_ones_are_named() {
        let policy = raw_policy(KvCacheBody {
            policy: Some("snapkv".into()),
            pool: Some("avg".into()),
            budget: Some(64),
            ..KvCacheBody::default()
        })
        .unwrap();
        assert_eq!(policy.kind, Some(PolicyKind::SnapKv));
        assert_eq!(
            (policy.knobs.pool, policy.budget),
            (Some(Pool::Avg), Some(64))
        );
        let error = raw_policy(KvCacheBody {
            policy: Some("h2o".into()),
            ..KvCacheBody::default()
        })
        .unwrap_err();
        let RequestError::InvalidParameter { field, message } = error else {
            panic!("{error:?}");
        };
        assert_eq!(field, "kv_cache.policy");
        assert!(
            message.contains("lookahead") && message.contains("`h2o`"),
            "{message}"
        );
    }

    #[test]
    fn n_zero_and_a_negative_top_k_other_than_minus_one_are_refused() {
        for (generation, field) in [
            (
                GenerationBody {
                    n: Some(0),
                    ..GenerationBody::default()
                },
                "n",
            ),
            (
                GenerationBody {
                    top_k: Some(-2),
                    ..GenerationBody::default()
                },
                "top_k",
            ),
        ] {
            let error = plan(generation, vec![1], None, None).unwrap_err();
            assert!(
                matches!(&error, RequestError::InvalidParameter { field: f, .. } if f == field),
                "{error:?}"
            );
        }
        let disabled = GenerationBody {
            top_k: Some(-1),
            ..GenerationBody::default()
        };
        assert_eq!(
            plan(disabled, vec![1], None, None)
                .unwrap()
                .raw
                .sampling
                .top_k,
            Some(0)
        );
    }
}
