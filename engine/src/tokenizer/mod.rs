//! Tokenization, chat templates and incremental detokenization for a Hugging Face model folder.
//!
//! [`Tokenizer`] owns everything text-shaped about a model: the `tokenizer.json` pipeline (via the
//! `tokenizers` crate, so encodings match `transformers`' fast tokenizers id for id), the special
//! tokens and chat template from `tokenizer_config.json` / `special_tokens_map.json`
//! ([`config`]), prompt rendering ([`chat_template`]) and streaming decode ([`detokenizer`]). It
//! knows nothing of sampling, scheduling or the network: callers hand it text or ids.
//!
//! Loading follows `transformers`: `tokenizer.json` defines encode/decode (its post-processor decides
//! which special tokens `encode(.., true)` adds); `special_tokens_map.json` overrides the special
//! tokens of `tokenizer_config.json`; a `chat_template` may be one string or a list of named
//! templates, of which `default` is used.
//!
//! Compatibility note: encodings follow `tokenizer.json` exactly, as the `tokenizers` library,
//! `transformers` 4.x fast tokenizers, TGI and llama.cpp's vocabulary tests do (for Llama-2 this
//! equals SentencePiece). `transformers` 5 rebuilds the pipeline of Llama-style tokenizers and
//! differs from it on leading spaces (15 of llama.cpp's 46 strings) and, for configs with
//! `legacy: false` such as Phi-3, on the word after a special token (`<|user|>\nHi` gives `▁Hi` =
//! 6324 here, `Hi` = 18567 there). Decoding and chat-template rendering are unaffected.

pub mod chat_template;
pub mod config;
pub mod detokenizer;

use std::path::{Path, PathBuf};

pub use chat_template::{ChatMessage, ChatTemplate};
pub use config::{NamedTemplate, SpecialTokenStrings, TokenizerConfig};
pub use detokenizer::IncrementalDetokenizer;

use crate::error::{EngineError, Result};

/// File names inside a model folder.
const TOKENIZER_JSON: &str = "tokenizer.json";
const TOKENIZER_CONFIG_JSON: &str = "tokenizer_config.json";
const SPECIAL_TOKENS_MAP_JSON: &str = "special_tokens_map.json";

/// How the decoder treats a token id (precomputed once per tokenizer, indexed by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// An ordinary vocabulary entry.
    Normal,
    /// A `<0xNN>` token of a byte-fallback tokenizer.
    Byte,
    /// An added token flagged special (dropped by `skip_special_tokens`).
    Special,
    /// An id outside the vocabulary (the decoder ignores it).
    Unknown,
}

/// A model's tokenizer: `tokenizer.json` plus the special tokens and chat template around it.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    config: TokenizerConfig,
    chat_template: Option<ChatTemplate>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    token_kinds: Vec<TokenKind>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` (required), `tokenizer_config.json` and `special_tokens_map.json`
    /// (both optional) from a model folder.
    ///
    /// Fails with [`EngineError::Tokenizer`] naming `tokenizer.json` when it is missing or does not
    /// load, [`EngineError::Config`] naming the file when a config file is malformed, and
    /// [`EngineError::ChatTemplate`] when the default chat template does not parse.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join(TOKENIZER_CONFIG_JSON);
        let mut config = if config_path.is_file() {
            TokenizerConfig::from_file(&config_path)?
        } else {
            TokenizerConfig::default()
        };
        let map_path = dir.join(SPECIAL_TOKENS_MAP_JSON);
        if map_path.is_file() {
            config.apply_special_tokens_map(&map_path)?;
        }
        Self::from_file(dir.join(TOKENIZER_JSON), config)
    }

    /// Loads `tokenizer_json` and combines it with an already-read config.
    ///
    /// Fails like [`Tokenizer::from_dir`].
    pub fn from_file(tokenizer_json: impl AsRef<Path>, config: TokenizerConfig) -> Result<Self> {
        let path = tokenizer_json.as_ref();
        let inner = load_tokenizer_json(path)?;
        let chat_template = config
            .default_chat_template()
            .map(|t| ChatTemplate::new(&t.source, config.special.clone()))
            .transpose()?;
        let lookup = |token: &Option<String>| token.as_deref().and_then(|t| inner.token_to_id(t));
        let bos_token_id = lookup(&config.special.bos_token);
        let eos_token_id = lookup(&config.special.eos_token);
        let token_kinds = token_kinds(&inner);
        Ok(Self {
            inner,
            config,
            chat_template,
            bos_token_id,
            eos_token_id,
            token_kinds,
        })
    }

    /// Token ids of `text`; with `add_special_tokens`, the ones `tokenizer.json`'s post-processor
    /// adds (e.g. Llama's `<s>`). Special-token strings inside `text` map to their ids.
    ///
    /// Fails with [`EngineError::Tokenizer`] if the pipeline fails (not expected for valid UTF-8).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| tokenizer_error(format!("encoding failed: {e}")))
    }

    /// Text of `ids`, as `transformers`' `decode` gives it. Ids outside the vocabulary are ignored.
    ///
    /// Fails with [`EngineError::Tokenizer`] if the decoder fails.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tokenizer_error(format!("decoding failed: {e}")))
    }

    /// Number of tokens including added tokens (`len(tokenizer)` in `transformers`). The model's
    /// embedding table may be larger.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token string (vocabulary or added token).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id (e.g. `▁Hello`, `<0xE2>`, `<|end|>`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Id of the configured BOS token, if it has one in the vocabulary.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// Id of the configured EOS token, if it has one in the vocabulary. Models may declare more
    /// EOS ids in `generation_config.json`; that file is not read here.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// Special-token strings and flags read from the config files.
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// The default chat template, if the folder has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Replaces the model's chat template with `source` (vLLM's `--chat-template`), for models
    /// that ship none or a wrong one.
    ///
    /// Fails with [`EngineError::ChatTemplate`] when `source` does not parse.
    pub fn set_chat_template(&mut self, source: &str) -> Result<()> {
        self.chat_template = Some(ChatTemplate::new(source, self.config.special.clone())?);
        Ok(())
    }

    /// Renders `messages` with the model's chat template (see [`ChatTemplate::render`]).
    /// Templates write special tokens such as `bos_token` into the text themselves, so the caller
    /// encodes the result with `add_special_tokens = false`, as `transformers` does.
    ///
    /// Fails with [`EngineError::ChatTemplate`] when the folder has no template or the template
    /// rejects the conversation.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| EngineError::ChatTemplate {
                message: format!(
                    "the model has no chat template (no `chat_template` in {TOKENIZER_CONFIG_JSON})"
                ),
            })?;
        template.render(messages, add_generation_prompt)
    }

    /// How the decoder treats `id`.
    pub(crate) fn token_kind(&self, id: u32) -> TokenKind {
        self.token_kinds
            .get(id as usize)
            .copied()
            .unwrap_or(TokenKind::Unknown)
    }
}

fn tokenizer_error(message: String) -> EngineError {
    EngineError::Tokenizer { message }
}

fn load_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let display = PathBuf::from(path).display().to_string();
    if !path.is_file() {
        return Err(tokenizer_error(format!("{display}: file not found")));
    }
    tokenizers::Tokenizer::from_file(path)
        .map_err(|e| tokenizer_error(format!("{display}: cannot load: {e}")))
}

/// Classifies every id once, so the detokenizer's per-token check is an index.
fn token_kinds(inner: &tokenizers::Tokenizer) -> Vec<TokenKind> {
    let vocab = inner.get_vocab(true);
    let len = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
    let mut kinds = vec![TokenKind::Unknown; len];
    let byte_fallback = has_byte_fallback_decoder(inner);
    for (token, id) in &vocab {
        kinds[*id as usize] = if byte_fallback && is_byte_token(token) {
            TokenKind::Byte
        } else {
            TokenKind::Normal
        };
    }
    for (id, added) in inner.get_added_tokens_decoder() {
        if added.special
            && let Some(kind) = kinds.get_mut(id as usize)
        {
            *kind = TokenKind::Special;
        }
    }
    kinds
}

/// Whether the decoder pipeline contains a `ByteFallback` step.
fn has_byte_fallback_decoder(inner: &tokenizers::Tokenizer) -> bool {
    inner.get_decoder().is_some_and(|decoder| {
        serde_json::to_string(decoder).is_ok_and(|json| json.contains("\"ByteFallback\""))
    })
}

/// `<0xNN>`, exactly as the `ByteFallback` decoder recognises byte tokens.
fn is_byte_token(token: &str) -> bool {
    token.len() == 6
        && token.starts_with("<0x")
        && token.ends_with('>')
        && u8::from_str_radix(&token[3..5], 16).is_ok()
}

#[cfg(test)]
mod tests;
