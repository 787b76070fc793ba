//! Prompt files shared by `train-lookahead`, `eval` and `sample-prompts`: JSON Lines with one
//! `{"prompt": "..."}` object per line (other fields ignored, blank lines skipped).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use glimpse_engine::tokenizer::Tokenizer;

#[derive(serde::Serialize)]
struct PromptLineOut<'a> {
    prompt: &'a str,
}

/// What a line that is not a `{"prompt": ...}` object means.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PlainLines {
    /// The line itself is a prompt (`generate --prompts-file`, for quick hand-written files).
    AreItsPrompts,
    /// The file is malformed (`train-lookahead`, `eval`: a typo must not become a prompt).
    AreErrors,
}

/// The prompt texts of a prompts file, in order. Errors name the file and line.
pub fn read_prompt_texts(path: &Path, plain: PlainLines) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading prompts from {}", path.display()))?;
    let mut prompts = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), number + 1);
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(value) => prompts.push(
                value["prompt"]
                    .as_str()
                    .with_context(|| format!("{}: no string field `prompt`", at()))?
                    .to_string(),
            ),
            Err(_) if plain == PlainLines::AreItsPrompts => prompts.push(line.to_string()),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{}: expected {{\"prompt\": \"...\"}}", at()));
            }
        }
    }
    Ok(prompts)
}

/// Reads a strict prompts file and tokenizes each prompt as the server would (special tokens
/// added). Errors name the file and line.
pub fn read_prompts(path: &Path, tokenizer: &Tokenizer) -> anyhow::Result<Vec<Vec<u32>>> {
    let texts = read_prompt_texts(path, PlainLines::AreErrors)?;
    anyhow::ensure!(!texts.is_empty(), "{} holds no prompt", path.display());
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokenizer
                .encode(text, true)
                .with_context(|| format!("{}: tokenizing prompt {}", path.display(), i + 1))
        })
        .collect()
}

/// Writes token-id prompts as text, one JSON line each (special tokens dropped, so reading the
/// file back adds them again).
pub fn write_prompts(
    path: &Path,
    prompts: &[Vec<u32>],
    tokenizer: &Tokenizer,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for ids in prompts {
        let text = tokenizer.decode(ids, true)?;
        serde_json::to_writer(&mut out, &PromptLineOut { prompt: &text })?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn plain_lines_are_prompts_for_generate_and_errors_for_strict_jobs() {
        let f = file("{\"prompt\": \"Once\", \"id\": 3}\n\nthere was a cat\n");
        assert_eq!(
            read_prompt_texts(f.path(), PlainLines::AreItsPrompts).unwrap(),
            ["Once", "there was a cat"]
        );
        let err = read_prompt_texts(f.path(), PlainLines::AreErrors).unwrap_err();
        assert!(format!("{err:#}").contains(":3: expected"), "{err:#}");
    }

    #[test]
    fn a_json_line_without_a_prompt_string_is_refused_in_both_modes() {
        let f = file("{\"text\": \"Once\"}\n");
        for plain in [PlainLines::AreItsPrompts, PlainLines::AreErrors] {
            let err = read_prompt_texts(f.path(), plain).unwrap_err();
            assert!(format!("{err:#}").contains(":1: no string field `prompt`"));
        }
    }
}
