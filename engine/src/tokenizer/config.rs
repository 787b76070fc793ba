//! `tokenizer_config.json` and `special_tokens_map.json`, resolved once into plain types.
//!
//! Hugging Face writes special tokens either as a bare string, as an `AddedToken` object with a
//! `content` field, or as `null`; `chat_template` is either one template string or a list of named
//! templates. This module accepts all of those shapes and nothing else: anything it cannot read is a
//! [`EngineError::Config`] naming the file and the field. It knows nothing of the vocabulary itself.

use std::path::Path;

use serde_json::Value;

use crate::error::{EngineError, Result};

/// The special-token strings a model folder declares (ids are looked up by [`super::Tokenizer`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokenStrings {
    /// Beginning-of-sequence token, e.g. `<s>`.
    pub bos_token: Option<String>,
    /// End-of-sequence token, e.g. `</s>` or `<|endoftext|>`.
    pub eos_token: Option<String>,
    /// Unknown token, e.g. `<unk>`.
    pub unk_token: Option<String>,
    /// Padding token.
    pub pad_token: Option<String>,
}

/// One named chat template (`chat_template` may be a list of these; `default` is used unless a
/// caller asks for another name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedTemplate {
    /// Template name, e.g. `default` or `tool_use`.
    pub name: String,
    /// Jinja source.
    pub source: String,
}

/// What Glimpse uses from `tokenizer_config.json` (+ `special_tokens_map.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// Special-token strings; `special_tokens_map.json` entries override the config's, as in
    /// `transformers`.
    pub special: SpecialTokenStrings,
    /// `add_bos_token` as declared (informational: `tokenizer.json`'s post-processor decides what
    /// `encode(.., add_special_tokens = true)` adds).
    pub add_bos_token: Option<bool>,
    /// `add_eos_token` as declared (informational, like `add_bos_token`).
    pub add_eos_token: Option<bool>,
    /// Chat templates in file order; a single string becomes one template named `default`.
    pub chat_templates: Vec<NamedTemplate>,
}

impl TokenizerConfig {
    /// Reads `tokenizer_config.json` at `path`.
    ///
    /// Fails with [`EngineError::Io`] when the file cannot be read and [`EngineError::Config`]
    /// (naming the file and field) when it is not JSON or a field has an unexpected shape.
    pub fn from_file(path: &Path) -> Result<Self> {
        let root = read_json_object(path)?;
        let special = SpecialTokenStrings {
            bos_token: token_field(path, &root, "bos_token")?,
            eos_token: token_field(path, &root, "eos_token")?,
            unk_token: token_field(path, &root, "unk_token")?,
            pad_token: token_field(path, &root, "pad_token")?,
        };
        Ok(Self {
            special,
            add_bos_token: bool_field(path, &root, "add_bos_token")?,
            add_eos_token: bool_field(path, &root, "add_eos_token")?,
            chat_templates: chat_templates(path, root.get("chat_template"))?,
        })
    }

    /// Applies `special_tokens_map.json` at `path`: every token it names replaces the config's.
    ///
    /// Fails like [`TokenizerConfig::from_file`].
    pub fn apply_special_tokens_map(&mut self, path: &Path) -> Result<()> {
        let root = read_json_object(path)?;
        let slots = [
            ("bos_token", &mut self.special.bos_token),
            ("eos_token", &mut self.special.eos_token),
            ("unk_token", &mut self.special.unk_token),
            ("pad_token", &mut self.special.pad_token),
        ];
        for (field, slot) in slots {
            if root.contains_key(field) {
                *slot = token_field(path, &root, field)?;
            }
        }
        Ok(())
    }

    /// The template named `default`, else the only template, else `None`.
    pub fn default_chat_template(&self) -> Option<&NamedTemplate> {
        self.chat_templates.iter().find(|t| t.name == "default").or(
            match self.chat_templates.as_slice() {
                [only] => Some(only),
                _ => None,
            },
        )
    }
}

fn read_json_object(path: &Path) -> Result<serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(EngineError::config(
            path,
            "expected a JSON object at the top level",
        )),
        Err(e) => Err(EngineError::config(path, format!("malformed JSON: {e}"))),
    }
}

/// A special token: a string, an `AddedToken` object (`{"content": ..}`), `null` or absent.
fn token_field(
    path: &Path,
    root: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<String>> {
    match root.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(obj)) => match obj.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(EngineError::config(
                path,
                format!("`{field}` is an object without a string `content`"),
            )),
        },
        Some(other) => Err(EngineError::config(
            path,
            format!("`{field}` must be a string, an object with `content`, or null; got {other}"),
        )),
    }
}

fn bool_field(
    path: &Path,
    root: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<bool>> {
    match root.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(EngineError::config(
            path,
            format!("`{field}` must be true, false or null; got {other}"),
        )),
    }
}

/// `chat_template`: absent/null, one string, or a list of `{"name": .., "template": ..}`.
fn chat_templates(path: &Path, value: Option<&Value>) -> Result<Vec<NamedTemplate>> {
    let bad = |what: &str| EngineError::config(path, format!("`chat_template` {what}"));
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![NamedTemplate {
            name: "default".to_owned(),
            source: s.clone(),
        }]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let name = item.get("name").and_then(Value::as_str);
                let source = item.get("template").and_then(Value::as_str);
                match (name, source) {
                    (Some(name), Some(source)) => Ok(NamedTemplate {
                        name: name.to_owned(),
                        source: source.to_owned(),
                    }),
                    _ => Err(bad(&format!(
                        "entry {i} needs string fields `name` and `template`"
                    ))),
                }
            })
            .collect(),
        Some(_) => Err(bad(
            "must be a string or a list of {name, template} objects",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("writing a temp file");
        path
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("glimpse-tokcfg-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        dir
    }

    #[test]
    fn reads_tokens_as_strings_objects_or_null() {
        let dir = temp_dir("shapes");
        let path = write(
            &dir,
            "tokenizer_config.json",
            r#"{"bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>",
                "pad_token": null, "add_bos_token": true,
                "model_max_length": 1000000000000000019884624838656}"#,
        );
        let cfg = TokenizerConfig::from_file(&path).expect("valid config");
        assert_eq!(cfg.special.bos_token.as_deref(), Some("<s>"));
        assert_eq!(cfg.special.eos_token.as_deref(), Some("</s>"));
        assert_eq!(cfg.special.pad_token, None);
        assert_eq!(cfg.add_bos_token, Some(true));
        assert!(cfg.chat_templates.is_empty());
    }

    #[test]
    fn picks_the_default_of_several_named_templates() {
        let dir = temp_dir("named");
        let path = write(
            &dir,
            "tokenizer_config.json",
            r#"{"chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "D"}]}"#,
        );
        let cfg = TokenizerConfig::from_file(&path).expect("valid config");
        assert_eq!(cfg.chat_templates.len(), 2);
        assert_eq!(
            cfg.default_chat_template().map(|t| t.source.as_str()),
            Some("D")
        );
    }

    #[test]
    fn special_tokens_map_overrides_the_config() {
        let dir = temp_dir("map");
        let cfg_path = write(&dir, "tokenizer_config.json", r#"{"eos_token": "</s>"}"#);
        let map_path = write(
            &dir,
            "special_tokens_map.json",
            r#"{"eos_token": {"content": "<|im_end|>"}, "additional_special_tokens": ["x"]}"#,
        );
        let mut cfg = TokenizerConfig::from_file(&cfg_path).expect("valid config");
        cfg.apply_special_tokens_map(&map_path).expect("valid map");
        assert_eq!(cfg.special.eos_token.as_deref(), Some("<|im_end|>"));
    }

    #[test]
    fn bad_shapes_name_the_file_and_field() {
        let dir = temp_dir("bad");
        let path = write(&dir, "tokenizer_config.json", r#"{"chat_template": 3}"#);
        let err = TokenizerConfig::from_file(&path).expect_err("a number is not a template");
        let msg = err.to_string();
        assert!(
            msg.contains("tokenizer_config.json") && msg.contains("chat_template"),
            "{msg}"
        );

        let path = write(&dir, "special_tokens_map.json", r#"{"bos_token": 1}"#);
        let mut cfg = TokenizerConfig::default();
        let msg = cfg
            .apply_special_tokens_map(&path)
            .expect_err("bad token")
            .to_string();
        assert!(
            msg.contains("special_tokens_map.json") && msg.contains("bos_token"),
            "{msg}"
        );

        let path = write(&dir, "broken.json", "{\"bos_token\": ");
        let msg = TokenizerConfig::from_file(&path)
            .expect_err("truncated")
            .to_string();
        assert!(
            msg.contains("broken.json") && msg.contains("malformed JSON"),
            "{msg}"
        );
    }
}
