//! Fuzz targets: one function per parser of bytes Glimpse does not control (model and generation
//! configs, safetensors headers, LookaheadKV module files, chat templates and the messages they
//! render). Each takes arbitrary bytes and must return normally: any input either parses or yields
//! an [`EngineError`](crate::EngineError), never a panic, an arithmetic overflow or an
//! out-of-bounds read. What a target asserts beyond "no panic" is stated on it.
//!
//! `fuzz/` (cargo-fuzz, libFuzzer) drives these for long coverage-guided runs; the engine's
//! `tests/fuzz_corpus.rs` replays the committed corpora and seeded mutations of them under
//! `cargo test` through [`replay`], which the server's request targets share. Not part of the
//! engine's API.

pub mod replay;

use std::path::Path;

use crate::backend::KvGeometry;
use crate::config::{GenerationConfig, ModelConfig};
use crate::error::Result;
use crate::loader::{WeightDtype, read_header};
use crate::lookahead::LookaheadModule;
use crate::model::{BaseModelIdentity, Model};
use crate::tokenizer::{ChatMessage, ChatTemplate, SpecialTokenStrings};

/// `config.json` and `generation_config.json` parsing. A config that resolves must have sizes
/// whose derived widths and KV geometry are computable without overflow.
pub fn config_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(config) = ModelConfig::from_json(&text, Path::new("config.json")) {
        let _ = (config.qkv_width(), config.group_size());
        let _ = KvGeometry::new(&config, 16, 1, crate::config::KvCacheDtype::F32);
    }
    let _ = GenerationConfig::from_json(&text, Path::new("generation_config.json"));
}

/// The weight loader's safetensors header handling: every tensor of a header the loader accepts
/// lies inside the file, and its bytes hold exactly `shape`'s element count in its dtype.
pub fn safetensors_header(data: &[u8]) {
    let Ok(entries) = read_header(Path::new("model.safetensors"), data) else {
        return;
    };
    let mut widened = Vec::new();
    for entry in entries {
        let bytes = data
            .get(entry.bytes.clone())
            .expect("an accepted header's byte ranges lie inside the file");
        let Some(dtype) = WeightDtype::of(entry.dtype) else {
            continue;
        };
        let elements = entry
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .expect("an accepted header's shapes have a representable element count");
        assert_eq!(bytes.len(), elements * dtype.size_bytes(), "{}", entry.name);
        widened.clear();
        dtype.widen_into(bytes, &mut widened);
    }
}

/// LookaheadKV module files, checked against one loaded base model (the bundled stories260K in
/// the corpora, so that valid seeds get past the identity check).
pub struct LookaheadTarget {
    model: Model,
    identity: BaseModelIdentity,
}

impl LookaheadTarget {
    /// Loads the base model in `model_dir` and its identity once, for many runs.
    pub fn new(model_dir: &Path) -> Result<Self> {
        let model = Model::load(model_dir)?;
        let identity = model.identity()?;
        Ok(Self { model, identity })
    }

    /// One input: a module file's bytes.
    pub fn run(&self, data: &[u8]) {
        let path = Path::new("lookahead.safetensors");
        let _ = LookaheadModule::from_bytes(path, data, &self.model, &self.identity);
    }
}

/// Chat templates and the messages they render. The input, as UTF-8 (lossy), is split at NUL
/// characters: the first part is the template's source, each further part a message whose role
/// alternates `user`/`assistant` unless the part names one before a `\x01` (`system\x01text`).
pub fn chat_template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let source = parts.next().unwrap_or_default();
    let messages: Vec<ChatMessage> = parts
        .enumerate()
        .map(|(i, part)| match part.split_once('\x01') {
            Some((role, content)) => ChatMessage::new(role, content),
            None => ChatMessage::new(["user", "assistant"][i % 2], part),
        })
        .collect();
    let special = SpecialTokenStrings {
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        unk_token: None,
        pad_token: None,
    };
    if let Ok(template) = ChatTemplate::new(source, special) {
        let _ = template.render(&messages, true);
    }
}
