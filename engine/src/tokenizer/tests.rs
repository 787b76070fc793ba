//! Tests against real tokenizer files: llama.cpp vocabulary vectors, the bundled model's golden
//! encodings, `transformers` chat-template renderings, and bad input.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use super::*;

pub(crate) fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizers")
}

fn bundled_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stories260K")
}

fn cached(cell: &'static OnceLock<Arc<Tokenizer>>, dir: PathBuf) -> Arc<Tokenizer> {
    cell.get_or_init(|| {
        let tokenizer = Tokenizer::from_dir(&dir);
        Arc::new(tokenizer.unwrap_or_else(|e| panic!("loading {}: {e}", dir.display())))
    })
    .clone()
}

/// GPT-2: byte-level BPE.
pub(crate) fn gpt2() -> Arc<Tokenizer> {
    static CELL: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    cached(&CELL, data_dir().join("gpt2"))
}

/// Llama-2: SentencePiece BPE with byte fallback.
pub(crate) fn llama2() -> Arc<Tokenizer> {
    static CELL: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    cached(&CELL, data_dir().join("llama2"))
}

/// Phi-3-mini: Llama-2 vocabulary plus chat tokens and a chat template.
pub(crate) fn phi3() -> Arc<Tokenizer> {
    static CELL: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    cached(&CELL, data_dir().join("phi3-mini"))
}

/// The bundled stories260K model: 512-token SentencePiece vocabulary with byte fallback.
pub(crate) fn stories() -> Arc<Tokenizer> {
    static CELL: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    cached(&CELL, bundled_model_dir())
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Checks every llama.cpp test string of `vocab` (`ggml-vocab-{vocab}.gguf.{inp,out}`).
fn check_llamacpp_vectors(tokenizer: &Tokenizer, vocab: &str) -> usize {
    let dir = data_dir().join("llamacpp-vocab-tests");
    let read = |ext: &str| {
        let path = dir.join(format!("ggml-vocab-{vocab}.gguf.{ext}"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let inputs = read("inp");
    let mut inputs: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
    assert_eq!(inputs.pop(), Some(""), "inputs end with a separator");
    let outputs = read("out");
    let outputs: Vec<&str> = outputs.lines().collect();
    assert_eq!(inputs.len(), outputs.len(), "one id line per input");
    for (text, line) in inputs.iter().zip(&outputs) {
        let expected: Vec<u32> = line
            .split_whitespace()
            .map(|id| id.parse().expect("ids are integers"))
            .collect();
        let ids = tokenizer.encode(text, false).expect("encodes");
        assert_eq!(ids, expected, "{vocab}: encoding {text:?}");
    }
    inputs.len()
}

#[test]
fn gpt2_matches_llamacpp_vectors_and_round_trips() {
    let tokenizer = gpt2();
    assert_eq!(check_llamacpp_vectors(&tokenizer, "gpt-2"), 46);
    for text in ["Hello world", " \u{1F999} caf\u{e9}\n\n\tx", ""] {
        let ids = tokenizer.encode(text, false).expect("encodes");
        assert_eq!(tokenizer.decode(&ids, false).expect("decodes"), text);
    }
}

#[test]
fn llama2_matches_llamacpp_vectors() {
    assert_eq!(check_llamacpp_vectors(&llama2(), "llama-spm"), 46);
}

#[test]
fn phi3_matches_llamacpp_vectors() {
    assert_eq!(check_llamacpp_vectors(&phi3(), "phi-3"), 46);
}

#[test]
fn bundled_model_matches_golden_encodings_with_bos() {
    let tokenizer = stories();
    let golden = read_json(&bundled_model_dir().join("golden.json"));
    let cases = golden["tokenizer_cases"]
        .as_array()
        .expect("tokenizer_cases");
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|id| id.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(
            tokenizer.encode(text, true).expect("encodes"),
            expected,
            "{text:?}"
        );
        assert_eq!(tokenizer.decode(&expected, true).expect("decodes"), text);
    }
}

#[test]
fn special_token_ids_come_from_the_config_files() {
    let llama = llama2();
    assert_eq!(
        (llama.bos_token_id(), llama.eos_token_id()),
        (Some(1), Some(2))
    );
    assert_eq!(llama.vocab_size(), 32000);
    assert_eq!(llama.encode("Hi", true).expect("encodes").first(), Some(&1));
    let phi = phi3();
    assert_eq!(
        (phi.bos_token_id(), phi.eos_token_id()),
        (Some(1), Some(32000))
    );
    assert_eq!(phi.token_to_id("<|end|>"), Some(32007));
    assert_eq!(phi.id_to_token(32007).as_deref(), Some("<|end|>"));
    assert_eq!(
        phi.encode("Hi", true).expect("encodes"),
        phi.encode("Hi", false).expect("encodes")
    );
    let gpt = gpt2();
    assert_eq!((gpt.bos_token_id(), gpt.eos_token_id()), (None, None));
    assert_eq!(gpt.vocab_size(), 50257);
    assert_eq!(gpt.token_to_id("<|endoftext|>"), Some(50256));
    let tiny = stories();
    assert_eq!(
        (tiny.bos_token_id(), tiny.eos_token_id(), tiny.vocab_size()),
        (Some(1), Some(2), 512)
    );
}

#[test]
fn decode_skips_special_tokens_on_request() {
    let phi = phi3();
    // `<|user|>` is an added token with `rstrip`, so it absorbs the newline after it.
    let ids = phi.encode("<|user|>\nHi<|end|>", false).expect("encodes");
    assert_eq!(ids, [32010, 6324, 32007]);
    assert_eq!(
        phi.decode(&ids, false).expect("decodes"),
        "<|user|> Hi<|end|>"
    );
    assert_eq!(phi.decode(&ids, true).expect("decodes"), "Hi");
}

#[test]
fn chat_templates_render_exactly_like_transformers() {
    let fixture = read_json(&data_dir().join("chat_template_cases.json"));
    let host = phi3();
    let special = &host.config().special;
    let templates: Vec<(String, ChatTemplate)> = fixture["templates"]
        .as_object()
        .expect("templates")
        .iter()
        .map(|(name, src)| {
            let source = src.as_str().expect("template source");
            let template = ChatTemplate::new(source, special.clone());
            (
                name.clone(),
                template.unwrap_or_else(|e| panic!("{name}: {e}")),
            )
        })
        .collect();
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30, "fixture has {} cases", cases.len());
    for case in cases {
        let template_name = case["template"].as_str().expect("template");
        let conversation = case["conversation"].as_str().expect("conversation");
        let add_generation_prompt = case["add_generation_prompt"].as_bool().expect("flag");
        let messages: Vec<ChatMessage> = fixture["conversations"][conversation]
            .as_array()
            .expect("conversation")
            .iter()
            .map(|m| {
                ChatMessage::new(
                    m["role"].as_str().expect("role"),
                    m["content"].as_str().expect("content"),
                )
            })
            .collect();
        let label = format!("{template_name}/{conversation}/gen={add_generation_prompt}");
        let rendered = if template_name == "phi3-mini" {
            host.render_chat(&messages, add_generation_prompt)
        } else {
            let (_, template) = templates
                .iter()
                .find(|(name, _)| name == template_name)
                .unwrap_or_else(|| panic!("{label}: unknown template"));
            template.render(&messages, add_generation_prompt)
        };
        match (
            case.get("expected").and_then(Value::as_str),
            case.get("error").and_then(Value::as_str),
        ) {
            (Some(expected), _) => assert_eq!(rendered.expect(&label), expected, "{label}"),
            (None, Some(error)) => {
                let err = rendered.expect_err(&label);
                assert!(
                    matches!(err, EngineError::ChatTemplate { .. }),
                    "{label}: {err:?}"
                );
                assert!(err.to_string().contains(error), "{label}: {err}");
            }
            (None, None) => panic!("{label}: case has neither `expected` nor `error`"),
        }
    }
}

#[test]
fn render_chat_without_a_template_is_a_clear_error() {
    let err = llama2()
        .render_chat(&[ChatMessage::new("user", "hi")], true)
        .expect_err("llama2 has no template");
    assert!(matches!(err, EngineError::ChatTemplate { .. }), "{err:?}");
    assert!(err.to_string().contains("no chat template"), "{err}");
}

/// A fresh temporary folder for one bad-input test.
fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("glimpse-tokenizer-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

fn copy_stories_tokenizer_json(dir: &Path) {
    std::fs::copy(
        bundled_model_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .expect("copying tokenizer.json");
}

#[test]
fn a_missing_tokenizer_json_is_named() {
    let dir = scratch_dir("missing");
    let err = Tokenizer::from_dir(&dir).expect_err("no tokenizer.json");
    assert!(matches!(err, EngineError::Tokenizer { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("not found"),
        "{msg}"
    );
}

#[test]
fn a_malformed_tokenizer_json_is_named() {
    let dir = scratch_dir("malformed-json");
    std::fs::write(
        dir.join("tokenizer.json"),
        "{\"version\": \"1.0\", \"model\": ",
    )
    .expect("write");
    let msg = Tokenizer::from_dir(&dir)
        .expect_err("truncated JSON")
        .to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("cannot load"),
        "{msg}"
    );
}

#[test]
fn a_malformed_tokenizer_config_is_named() {
    let dir = scratch_dir("malformed-config");
    copy_stories_tokenizer_json(&dir);
    std::fs::write(
        dir.join("tokenizer_config.json"),
        "{\"bos_token\": \"<s>\",}",
    )
    .expect("write");
    let err = Tokenizer::from_dir(&dir).expect_err("trailing comma");
    assert!(matches!(err, EngineError::Config { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("malformed JSON"),
        "{msg}"
    );
}

#[test]
fn a_bad_chat_template_fails_at_load_with_its_line() {
    let dir = scratch_dir("bad-template");
    copy_stories_tokenizer_json(&dir);
    let config = serde_json::json!({"chat_template": "{% for m in messages %}\n{{ m.content }"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write");
    let err = Tokenizer::from_dir(&dir).expect_err("unclosed tags");
    assert!(matches!(err, EngineError::ChatTemplate { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("does not parse") && msg.contains("line 2"),
        "{msg}"
    );
}

#[test]
fn tokenizer_and_detokenizer_can_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<IncrementalDetokenizer>();
}
