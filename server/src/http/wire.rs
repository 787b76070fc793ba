//! OpenAI request bodies as serde mirrors (every field optional, so that a missing field is the
//! converter's to report and a field of the wrong type is named by [`super::body`]). Unknown
//! fields are ignored: OpenAI clients send fields Glimpse does not know.

use serde::Deserialize;
use serde_json::Value;

/// Sampling, stopping and Glimpse's extensions: what both generation endpoints take.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GenerationBody {
    pub model: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// `-1` (vLLM's spelling) or `0`: disabled.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    /// [`StreamOptions`], parsed on its own so its fields are named in errors.
    pub stream_options: Option<Value>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<u32>,
    pub skip_special_tokens: Option<bool>,
    /// vLLM's extension: each choice (and stream chunk) also carries its generated `token_ids`.
    pub return_token_ids: Option<bool>,
    /// [`KvCacheBody`], parsed on its own so its fields are named in errors.
    pub kv_cache: Option<Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CompletionBody {
    pub prompt: Option<PromptBody>,
    /// Alternatives per token (0: the chosen token's log probability only).
    pub logprobs: Option<u32>,
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub generation: GenerationBody,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChatBody {
    pub messages: Option<Vec<MessageBody>>,
    /// Takes precedence over `max_tokens` (OpenAI's newer name).
    pub max_completion_tokens: Option<u32>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub add_generation_prompt: Option<bool>,
    #[serde(flatten)]
    pub generation: GenerationBody,
}

/// A completion prompt: text, or token ids, alone or in a list of one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptBody {
    Text(String),
    TokenIds(Vec<u32>),
    Texts(Vec<String>),
    TokenIdLists(Vec<Vec<u32>>),
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// One chat message; `content` is text or a list of text parts.
#[derive(Debug, Deserialize)]
pub struct MessageBody {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// A part of a message's content; only text parts carry anything this server reads.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    /// A last chunk with no choices and the whole request's usage.
    pub include_usage: Option<bool>,
}

/// Glimpse's `kv_cache` extension: the knobs of gRPC's `KvCachePolicy`, policies and pooling
/// kinds by name.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct KvCacheBody {
    pub policy: Option<String>,
    pub budget: Option<u32>,
    pub window: Option<u32>,
    pub pool_kernel: Option<u32>,
    pub pool: Option<String>,
    pub sinks: Option<u32>,
    pub beta: Option<f32>,
}

/// `POST /tokenize`: a prompt or a conversation.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TokenizeBody {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<MessageBody>>,
    pub add_special_tokens: Option<bool>,
    pub add_generation_prompt: Option<bool>,
}

/// `POST /detokenize`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DetokenizeBody {
    pub model: Option<String>,
    pub tokens: Option<Vec<u32>>,
}
