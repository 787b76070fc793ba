//! Chat templates: turning a list of messages into the prompt string a model was trained on.
//!
//! Renders the Jinja template from `tokenizer_config.json` with `minijinja`, configured the way
//! `transformers.apply_chat_template` configures its Jinja environment (`chat_template_utils.py`):
//! `trim_blocks` and `lstrip_blocks` on, loop controls, a `raise_exception(message)` global, a `tojson`
//! filter that writes JSON like Python's `json.dumps(ensure_ascii=False)` (not HTML-escaped), and the
//! Python string/dict/list methods templates call (`.strip()`, `.startswith()`, `.items()`, ...) via
//! `minijinja_contrib::pycompat`. The context holds `messages`, `add_generation_prompt`, `tools` and
//! `documents` (both `none`), and the special-token strings (`bos_token`, `eos_token`, `unk_token`,
//! `pad_token`) that are set.
//!
//! Not supported: `strftime_now` (templates that test `strftime_now is defined` fall back to their
//! default date), the `{% generation %}` tag (assistant-token masks are a training feature), and
//! `continue_final_message`. Tokenizing the rendered string is the caller's business.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, ErrorKind};

use super::config::SpecialTokenStrings;
use crate::error::{EngineError, Result};

/// Name under which the one template lives in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// One chat turn, as in the OpenAI / Hugging Face message format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (templates decide which roles they accept).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template together with the special-token strings it may reference.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    special: SpecialTokenStrings,
}

impl ChatTemplate {
    /// Compiles `source` in an HF-compatible Jinja environment.
    ///
    /// Fails with [`EngineError::ChatTemplate`] (with the line of the syntax error) when the source
    /// does not parse.
    pub fn new(source: &str, special: SpecialTokenStrings) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| template_error("has an invalid syntax configuration", &e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| template_error("does not parse", &e))?;
        Ok(Self { env, special })
    }

    /// Renders `messages` as `transformers.apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=..)` does.
    ///
    /// Fails with [`EngineError::ChatTemplate`] when the template raises (`raise_exception`, e.g.
    /// roles that do not alternate) or uses something undefined in a way Jinja rejects; the message
    /// carries the template's own text.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_error("is missing", &e))?;
        template
            .render(self.context(messages, add_generation_prompt))
            .map_err(|e| template_error("failed to render", &e))
    }

    fn context(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Value {
        let messages: Value = messages
            .iter()
            .map(|m| Value::from_object(MessageValue(m.clone())))
            .collect();
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::from([
            ("messages", messages),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ]);
        let tokens = [
            ("bos_token", &self.special.bos_token),
            ("eos_token", &self.special.eos_token),
            ("unk_token", &self.special.unk_token),
            ("pad_token", &self.special.pad_token),
        ];
        for (name, token) in tokens {
            if let Some(token) = token {
                ctx.insert(name, Value::from(token.as_str()));
            }
        }
        Value::from(ctx)
    }
}

/// A message as the template sees it: a map whose keys iterate in Python's insertion order
/// (`role`, then `content`), so `message | tojson` matches `transformers`.
#[derive(Debug)]
struct MessageValue(ChatMessage);

impl Object for MessageValue {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

fn template_error(what: &str, err: &minijinja::Error) -> EngineError {
    let detail = err.detail().unwrap_or("");
    let line = err
        .line()
        .map(|l| format!(" (line {l})"))
        .unwrap_or_default();
    EngineError::ChatTemplate {
        message: format!("template {what}{line}: {}: {detail}", err.kind()),
    }
}

/// `raise_exception(message)`: the template's way to reject a conversation.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `tojson` as `transformers` defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, not HTML-escaped.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let _ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair (item, key)",
            ));
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let style = PyJsonStyle {
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    style.write(&mut out, value, 0)?;
    Ok(Value::from(out))
}

/// Formatting options of Python's `json.dumps`.
struct PyJsonStyle {
    indent: Option<usize>,
    sort_keys: bool,
    item_sep: String,
    key_sep: String,
}

impl PyJsonStyle {
    fn write(
        &self,
        out: &mut String,
        value: &Value,
        depth: usize,
    ) -> std::result::Result<(), minijinja::Error> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => write_number(out, value),
            ValueKind::String => write_string(out, value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container(out, ('[', ']'), items.len(), depth, |out, i| {
                    self.write(out, &items[i], depth + 1)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort_by_key(|k| k.to_string());
                }
                self.write_container(out, ('{', '}'), keys.len(), depth, |out, i| {
                    write_string(out, &keys[i].to_string());
                    out.push_str(&self.key_sep);
                    self.write(out, &value.get_item(&keys[i])?, depth + 1)
                })?;
            }
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialize a {} value", value.kind()),
                ));
            }
        }
        Ok(())
    }

    fn write_container(
        &self,
        out: &mut String,
        (open, close): (char, char),
        len: usize,
        depth: usize,
        mut item: impl FnMut(&mut String, usize) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if len == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..len {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            if let Some(indent) = self.indent {
                out.push('\n');
                out.push_str(&" ".repeat(indent * (depth + 1)));
            }
            item(out, i)?;
        }
        if let Some(indent) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(indent * depth));
        }
        out.push(close);
        Ok(())
    }
}

/// Integers as digits; floats as Python's `repr` (`1.0`, `0.5`).
fn write_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        out.push_str(&value.to_string());
        return;
    }
    match f64::try_from(value.clone()) {
        Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 => {
            out.push_str(&format!("{f:.1}"));
        }
        Ok(f) if f.is_nan() => out.push_str("NaN"),
        Ok(f) if f.is_infinite() => out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" }),
        Ok(f) => out.push_str(&f.to_string()),
        Err(_) => out.push_str(&value.to_string()),
    }
}

/// A JSON string as Python writes it with `ensure_ascii=False`.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special() -> SpecialTokenStrings {
        SpecialTokenStrings {
            bos_token: Some("<s>".into()),
            eos_token: Some("</s>".into()),
            ..Default::default()
        }
    }

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String> {
        ChatTemplate::new(source, special())?.render(messages, true)
    }

    #[test]
    fn trims_blocks_like_hugging_face() {
        let source = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content }}]\n  {% endif %}\n{% endfor %}\n";
        let out = render(source, &[ChatMessage::new("user", "hi")]).expect("renders");
        assert_eq!(out, "[hi]\n");
    }

    #[test]
    fn offers_python_string_methods_and_special_tokens() {
        let source = "{{ bos_token }}{{ messages[0]['content'].strip().upper() }}{% if messages[0].content.startswith(' a') %}!{% endif %}{{ eos_token }}";
        let out = render(source, &[ChatMessage::new("user", " abc  ")]).expect("renders");
        assert_eq!(out, "<s>ABC!</s>");
    }

    #[test]
    fn raise_exception_becomes_a_chat_template_error_with_its_message() {
        let source = "{{ raise_exception('Conversation roles must alternate') }}";
        let err = render(source, &[]).expect_err("raises");
        assert!(matches!(err, EngineError::ChatTemplate { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("Conversation roles must alternate"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = ChatTemplate::new("ok\n{% if %}", special()).expect_err("bad syntax");
        let msg = err.to_string();
        assert!(
            msg.contains("does not parse") && msg.contains("line 2"),
            "{msg}"
        );
    }

    #[test]
    fn tojson_writes_like_python_json_dumps() {
        let source = "{{ messages[0] | tojson }}|{{ [1, 2.5, none, true, 'é\"\\n'] | tojson }}|{{ {'b': [], 'a': {}} | tojson(indent=2, sort_keys=true) }}";
        let out = render(source, &[ChatMessage::new("user", "<hi>")]).expect("renders");
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"<hi>\"}|[1, 2.5, null, true, \"é\\\"\\n\"]|{\n  \"a\": {},\n  \"b\": []\n}"
        );
    }
}
