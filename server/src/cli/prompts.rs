//! Prompt files shared by `train-lookahead`, `eval` and `sample-prompts`: JSON Lines with one
//! `{"prompt": "..."}` object per line (other fields ignored, blank lines skipped).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use glimpse_engine::tokenizer::Tokenizer;

#[derive(serde::Deserialize)]
struct PromptLine {
    prompt: String,
}

#[derive(serde::Serialize)]
struct PromptLineOut<'a> {
    prompt: &'a str,
}

/// Reads a prompts file and tokenizes each prompt as the server would (special tokens added).
/// Errors name the file and line.
pub fn read_prompts(path: &Path, tokenizer: &Tokenizer) -> anyhow::Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading prompts from {}", path.display()))?;
    let mut prompts = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: PromptLine = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: expected {{\"prompt\": \"...\"}}",
                path.display(),
                number + 1
            )
        })?;
        let ids = tokenizer
            .encode(&parsed.prompt, true)
            .with_context(|| format!("{}:{}: tokenizing", path.display(), number + 1))?;
        prompts.push(ids);
    }
    anyhow::ensure!(!prompts.is_empty(), "{} holds no prompt", path.display());
    Ok(prompts)
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
