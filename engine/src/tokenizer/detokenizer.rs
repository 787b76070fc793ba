//! Incremental detokenization: turning a stream of sampled token ids into text deltas.
//!
//! Decoding a token on its own is wrong in two ways: a character may be spread over several tokens
//! (byte-level BPE pieces, SentencePiece `<0xE2><0x82><0xAC>` byte fallback), and SentencePiece
//! decoders drop the leading space of the first token they see. So, like TGI and vLLM, the
//! detokenizer keeps a short window of ids starting at a *prefix offset* (tokens already emitted,
//! kept as context) with a *read offset* after them, decodes the window, and emits the text beyond
//! the prefix's decoded length once it is final.
//!
//! Text is final when (a) it does not end in U+FFFD (an incomplete UTF-8 sequence may still be
//! completed), and (b) for byte-fallback tokenizers, the last visible token is not a `<0xNN>` byte
//! token: the full decode turns a whole run of byte tokens into U+FFFDs if any byte of the run is
//! invalid, so a run's text can change until a non-byte token closes it. Special tokens hidden by
//! `skip_special_tokens` are transparent here, as they are to the decoder. Hence the invariant,
//! held by property tests: the concatenation of all deltas and [`IncrementalDetokenizer::finish`]
//! equals `Tokenizer::decode` of all ids, and no delta holds a U+FFFD the full decode lacks.
//!
//! Cost per token: one decode of the window (two when text is emitted). The window is the tokens
//! since the previous emission plus the ones before it, so it stays a few tokens long; ids before
//! the prefix offset are dropped. Only text that is not final (a run of byte tokens, a sequence
//! ending in U+FFFD) makes it longer.
//!
//! Stop strings: deltas concatenate to the decoded text, so a caller that matches stop strings
//! keeps the last `longest_stop_string - 1` bytes of earlier deltas and searches them joined with
//! the new delta; this module does not know about stop strings.

use std::sync::Arc;

use super::{TokenKind, Tokenizer};
use crate::error::Result;

/// Streams text deltas for one sequence. Holds an `Arc` of the tokenizer so it can live in
/// per-request state; create one per request.
#[derive(Debug)]
pub struct IncrementalDetokenizer {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    /// Ids from the prefix offset on (earlier ids are dropped).
    ids: Vec<u32>,
    /// Index into `ids` of the first token whose text is not emitted yet.
    read_offset: usize,
    /// Byte length of `decode(ids[..read_offset])`.
    prefix_text_bytes: usize,
    /// Whether the last token the decoder sees is a `<0xNN>` byte-fallback token.
    in_byte_run: bool,
}

impl IncrementalDetokenizer {
    /// A detokenizer for generated ids with no context: deltas concatenate to
    /// `tokenizer.decode(all_ids, skip_special_tokens)`.
    pub fn new(tokenizer: Arc<Tokenizer>, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            read_offset: 0,
            prefix_text_bytes: 0,
            in_byte_run: false,
        }
    }

    /// A detokenizer that continues after `context` (typically the last few prompt ids): deltas
    /// concatenate to the part of `decode(context ++ generated)` after `decode(context)`, so the
    /// first generated word keeps its leading space as it would in the full text.
    ///
    /// Fails when decoding the context fails (see [`Tokenizer::decode`]).
    pub fn with_context(
        tokenizer: Arc<Tokenizer>,
        context: &[u32],
        skip_special_tokens: bool,
    ) -> Result<Self> {
        let mut this = Self::new(tokenizer, skip_special_tokens);
        for &id in context {
            this.track_byte_run(id);
        }
        this.ids.extend_from_slice(context);
        this.read_offset = context.len();
        this.prefix_text_bytes = this.decode_window()?.len();
        Ok(this)
    }

    /// Adds one token; returns the text that became final, if any.
    ///
    /// Fails only when the underlying decoder fails (see [`Tokenizer::decode`]).
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        self.track_byte_run(id);
        if self.in_byte_run {
            return Ok(None);
        }
        let text = self.decode_window()?;
        let final_text = !text.ends_with('\u{FFFD}');
        if final_text && text.len() > self.prefix_text_bytes {
            self.emit(text).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Flushes whatever is pending (incomplete characters come out as U+FFFD, as in the full
    /// decode). The detokenizer stays usable: later ids continue the same text.
    ///
    /// Fails only when the underlying decoder fails.
    pub fn finish(&mut self) -> Result<String> {
        let text = self.decode_window()?;
        if text.len() > self.prefix_text_bytes {
            self.emit(text)
        } else {
            Ok(String::new())
        }
    }

    /// Ids currently held in the window (for tests and diagnostics; stays small).
    pub fn window_len(&self) -> usize {
        self.ids.len()
    }

    fn track_byte_run(&mut self, id: u32) {
        match self.tokenizer.token_kind(id) {
            TokenKind::Byte => self.in_byte_run = true,
            TokenKind::Special if self.skip_special_tokens => {}
            TokenKind::Unknown => {}
            TokenKind::Special | TokenKind::Normal => self.in_byte_run = false,
        }
    }

    fn decode_window(&self) -> Result<String> {
        self.tokenizer.decode(&self.ids, self.skip_special_tokens)
    }

    /// Emits `window_text` past the prefix and slides the window: the read tokens become the
    /// new prefix.
    fn emit(&mut self, window_text: String) -> Result<String> {
        debug_assert!(
            window_text.is_char_boundary(self.prefix_text_bytes),
            "window text must extend the prefix text at a char boundary"
        );
        let delta = window_text
            .get(self.prefix_text_bytes..)
            .unwrap_or_default()
            .to_owned();
        self.ids.drain(..self.read_offset);
        self.read_offset = self.ids.len();
        self.prefix_text_bytes = self.decode_window()?.len();
        Ok(delta)
    }
}
