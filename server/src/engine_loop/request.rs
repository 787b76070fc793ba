//! What the engine loop streams back for a request (what it takes is a
//! [`crate::validation::ValidRequest`]).

use std::time::Duration;

use glimpse_engine::eviction::EvictionPolicy;
use glimpse_engine::sampling::TokenLogprob;

use crate::error::RequestError;

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
