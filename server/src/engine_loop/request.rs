//! What a client asks the engine loop for, and what it streams back. Raw requests are validated
//! once into a [`GenerationRequest`]; errors name the field, the limit and the value.

use std::time::Duration;

use glimpse_engine::eviction::EvictionPolicy;
use glimpse_engine::sampling::{SamplingParams, TokenLogprob};

/// When a sequence stops, besides running out of `max_tokens`.
#[derive(Debug, Clone, PartialEq)]
pub struct StopConditions {
    /// Generated tokens at most (≥ 1).
    pub max_tokens: usize,
    /// EOS, stop tokens and stop strings are ignored before this many tokens.
    pub min_tokens: usize,
    /// Text that ends generation; it is cut from the output.
    pub stop_strings: Vec<String>,
    /// Extra token ids that end generation (kept in the output, like EOS).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating through the model's EOS tokens.
    pub ignore_eos: bool,
}

impl Default for StopConditions {
    fn default() -> Self {
        Self {
            max_tokens: 16,
            min_tokens: 0,
            stop_strings: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// A validated generation request: a tokenized prompt and how to sample and stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopConditions,
    pub skip_special_tokens: bool,
    /// KV eviction for this request; `None` takes the engine's default policy.
    pub kv_cache: Option<EvictionPolicy>,
}

/// Limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub vocab_size: usize,
    pub max_model_len: usize,
    pub eviction: EvictionSettings,
}

/// KV eviction settings of the whole engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvictionSettings {
    /// The policy of requests that name none.
    pub default_policy: EvictionPolicy,
    /// The budget of requests that name a policy but no budget.
    pub default_budget: usize,
    /// Lookahead tokens of the loaded LookaheadKV module; `None` when no module is loaded, so
    /// the lookahead policy is refused.
    pub lookahead_tokens: Option<usize>,
}

/// Why a request was refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// A parameter is out of range; names the field, the allowed range and the value.
    #[error("invalid `{field}`: {message}")]
    InvalidParameter {
        field: &'static str,
        message: String,
    },
    /// The prompt and `max_tokens` do not fit the model or the KV pool.
    #[error("{message}")]
    TooLong { message: String },
    /// The engine failed while running the request (a bug or a device failure).
    #[error("internal error: {message}")]
    Internal { message: String },
    /// The request asks for something this engine was not started with (LookaheadKV without
    /// a lookahead module).
    #[error("{message}")]
    NotConfigured { message: String },
    /// The engine is shutting down and takes no new requests.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl RequestError {
    /// An engine validation error as the client's fault (`InvalidParameter`, naming the field);
    /// anything else the engine reports is internal.
    pub fn from_engine(error: glimpse_engine::EngineError) -> Self {
        match error {
            glimpse_engine::EngineError::InvalidParameter { field, message } => {
                RequestError::InvalidParameter { field, message }
            }
            other => RequestError::Internal {
                message: other.to_string(),
            },
        }
    }
}

impl GenerationRequest {
    /// Checks everything that does not depend on the engine's momentary state.
    pub fn validate(&self, limits: RequestLimits) -> Result<(), RequestError> {
        let invalid =
            |field, message: String| Err(RequestError::InvalidParameter { field, message });
        if self.prompt_ids.is_empty() {
            return invalid("prompt", "the prompt has no tokens".into());
        }
        if let Some(&bad) = self
            .prompt_ids
            .iter()
            .find(|&&t| t as usize >= limits.vocab_size)
        {
            return invalid(
                "prompt",
                format!(
                    "token id {bad} is outside the vocabulary of {} tokens",
                    limits.vocab_size
                ),
            );
        }
        let stop = &self.stop;
        if stop.max_tokens == 0 {
            return invalid("max_tokens", "must be at least 1, got 0".into());
        }
        if stop.min_tokens > stop.max_tokens {
            return invalid(
                "min_tokens",
                format!(
                    "must not exceed max_tokens ({}), got {}",
                    stop.max_tokens, stop.min_tokens
                ),
            );
        }
        if stop.stop_strings.iter().any(String::is_empty) {
            return invalid("stop", "stop strings must not be empty".into());
        }
        if let Some(&bad) = stop
            .stop_token_ids
            .iter()
            .find(|&&t| t as usize >= limits.vocab_size)
        {
            return invalid(
                "stop_token_ids",
                format!(
                    "token id {bad} is outside the vocabulary of {} tokens",
                    limits.vocab_size
                ),
            );
        }
        self.sampling
            .validate()
            .map_err(RequestError::from_engine)?;
        let total = self.prompt_ids.len() + stop.max_tokens;
        if total > limits.max_model_len {
            return Err(RequestError::TooLong {
                message: format!(
                    "prompt ({} tokens) + max_tokens ({}) = {total} exceeds the model's maximum length of {} tokens",
                    self.prompt_ids.len(),
                    stop.max_tokens,
                    limits.max_model_len
                ),
            });
        }
        Ok(())
    }
}

/// Why a sequence finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS token or one of `stop_token_ids` was generated.
    Stop,
    /// A stop string matched; it is cut from the text.
    StopString(String),
    /// `max_tokens` reached.
    Length,
    /// The client went away or the request was cancelled.
    Abort,
}

impl FinishReason {
    /// The label used in metrics (`finished_reason`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Stop | Self::StopString(_) => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub token_id: u32,
    /// Text that became final with this token (may be empty while a character or a possible stop
    /// string is incomplete).
    pub text_delta: String,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<TokenLogprob>,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// KV entries per layer and KV head the request kept after prefill (the prompt length when
    /// nothing was evicted).
    pub kv_entries_kept: usize,
    pub kv_blocks_freed: usize,
}

/// Where a request's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Arrival → first scheduled.
    pub queue: Duration,
    /// First scheduled → first token.
    pub prefill: Duration,
    /// Scoring, selection and compaction of KV eviction.
    pub eviction: Duration,
    /// Arrival → first token.
    pub time_to_first_token: Duration,
    /// Arrival → finish.
    pub total: Duration,
}

/// The end of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedEvent {
    pub reason: FinishReason,
    /// Text held back until the end (an unfinished character, a partial stop-string match).
    pub text_delta: String,
    pub usage: Usage,
    pub timings: Timings,
    /// The KV eviction policy the request ran with.
    pub policy: EvictionPolicy,
}

/// What the engine streams for a request: tokens, then exactly one `Finished` or `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Token(TokenEvent),
    Finished(FinishedEvent),
    Error(RequestError),
}
