//! Prompt files shared by `train-lookahead`, `eval`, `sample-prompts` and `generate
//! --prompts-file`: JSON Lines with one `{"prompt": "..."}` object per line (other fields
//! ignored, blank lines skipped).

use std::io::Write;
use std::path::{Path, PathBuf};

use glimpse_engine::EngineError;
use glimpse_engine::tokenizer::Tokenizer;

use crate::eval::accuracy::Expected;

/// Why a prompts file could not be read or written; `at` names the file and line (or prompt).
#[derive(Debug, thiserror::Error)]
pub enum PromptsError {
    #[error("reading prompts from {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: no string field `prompt`")]
    NoPromptField { at: String },
    #[error("{at}: expected {{\"prompt\": \"...\"}}")]
    NotJson {
        at: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: tokenizing prompt {number}", path.display())]
    Tokenize {
        path: PathBuf,
        number: usize,
        #[source]
        source: Box<EngineError>,
    },
    #[error("{} holds no prompt", path.display())]
    Empty { path: PathBuf },
    #[error(
        "{}: {with_answer} of {total} prompts carry an `answer`; give every prompt one or none",
        path.display()
    )]
    MixedAnswers {
        path: PathBuf,
        with_answer: usize,
        total: usize,
    },
    #[error("{at}: `answer` is not a string")]
    AnswerNotString { at: String },
    #[error("{at}: `answers` is not a non-empty list of strings")]
    AnswersNotStrings { at: String },
    #[error("{at}: an expected answer is empty (every output would contain it)")]
    EmptyAnswer { at: String },
    #[error("creating {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding a prompt for {}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: Box<EngineError>,
    },
}

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

/// One prompt line: its prompt text and, for a JSON line, the whole object.
struct PromptLine {
    text: String,
    json: Option<serde_json::Value>,
}

/// The prompt lines of a prompts file, in order. Errors name the file and line.
fn read_prompt_lines(path: &Path, plain: PlainLines) -> Result<Vec<PromptLine>, PromptsError> {
    let text = std::fs::read_to_string(path).map_err(|source| PromptsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut prompts = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), number + 1);
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(value) => prompts.push(PromptLine {
                text: value["prompt"]
                    .as_str()
                    .ok_or_else(|| PromptsError::NoPromptField { at: at() })?
                    .to_string(),
                json: Some(value),
            }),
            Err(_) if plain == PlainLines::AreItsPrompts => prompts.push(PromptLine {
                text: line.to_string(),
                json: None,
            }),
            Err(source) => return Err(PromptsError::NotJson { at: at(), source }),
        }
    }
    Ok(prompts)
}

/// The prompt texts of a prompts file, in order. Errors name the file and line.
pub fn read_prompt_texts(path: &Path, plain: PlainLines) -> Result<Vec<String>, PromptsError> {
    let lines = read_prompt_lines(path, plain)?;
    Ok(lines.into_iter().map(|line| line.text).collect())
}

/// Tokenizes the prompts of a strict file as the server would (special tokens added).
fn tokenize<'a>(
    path: &Path,
    texts: impl Iterator<Item = &'a str>,
    tokenizer: &Tokenizer,
) -> Result<Vec<Vec<u32>>, PromptsError> {
    let prompts = texts
        .enumerate()
        .map(|(i, text)| {
            tokenizer
                .encode(text, true)
                .map_err(|source| PromptsError::Tokenize {
                    path: path.to_path_buf(),
                    number: i + 1,
                    source: Box::new(source),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if prompts.is_empty() {
        return Err(PromptsError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(prompts)
}

/// Reads a strict prompts file and tokenizes each prompt as the server would (special tokens
/// added). Errors name the file and line.
pub fn read_prompts(path: &Path, tokenizer: &Tokenizer) -> Result<Vec<Vec<u32>>, PromptsError> {
    let texts = read_prompt_texts(path, PlainLines::AreErrors)?;
    tokenize(path, texts.iter().map(String::as_str), tokenizer)
}

/// Token-id prompts and, when the file gives them, their expected answers.
pub type EvalPrompts = (Vec<Vec<u32>>, Option<Vec<Expected>>);

/// The prompts of a strict prompts file with their expected answers: all `None` when no line has
/// an `answer`, all `Some` when every line has one (a file that mixes both is refused). A right
/// answer contains the line's `answers` (a list of strings, all of them in any order) when it has
/// one, else its `answer`. A line's `task`, `depth` (needle depth in percent) and
/// `context_tokens_target` (the length it was built for; the prompt's token count when absent)
/// label the answer in the accuracy tables.
pub fn read_eval_prompts(path: &Path, tokenizer: &Tokenizer) -> Result<EvalPrompts, PromptsError> {
    let lines = read_prompt_lines(path, PlainLines::AreErrors)?;
    let prompts = tokenize(path, lines.iter().map(|l| l.text.as_str()), tokenizer)?;
    let lines: Vec<&serde_json::Value> = lines
        .iter()
        .map(|l| l.json.as_ref().expect("a strict file's lines are JSON"))
        .collect();
    let with_answer = lines.iter().filter(|v| v.get("answer").is_some()).count();
    if with_answer == 0 {
        return Ok((prompts, None));
    }
    if with_answer != lines.len() {
        return Err(PromptsError::MixedAnswers {
            path: path.to_path_buf(),
            with_answer,
            total: lines.len(),
        });
    }
    let expected = lines
        .iter()
        .zip(&prompts)
        .enumerate()
        .map(|(i, (line, ids))| {
            let at = || format!("{}: prompt {}", path.display(), i + 1);
            let answer = line["answer"]
                .as_str()
                .ok_or_else(|| PromptsError::AnswerNotString { at: at() })?;
            let answers = match line.get("answers") {
                None => vec![answer.to_string()],
                Some(list) => list
                    .as_array()
                    .filter(|l| !l.is_empty())
                    .and_then(|l| l.iter().map(|v| v.as_str().map(String::from)).collect())
                    .ok_or_else(|| PromptsError::AnswersNotStrings { at: at() })?,
            };
            if answers.iter().any(String::is_empty) {
                return Err(PromptsError::EmptyAnswer { at: at() });
            }
            Ok(Expected {
                task: line["task"].as_str().unwrap_or("-").to_string(),
                answers,
                context_tokens: line["context_tokens_target"]
                    .as_u64()
                    .map_or(ids.len(), |n| n as usize),
                depth_percent: line["depth"].as_f64(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((prompts, Some(expected)))
}

/// Writes token-id prompts as text, one JSON line each (special tokens dropped, so reading the
/// file back adds them again).
pub fn write_prompts(
    path: &Path,
    prompts: &[Vec<u32>],
    tokenizer: &Tokenizer,
) -> Result<(), PromptsError> {
    let write_error = |source| PromptsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(|source| PromptsError::Create {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = std::io::BufWriter::new(file);
    for ids in prompts {
        let text = tokenizer
            .decode(ids, true)
            .map_err(|source| PromptsError::Decode {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        serde_json::to_writer(&mut out, &PromptLineOut { prompt: &text })
            .map_err(|e| write_error(e.into()))?;
        writeln!(out).map_err(write_error)?;
    }
    out.flush().map_err(write_error)?;
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

    fn byte_tokenizer() -> Tokenizer {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/retrieval-byte-6l");
        Tokenizer::from_dir(&dir).unwrap()
    }

    #[test]
    fn answers_task_depth_and_length_label_each_prompt() {
        let f = file(concat!(
            "{\"prompt\": \"abc\", \"answer\": \"42\", \"task\": \"vt\", \"depth\": 12.5, ",
            "\"context_tokens_target\": 2048}\n",
            "{\"prompt\": \"de\", \"answer\": \"7, 8\", \"answers\": [\"7\", \"8\"]}\n"
        ));
        let (prompts, expected) = read_eval_prompts(f.path(), &byte_tokenizer()).unwrap();
        let expected = expected.unwrap();
        assert_eq!(prompts.len(), 2);
        assert_eq!(
            expected[0],
            Expected {
                task: "vt".into(),
                answers: vec!["42".into()],
                context_tokens: 2048,
                depth_percent: Some(12.5)
            }
        );
        assert_eq!(expected[1].task, "-");
        assert_eq!(expected[1].answers, ["7", "8"]);
        assert_eq!(expected[1].context_tokens, prompts[1].len());
        assert_eq!(expected[1].depth_percent, None);
    }

    #[test]
    fn prompts_without_answers_have_no_expectations_and_a_mix_is_refused() {
        let tokenizer = byte_tokenizer();
        let f = file("{\"prompt\": \"abc\"}\n");
        assert!(read_eval_prompts(f.path(), &tokenizer).unwrap().1.is_none());
        let f = file("{\"prompt\": \"abc\", \"answer\": \"1\"}\n{\"prompt\": \"d\"}\n");
        let err = read_eval_prompts(f.path(), &tokenizer).unwrap_err();
        assert!(
            format!("{err:#}").contains("1 of 2 prompts carry an `answer`"),
            "{err:#}"
        );
        let f = file("{\"prompt\": \"abc\", \"answer\": 5}\n");
        let err = read_eval_prompts(f.path(), &tokenizer).unwrap_err();
        assert!(
            format!("{err:#}").contains("prompt 1: `answer` is not a string"),
            "{err:#}"
        );
        let f = file("{\"prompt\": \"abc\", \"answer\": \"1\", \"answers\": []}\n");
        let err = read_eval_prompts(f.path(), &tokenizer).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a non-empty list of strings"),
            "{err:#}"
        );
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
