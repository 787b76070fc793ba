//! Prompts as both wires carry them — text, token ids or a chat conversation — turned into token
//! ids, and token ids back into text, for generation and the Tokenize/Detokenize endpoints of
//! both wires. The defaults live here once: special tokens are added to text, not to a rendered
//! chat (its template writes them). The CPU work (tokenizing, template rendering, decoding) runs
//! on tokio's blocking pool, at most `--tokenizer-workers` jobs at once, never on the async
//! runtime that answers health probes and streams tokens (each job counted in
//! `glimpse_tokenizer_jobs_total`); a prompt's size is checked against `--max-prompt-bytes`
//! before any of it.

use std::sync::Arc;

use glimpse_engine::tokenizer::{ChatMessage, Tokenizer};
use tokio::sync::Semaphore;

use crate::error::RequestError;
use crate::metrics::record_tokenizer_job;
use crate::validation::RequestLimits;

/// A conversation and how to render it.
pub struct Chat {
    pub messages: Vec<ChatMessage>,
    /// Whether the template opens the assistant's turn (default true).
    pub add_generation_prompt: Option<bool>,
    /// The wire's name for the messages, for errors (`chat.messages`, `messages`).
    pub field: &'static str,
}

/// A prompt as a wire carries it.
pub enum Prompt {
    /// Text, and the wire's name for it, for errors (`text`, `prompt`).
    Text {
        text: String,
        field: &'static str,
    },
    TokenIds(Vec<u32>),
    Chat(Chat),
}

impl Prompt {
    /// Refuses text, or a chat's roles and contents together, past `--max-prompt-bytes`.
    fn check_size(&self, limits: &RequestLimits) -> Result<(), RequestError> {
        let (field, bytes) = match self {
            Prompt::TokenIds(_) => return Ok(()),
            Prompt::Text { text, field } => (*field, text.len()),
            Prompt::Chat(chat) => (
                chat.field,
                chat.messages
                    .iter()
                    .map(|m| m.role.len() + m.content.len())
                    .sum(),
            ),
        };
        limits.input.check_prompt_bytes(field, bytes)
    }
}

/// Tokenizer work of requests, off the async runtime and bounded; cheap to clone.
#[derive(Clone)]
pub struct PromptWork {
    tokenizer: Arc<Tokenizer>,
    limits: RequestLimits,
    workers: Arc<Semaphore>,
}

impl PromptWork {
    /// Work for `tokenizer` under `limits`, at most `workers` (≥ 1) jobs at once.
    pub fn new(tokenizer: Arc<Tokenizer>, limits: RequestLimits, workers: usize) -> Self {
        Self {
            tokenizer,
            limits,
            workers: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    /// The tokenizer, for cheap per-token lookups.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The prompt's token ids; `add_special_tokens` unset adds them to text and not to a chat,
    /// and token ids are used as given. Fails naming the field when the prompt is past
    /// `--max-prompt-bytes` (before any tokenizing), a chat is empty or its template refuses it,
    /// and when the tokenizer fails.
    pub async fn prompt_ids(
        &self,
        prompt: Prompt,
        add_special_tokens: Option<bool>,
    ) -> Result<Vec<u32>, RequestError> {
        prompt.check_size(&self.limits)?;
        let (text, add_special_tokens) = match prompt {
            Prompt::TokenIds(ids) => return Ok(ids),
            Prompt::Text { text, .. } => (Ok(text), add_special_tokens.unwrap_or(true)),
            Prompt::Chat(chat) => (Err(chat), add_special_tokens.unwrap_or(false)),
        };
        self.run(move |tokenizer| {
            let text = match text {
                Ok(text) => text,
                Err(chat) => render_chat(tokenizer, &chat)?,
            };
            tokenizer
                .encode(&text, add_special_tokens)
                .map_err(RequestError::malformed)
        })
        .await
    }

    /// The text of `ids` (special tokens skipped unless `skip_special_tokens` is false); ids
    /// outside the vocabulary are refused naming `field`.
    pub async fn detokenize(
        &self,
        field: &'static str,
        ids: Vec<u32>,
        skip_special_tokens: Option<bool>,
    ) -> Result<String, RequestError> {
        self.limits.check_vocabulary(field, &ids)?;
        self.run(move |tokenizer| {
            tokenizer
                .decode(&ids, skip_special_tokens.unwrap_or(true))
                .map_err(RequestError::malformed)
        })
        .await
    }

    /// Runs `job` on the blocking pool once a worker is free.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Tokenizer) -> Result<T, RequestError> + Send + 'static,
    ) -> Result<T, RequestError> {
        let _worker = self
            .workers
            .acquire()
            .await
            .expect("the worker semaphore is never closed");
        let tokenizer = Arc::clone(&self.tokenizer);
        record_tokenizer_job();
        tokio::task::spawn_blocking(move || job(&tokenizer))
            .await
            .map_err(|e| RequestError::Internal {
                message: format!("the tokenizer job failed: {e}"),
            })?
    }
}

/// Renders a conversation with the model's chat template.
fn render_chat(tokenizer: &Tokenizer, chat: &Chat) -> Result<String, RequestError> {
    if chat.messages.is_empty() {
        return Err(RequestError::invalid(
            chat.field,
            "at least one message is needed",
        ));
    }
    tokenizer
        .render_chat(&chat.messages, chat.add_generation_prompt.unwrap_or(true))
        .map_err(|e| RequestError::invalid(chat.field, e.to_string()))
}
