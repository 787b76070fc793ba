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
//! invalid, so a run's text can change until a non-byte token closes it (the price: a character
//! spelled in byte tokens comes out with the token after it, or from `finish`; TGI and vLLM emit it
//! at once and can then disagree with the full decode). Special tokens hidden by
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::tokenizer::tests::{gpt2, llama2, stories};

    /// Streams `ids` and returns the deltas (the last one from `finish`, possibly empty).
    fn stream(tokenizer: &Arc<Tokenizer>, ids: &[u32], skip: bool) -> Vec<String> {
        let mut detok = IncrementalDetokenizer::new(tokenizer.clone(), skip);
        let mut deltas: Vec<String> = ids
            .iter()
            .filter_map(|&id| detok.push(id).expect("push decodes"))
            .collect();
        deltas.push(detok.finish().expect("finish decodes"));
        deltas
    }

    /// Each delta is exactly the next slice of the full decode: the concatenation equals it, no
    /// delta splits a character, and a delta holds U+FFFD only where the full decode does.
    fn assert_deltas_tile(full: &str, deltas: &[String]) -> std::result::Result<(), TestCaseError> {
        let mut offset = 0;
        for delta in deltas {
            let end = offset + delta.len();
            prop_assert!(
                full.is_char_boundary(offset) && end <= full.len() && full.is_char_boundary(end),
                "delta {delta:?} at byte {offset} does not fit {full:?}"
            );
            prop_assert_eq!(
                &full[offset..end],
                delta.as_str(),
                "delta at byte {}",
                offset
            );
            offset = end;
        }
        prop_assert_eq!(offset, full.len(), "deltas cover {:?}", full);
        Ok(())
    }

    fn check_ids(
        tokenizer: &Arc<Tokenizer>,
        ids: &[u32],
        skip: bool,
    ) -> std::result::Result<(), TestCaseError> {
        let full = tokenizer.decode(ids, skip).expect("decodes");
        assert_deltas_tile(&full, &stream(tokenizer, ids, skip))
    }

    fn check_text(
        tokenizer: &Arc<Tokenizer>,
        text: &str,
    ) -> std::result::Result<(), TestCaseError> {
        let ids = tokenizer.encode(text, true).expect("encodes");
        for skip in [false, true] {
            let full = tokenizer.decode(&ids, skip).expect("decodes");
            let deltas = stream(tokenizer, &ids, skip);
            assert_deltas_tile(&full, &deltas)?;
            for delta in &deltas {
                prop_assert!(
                    !delta.contains('\u{FFFD}') || full.contains('\u{FFFD}'),
                    "delta {delta:?} of valid text {text:?} holds U+FFFD"
                );
            }
        }
        Ok(())
    }

    /// Ids of byte-fallback vocabularies: mostly `<0xNN>` tokens (ids 3..=258), some words,
    /// special tokens and a few ids past the vocabulary.
    fn sentencepiece_ids(vocab: u32) -> impl Strategy<Value = Vec<u32>> {
        let id = prop_oneof![3u32..259, 0u32..vocab + 3, 0u32..3, 0xE2u32 + 3..0xE3 + 3];
        prop::collection::vec(id, 0..48)
    }

    /// Text that stresses multi-byte characters: emoji (with ZWJ), CJK, accents, spaces.
    fn tricky_text() -> impl Strategy<Value = String> {
        let pieces = prop_oneof![
            Just("€".to_owned()),
            Just("🦙".to_owned()),
            Just("👩‍👩‍👧".to_owned()),
            Just("日本語".to_owned()),
            Just("é".to_owned()),
            Just(" ".to_owned()),
            Just("  ".to_owned()),
            Just("\n".to_owned()),
            Just("Hello".to_owned()),
            Just("</s>".to_owned()),
            "\\PC{1,6}",
        ];
        prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_ids_stream_to_the_full_decode_on_the_bundled_byte_fallback_vocab(
            ids in sentencepiece_ids(512), skip in any::<bool>()
        ) {
            check_ids(&stories(), &ids, skip)?;
        }

        #[test]
        fn random_ids_stream_to_the_full_decode_on_llama2(
            ids in sentencepiece_ids(32000), skip in any::<bool>()
        ) {
            check_ids(&llama2(), &ids, skip)?;
        }

        #[test]
        fn random_ids_stream_to_the_full_decode_on_byte_level_gpt2(
            ids in prop::collection::vec(prop_oneof![0u32..50257, 50256u32..50260, 30u32..250], 0..48),
            skip in any::<bool>()
        ) {
            check_ids(&gpt2(), &ids, skip)?;
        }

        #[test]
        fn encoded_unicode_streams_without_replacement_characters(text in tricky_text()) {
            check_text(&stories(), &text)?;
            check_text(&llama2(), &text)?;
            check_text(&gpt2(), &text)?;
        }

        #[test]
        fn streaming_after_a_context_continues_the_full_text(text in tricky_text(), cut in 0usize..64) {
            for tokenizer in [llama2(), gpt2()] {
                let ids = tokenizer.encode(&text, false).expect("encodes");
                let cut = cut.min(ids.len());
                let (context, generated) = ids.split_at(cut);
                let full = tokenizer.decode(&ids, false).expect("decodes");
                let head = tokenizer.decode(context, false).expect("decodes");
                // A cut inside a character leaves no clean prefix to continue from.
                if !full.starts_with(&head) || head.ends_with('\u{FFFD}') {
                    continue;
                }
                let mut detok = IncrementalDetokenizer::with_context(tokenizer.clone(), context, false)
                    .expect("context decodes");
                let mut deltas: Vec<String> =
                    generated.iter().filter_map(|&id| detok.push(id).expect("push")).collect();
                deltas.push(detok.finish().expect("finish"));
                assert_deltas_tile(&full[head.len()..], &deltas)?;
            }
        }
    }

    #[test]
    fn byte_fallback_euro_comes_out_as_one_delta() {
        let tokenizer = llama2();
        let euro =
            ["<0xE2>", "<0x82>", "<0xAC>"].map(|t| tokenizer.token_to_id(t).expect("byte token"));
        let word = tokenizer.encode("ok", false).expect("encodes");
        let mut detok = IncrementalDetokenizer::new(tokenizer.clone(), true);
        let mut deltas = Vec::new();
        for &id in euro.iter().chain(&word) {
            deltas.extend(detok.push(id).expect("push"));
        }
        deltas.push(detok.finish().expect("finish"));
        assert_eq!(
            deltas.concat(),
            tokenizer
                .decode(&[&euro[..], &word[..]].concat(), true)
                .expect("decodes")
        );
        assert_eq!(
            deltas[0], "€ ok",
            "the byte run is released with the token that closes it"
        );
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')));
    }

    #[test]
    fn sentencepiece_words_keep_their_leading_spaces() {
        let tokenizer = llama2();
        let ids = tokenizer.encode("Hello big world", false).expect("encodes");
        let deltas = stream(&tokenizer, &ids, true);
        assert_eq!(deltas, ["Hello", " big", " world", ""]);
    }

    #[test]
    fn a_context_gives_the_first_generated_word_its_space() {
        let tokenizer = llama2();
        let context = tokenizer.encode("Hello", false).expect("encodes");
        let generated =
            tokenizer.encode("Hello world", false).expect("encodes")[context.len()..].to_vec();
        let mut detok =
            IncrementalDetokenizer::with_context(tokenizer, &context, true).expect("context");
        let delta = generated
            .iter()
            .filter_map(|&id| detok.push(id).expect("push"))
            .collect::<String>();
        assert_eq!(delta, " world");
    }

    #[test]
    fn the_window_stays_small_over_a_long_stream() {
        let tokenizer = llama2();
        let text = "The quick brown fox jumps over the lazy dog; 日本語 and 🦙 too. ".repeat(60);
        let ids = tokenizer.encode(&text, false).expect("encodes");
        assert!(ids.len() > 1000);
        let mut detok = IncrementalDetokenizer::new(tokenizer.clone(), false);
        let mut out = String::new();
        let mut max_window = 0;
        for &id in &ids {
            out.extend(detok.push(id).expect("push"));
            max_window = max_window.max(detok.window_len());
        }
        out.push_str(&detok.finish().expect("finish"));
        assert_eq!(out, text);
        assert!(max_window <= 16, "window grew to {max_window} tokens");
    }
}
