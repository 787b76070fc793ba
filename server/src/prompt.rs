//! Prompts as both wires carry them — text, token ids or a chat conversation — turned into token
//! ids, and token ids back into text. The defaults live here once: special tokens are added to
//! text, not to a rendered chat (its template writes them).

use std::borrow::Cow;

use glimpse_engine::tokenizer::{ChatMessage, Tokenizer};

use crate::error::RequestError;
use crate::validation::Validator;

/// A conversation and how to render it.
pub struct Chat<'a> {
    pub messages: &'a [ChatMessage],
    /// Whether the template opens the assistant's turn (default true).
    pub add_generation_prompt: Option<bool>,
    /// The wire's name for the messages, for errors (`chat.messages`, `messages`).
    pub field: &'static str,
}

/// A prompt as a wire carries it.
pub enum Prompt<'a> {
    Text(&'a str),
    TokenIds(Vec<u32>),
    Chat(Chat<'a>),
}

/// The prompt's token ids; `add_special_tokens` unset adds them to text and not to a chat, and
/// token ids are used as given. Fails naming the field when a chat is empty or its template
/// refuses it, and when the tokenizer fails.
pub fn prompt_ids(
    tokenizer: &Tokenizer,
    prompt: Prompt<'_>,
    add_special_tokens: Option<bool>,
) -> Result<Vec<u32>, RequestError> {
    let (text, add_special_tokens) = match prompt {
        Prompt::TokenIds(ids) => return Ok(ids),
        Prompt::Text(text) => (Cow::Borrowed(text), add_special_tokens.unwrap_or(true)),
        Prompt::Chat(chat) => (
            Cow::Owned(render_chat(tokenizer, &chat)?),
            add_special_tokens.unwrap_or(false),
        ),
    };
    tokenizer
        .encode(&text, add_special_tokens)
        .map_err(RequestError::malformed)
}

/// Renders a conversation with the model's chat template.
fn render_chat(tokenizer: &Tokenizer, chat: &Chat<'_>) -> Result<String, RequestError> {
    if chat.messages.is_empty() {
        return Err(RequestError::invalid(
            chat.field,
            "at least one message is needed",
        ));
    }
    tokenizer
        .render_chat(chat.messages, chat.add_generation_prompt.unwrap_or(true))
        .map_err(|e| RequestError::invalid(chat.field, e.to_string()))
}

/// The text of `ids` (special tokens skipped unless `skip_special_tokens` is false); ids outside
/// the vocabulary are refused naming `field`.
pub fn detokenize(
    tokenizer: &Tokenizer,
    validator: &Validator,
    field: &'static str,
    ids: &[u32],
    skip_special_tokens: Option<bool>,
) -> Result<String, RequestError> {
    validator.limits().check_vocabulary(field, ids)?;
    tokenizer
        .decode(ids, skip_special_tokens.unwrap_or(true))
        .map_err(RequestError::malformed)
}
