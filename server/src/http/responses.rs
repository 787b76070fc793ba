//! OpenAI response objects: whole completions, stream chunks, log-probabilities and usage with
//! Glimpse's `usage.kv_cache` extension (`policy`, `budget`, `entries_kept`, `blocks_freed`).
//! Built from engine events only; nothing here knows how they arrived.

use std::sync::Arc;

use glimpse_engine::eviction::Policy;
use glimpse_engine::tokenizer::Tokenizer;
use serde_json::{Value, json};

use super::choices::ChoiceOutput;
use crate::engine_loop::{FinishedEvent, TokenEvent};

/// Which endpoint answers: the two differ in object names and choice shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    /// The prefix of generated request ids, which are also the response `id`.
    pub fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        }
    }
}

/// What every object of one response shares.
pub struct Responder {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub tokenizer: Arc<Tokenizer>,
    /// Whether the request asked for log-probabilities.
    pub logprobs: bool,
    /// Whether choices carry their generated `token_ids` (vLLM's `return_token_ids`).
    pub token_ids: bool,
}

impl Responder {
    /// The whole response of a non-streamed request.
    pub fn completion(&self, outputs: &[ChoiceOutput]) -> Value {
        let choices = outputs.iter().enumerate().map(|(index, output)| {
            let finish = output.finished.as_ref().map(|f| f.reason.label());
            let logprobs = self.logprobs(&output.tokens, 0);
            let choice = match self.endpoint {
                Endpoint::Completions => json!({
                    "index": index, "text": output.text, "logprobs": logprobs,
                    "finish_reason": finish,
                }),
                Endpoint::Chat => json!({
                    "index": index,
                    "message": {"role": "assistant", "content": output.text},
                    "logprobs": logprobs, "finish_reason": finish,
                }),
            };
            self.with_token_ids(choice, &output.tokens)
        });
        let finished: Vec<&FinishedEvent> =
            outputs.iter().filter_map(|o| o.finished.as_ref()).collect();
        let object = match self.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion",
        };
        let mut response = self.envelope(object, choices.collect());
        response["usage"] = usage(&finished);
        response
    }

    /// A stream chunk of one choice: `text` (the first chunk of a chat choice also names the
    /// role), `tokens`' log-probabilities starting at character `offset` of the choice's text,
    /// and the finish reason on its last chunk.
    pub fn chunk(
        &self,
        index: usize,
        first: bool,
        text: &str,
        tokens: &[TokenEvent],
        offset: usize,
        finish: Option<&str>,
    ) -> Value {
        let logprobs = self.logprobs(tokens, offset);
        let choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": index, "text": text, "logprobs": logprobs, "finish_reason": finish,
            }),
            Endpoint::Chat => {
                let delta = if first {
                    json!({"role": "assistant", "content": text})
                } else {
                    json!({"content": text})
                };
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        };
        let choice = self.with_token_ids(choice, tokens);
        self.envelope(self.chunk_object(), vec![choice])
    }

    /// `choice` with its `tokens`' ids added when the request asked for them.
    fn with_token_ids(&self, mut choice: Value, tokens: &[TokenEvent]) -> Value {
        if self.token_ids {
            choice["token_ids"] = tokens.iter().map(|t| t.token_id).collect();
        }
        choice
    }

    /// The last chunk of a stream with `include_usage`: no choices, the whole usage.
    pub fn usage_chunk(&self, finished: &[&FinishedEvent]) -> Value {
        let mut chunk = self.envelope(self.chunk_object(), Vec::new());
        chunk["usage"] = usage(finished);
        chunk
    }

    fn chunk_object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion.chunk",
        }
    }

    fn envelope(&self, object: &str, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": choices,
        })
    }

    /// Log-probabilities of `tokens` in the endpoint's shape (`null` when not asked for or when
    /// there are no tokens); `offset` is the character offset of the first token's text.
    fn logprobs(&self, tokens: &[TokenEvent], offset: usize) -> Value {
        if !self.logprobs || tokens.is_empty() {
            return Value::Null;
        }
        let text = |id: u32| self.tokenizer.decode(&[id], false).unwrap_or_default();
        match self.endpoint {
            Endpoint::Completions => {
                let mut offsets = Vec::with_capacity(tokens.len());
                let mut at = offset;
                for token in tokens {
                    offsets.push(at);
                    at += token.text_delta.chars().count();
                }
                json!({
                    "tokens": tokens.iter().map(|t| text(t.token_id)).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    "top_logprobs": tokens.iter().map(|t| {
                        t.top_logprobs.iter().map(|top| (text(top.token_id), json!(top.logprob)))
                            .collect::<serde_json::Map<_, _>>()
                    }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
            Endpoint::Chat => {
                let entry = |id: u32, logprob: f32| {
                    let token = text(id);
                    json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})
                };
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let mut item = entry(t.token_id, t.logprob.unwrap_or(f32::NAN));
                        item["top_logprobs"] = t
                            .top_logprobs
                            .iter()
                            .map(|top| entry(top.token_id, top.logprob))
                            .collect();
                        item
                    })
                    .collect();
                json!({ "content": content })
            }
        }
    }
}

/// Usage of the whole request: the prompt once, completions summed over choices, and the KV
/// policy the request ran with (`budget` null for `full`), with blocks freed summed over choices.
pub fn usage(finished: &[&FinishedEvent]) -> Value {
    let Some(first) = finished.first() else {
        return Value::Null;
    };
    let prompt = first.usage.prompt_tokens;
    let completion: usize = finished.iter().map(|f| f.usage.completion_tokens).sum();
    let policy = first.policy;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "kv_cache": {
            "policy": policy.policy.kind().name(),
            "budget": (policy.policy != Policy::Full).then_some(policy.budget),
            "entries_kept": finished.iter().map(|f| f.usage.kv_entries_kept).max(),
            "blocks_freed": finished.iter().map(|f| f.usage.kv_blocks_freed).sum::<usize>(),
        },
    })
}
