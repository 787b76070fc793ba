//! Benchmark prompts: where they come from and how long they are.
//!
//! Five sources, as in `vllm bench serve` and SGLang's `bench_serving`:
//! - `random`: uniform random token ids, lengths uniform in `len·(1 ± range_ratio)`;
//! - `jsonl`: one `{"prompt", "max_tokens"?, "answer"?}` object per line (TGI-style
//!   `{"inputs", "parameters": {"max_new_tokens"}}` lines are accepted too);
//! - `long-context`: windows of a text corpus (a directory of `.txt` files) cut to the
//!   input length, each followed by a question: the workload KV eviction is for;
//! - `shared-prefix`: one random prefix shared by every prompt plus a unique suffix;
//! - `doc-qa`: several random documents, each followed by several random questions, the
//!   questions of the documents arriving interleaved: the workload prefix caching is for.
//!
//! Everything here is pure given an RNG and the texts or token ids; the one step that
//! needs the server's tokenizer (cutting long contexts by tokens) receives its ids.

use std::path::Path;

use rand::Rng;
use serde::Deserialize;

/// Why prompts could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Jsonl {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path} holds no prompts")]
    Empty { path: String },
    #[error("no token id left to sample: vocabulary of {vocab_size} with {excluded} excluded")]
    NoTokens { vocab_size: u32, excluded: usize },
    #[error("--range-ratio must be in [0, 1), got {0}")]
    RangeRatio(f64),
    #[error("corpus of {corpus_len} {unit} is shorter than one {body_len}-{unit} window")]
    CorpusTooShort {
        corpus_len: usize,
        body_len: usize,
        unit: &'static str,
    },
    #[error("--input-len {input_len} leaves no room after {fixed} fixed tokens (BOS and question)")]
    InputTooShort { input_len: usize, fixed: usize },
    #[error("{path}: {message}")]
    ModelConfig { path: String, message: String },
}

/// What the model is given: text the server tokenizes, or ids used as they are.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    TokenIds(Vec<u32>),
}

/// One benchmark request's prompt and output length.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub input: PromptInput,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Reference answer; the report counts outputs that contain it.
    pub answer: Option<String>,
}

/// A length drawn uniformly from `[len·(1−r), len·(1+r)]`, at least 1. `r = 0` gives
/// exactly `len`, as `vllm bench serve --random-range-ratio`.
pub fn sample_len(len: usize, range_ratio: f64, rng: &mut impl Rng) -> Result<usize, DatasetError> {
    if !(0.0..1.0).contains(&range_ratio) {
        return Err(DatasetError::RangeRatio(range_ratio));
    }
    let low = ((len as f64) * (1.0 - range_ratio)).floor() as usize;
    let high = ((len as f64) * (1.0 + range_ratio)).ceil() as usize;
    Ok(rng.random_range(low..=high).max(1))
}

/// Draws token ids uniformly from the vocabulary minus some ids (EOS, so random
/// prompts do not end early in the middle; special tokens generally).
#[derive(Debug, Clone)]
pub struct TokenSampler {
    allowed: Vec<u32>,
}

impl TokenSampler {
    /// Fails when every id is excluded.
    pub fn new(vocab_size: u32, excluded: &[u32]) -> Result<Self, DatasetError> {
        let allowed: Vec<u32> = (0..vocab_size)
            .filter(|id| !excluded.contains(id))
            .collect();
        if allowed.is_empty() {
            return Err(DatasetError::NoTokens {
                vocab_size,
                excluded: excluded.len(),
            });
        }
        Ok(Self { allowed })
    }

    /// `n` ids drawn with replacement.
    pub fn sample(&self, n: usize, rng: &mut impl Rng) -> Vec<u32> {
        (0..n)
            .map(|_| self.allowed[rng.random_range(0..self.allowed.len())])
            .collect()
    }
}

/// What random token prompts need to know of the model: ids are drawn below
/// `vocab_size`, never an EOS id.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    pub vocab_size: u32,
    pub eos_token_ids: Vec<u32>,
}

/// `eos_token_id` as checkpoints write it: one id, a list, or none.
#[derive(Deserialize)]
#[serde(untagged)]
enum EosIds {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct VocabFields {
    vocab_size: Option<u32>,
    eos_token_id: Option<EosIds>,
}

impl Vocabulary {
    /// Reads a model folder as Glimpse does: `vocab_size` from `config.json`, EOS ids
    /// from `generation_config.json` (when present) and `config.json` together, so the
    /// sampler excludes what `GetModelInfo` would report and both backends draw the same
    /// prompts. Fails when `config.json` is unreadable or has no `vocab_size`.
    pub fn from_model_dir(dir: &Path) -> Result<Self, DatasetError> {
        let read = |name: &str| -> Result<Option<VocabFields>, DatasetError> {
            let path = dir.join(name);
            let shown = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && name != "config.json" => {
                    return Ok(None);
                }
                Err(source) => {
                    return Err(DatasetError::Io {
                        path: shown,
                        source,
                    });
                }
            };
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| DatasetError::ModelConfig {
                    path: shown,
                    message: e.to_string(),
                })
        };
        let config = read("config.json")?.expect("config.json is required above");
        let generation = read("generation_config.json")?;
        let vocab_size = config.vocab_size.ok_or_else(|| DatasetError::ModelConfig {
            path: dir.join("config.json").display().to_string(),
            message: "no vocab_size".into(),
        })?;
        let mut eos_token_ids = Vec::new();
        for fields in generation.iter().chain([&config]) {
            match &fields.eos_token_id {
                Some(EosIds::One(id)) => eos_token_ids.push(*id),
                Some(EosIds::Many(ids)) => eos_token_ids.extend(ids),
                None => {}
            }
        }
        Ok(Self {
            vocab_size,
            eos_token_ids,
        })
    }
}

/// Lengths of the random and shared-prefix datasets.
#[derive(Debug, Clone, Copy)]
pub struct RandomShape {
    pub num_prompts: usize,
    pub input_len: usize,
    pub output_len: usize,
    pub range_ratio: f64,
}

/// `random`: prompts of random token ids.
pub fn random_prompts(
    shape: RandomShape,
    tokens: &TokenSampler,
    rng: &mut impl Rng,
) -> Result<Vec<Prompt>, DatasetError> {
    shared_prefix_prompts(shape, 0, tokens, rng)
}

/// `shared-prefix`: `prefix_len` random ids shared by every prompt, then a unique random
/// suffix of about `input_len` ids (so prompts are `prefix_len + input_len` long).
pub fn shared_prefix_prompts(
    shape: RandomShape,
    prefix_len: usize,
    tokens: &TokenSampler,
    rng: &mut impl Rng,
) -> Result<Vec<Prompt>, DatasetError> {
    let prefix = tokens.sample(prefix_len, rng);
    (0..shape.num_prompts)
        .map(|_| {
            prefixed_prompt(
                &prefix,
                shape.input_len,
                shape.output_len,
                shape.range_ratio,
                tokens,
                rng,
            )
        })
        .collect()
}

/// `prefix` followed by about `suffix_len` random ids, asking for about `output_len` tokens
/// (both lengths ± `range_ratio`): the one prompt builder of the prefixed datasets.
fn prefixed_prompt(
    prefix: &[u32],
    suffix_len: usize,
    output_len: usize,
    range_ratio: f64,
    tokens: &TokenSampler,
    rng: &mut impl Rng,
) -> Result<Prompt, DatasetError> {
    let suffix_len = sample_len(suffix_len, range_ratio, rng)?;
    let output_len = sample_len(output_len, range_ratio, rng)?;
    let mut ids = prefix.to_vec();
    ids.extend(tokens.sample(suffix_len, rng));
    Ok(Prompt {
        input: PromptInput::TokenIds(ids),
        max_tokens: output_len as u32,
        answer: None,
    })
}

/// Shape of the `doc-qa` dataset.
#[derive(Debug, Clone, Copy)]
pub struct DocQaShape {
    pub num_documents: usize,
    pub document_len: usize,
    pub questions_per_document: usize,
    /// Tokens of each question (± the range ratio).
    pub question_len: usize,
    pub output_len: usize,
    pub range_ratio: f64,
}

/// `doc-qa`: `num_documents` random documents of `document_len` ids, each followed by
/// `questions_per_document` random questions; prompt `q · num_documents + d` is question `q` on
/// document `d`, so each document's questions arrive interleaved with the others'.
pub fn doc_qa_prompts(
    shape: DocQaShape,
    tokens: &TokenSampler,
    rng: &mut impl Rng,
) -> Result<Vec<Prompt>, DatasetError> {
    let documents: Vec<Vec<u32>> = (0..shape.num_documents)
        .map(|_| tokens.sample(shape.document_len, rng))
        .collect();
    let mut prompts = Vec::with_capacity(shape.num_documents * shape.questions_per_document);
    for _ in 0..shape.questions_per_document {
        for document in &documents {
            prompts.push(prefixed_prompt(
                document,
                shape.question_len,
                shape.output_len,
                shape.range_ratio,
                tokens,
                rng,
            )?);
        }
    }
    Ok(prompts)
}

#[derive(Deserialize)]
struct JsonlLine {
    #[serde(alias = "inputs")]
    prompt: String,
    max_tokens: Option<u32>,
    answer: Option<String>,
    parameters: Option<JsonlParameters>,
}

#[derive(Deserialize)]
struct JsonlParameters {
    max_new_tokens: Option<u32>,
}

/// `jsonl`: parses `text` (the file at `path`, named in errors). Blank lines are
/// skipped; a line without `max_tokens` generates up to `default_max_tokens`.
pub fn parse_jsonl(
    path: &str,
    text: &str,
    default_max_tokens: u32,
) -> Result<Vec<Prompt>, DatasetError> {
    let mut prompts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: JsonlLine = serde_json::from_str(line).map_err(|e| DatasetError::Jsonl {
            path: path.to_owned(),
            line: index + 1,
            message: e.to_string(),
        })?;
        let max_tokens = record
            .max_tokens
            .or(record.parameters.and_then(|p| p.max_new_tokens))
            .unwrap_or(default_max_tokens);
        prompts.push(Prompt {
            input: PromptInput::Text(record.prompt),
            max_tokens,
            answer: record.answer,
        });
    }
    if prompts.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(prompts)
}

/// Reads a JSONL file; see [`parse_jsonl`].
pub fn load_jsonl(path: &Path, default_max_tokens: u32) -> Result<Vec<Prompt>, DatasetError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: name.clone(),
        source,
    })?;
    parse_jsonl(&name, &text, default_max_tokens)
}

/// The long-context corpus: every `*.txt` file of `dir`, in name order, joined by blank
/// lines, so runs with the same seed see the same windows.
pub fn read_text_dir(dir: &Path) -> Result<String, DatasetError> {
    let io = |source| DatasetError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?
        .into_iter()
        .map(|entry| entry.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    files.sort();
    let mut corpus = String::new();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|source| DatasetError::Io {
            path: file.display().to_string(),
            source,
        })?;
        corpus.push_str(text.trim());
        corpus.push_str("\n\n");
    }
    if corpus.is_empty() {
        return Err(DatasetError::Empty {
            path: dir.display().to_string(),
        });
    }
    Ok(corpus)
}

/// Random start offsets of `n` windows of `body_len` units in a corpus of `corpus_len`.
fn window_starts(
    corpus_len: usize,
    body_len: usize,
    n: usize,
    unit: &'static str,
    rng: &mut impl Rng,
) -> Result<Vec<usize>, DatasetError> {
    if corpus_len < body_len {
        return Err(DatasetError::CorpusTooShort {
            corpus_len,
            body_len,
            unit,
        });
    }
    Ok((0..n)
        .map(|_| rng.random_range(0..=corpus_len - body_len))
        .collect())
}

/// Characters per token assumed when cutting by characters (English BPE averages ~4).
pub const CHARS_PER_TOKEN: usize = 4;

/// `long-context`, cut by characters (no tokenizer needed; lengths are approximate):
/// windows of `input_len · CHARS_PER_TOKEN` characters, each followed by `question`.
pub fn long_context_by_chars(
    corpus: &str,
    question: &str,
    input_len: usize,
    max_tokens: u32,
    n: usize,
    rng: &mut impl Rng,
) -> Result<Vec<Prompt>, DatasetError> {
    let chars: Vec<char> = corpus.chars().collect();
    let body_len = (input_len * CHARS_PER_TOKEN).saturating_sub(question.chars().count());
    let starts = window_starts(chars.len(), body_len, n, "character", rng)?;
    Ok(starts
        .into_iter()
        .map(|start| {
            let mut text: String = chars[start..start + body_len].iter().collect();
            text.push_str(question);
            Prompt {
                input: PromptInput::Text(text),
                max_tokens,
                answer: None,
            }
        })
        .collect())
}

/// Token ids that frame every long-context prompt, from the server's tokenizer.
#[derive(Debug, Clone)]
pub struct TokenizedCorpus {
    /// What the tokenizer puts before any text (BOS), from tokenizing "" with specials.
    pub prefix: Vec<u32>,
    /// The corpus, without special tokens.
    pub corpus: Vec<u32>,
    /// The question, without special tokens.
    pub question: Vec<u32>,
}

/// `long-context`, cut by tokens: exactly `input_len` ids per prompt: the prefix, a
/// corpus window, the question.
pub fn long_context_by_tokens(
    tokenized: &TokenizedCorpus,
    input_len: usize,
    max_tokens: u32,
    n: usize,
    rng: &mut impl Rng,
) -> Result<Vec<Prompt>, DatasetError> {
    let fixed = tokenized.prefix.len() + tokenized.question.len();
    if input_len <= fixed {
        return Err(DatasetError::InputTooShort { input_len, fixed });
    }
    let body_len = input_len - fixed;
    let starts = window_starts(tokenized.corpus.len(), body_len, n, "token", rng)?;
    Ok(starts
        .into_iter()
        .map(|start| {
            let mut ids = Vec::with_capacity(input_len);
            ids.extend_from_slice(&tokenized.prefix);
            ids.extend_from_slice(&tokenized.corpus[start..start + body_len]);
            ids.extend_from_slice(&tokenized.question);
            Prompt {
                input: PromptInput::TokenIds(ids),
                max_tokens,
                answer: None,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn the_bundled_models_vocabulary_is_read_from_its_folder() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260K");
        let vocab = Vocabulary::from_model_dir(&dir).expect("bundled model folder");
        assert_eq!(vocab.vocab_size, 512);
        assert!(vocab.eos_token_ids.contains(&2), "{vocab:?}");
        let missing = Vocabulary::from_model_dir(&dir.join("absent")).unwrap_err();
        assert!(missing.to_string().contains("config.json"), "{missing}");
    }

    fn ids(prompt: &Prompt) -> &[u32] {
        match &prompt.input {
            PromptInput::TokenIds(ids) => ids,
            PromptInput::Text(_) => panic!("expected token ids"),
        }
    }

    #[test]
    fn random_lengths_stay_within_the_range_ratio() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let len = sample_len(100, 0.25, &mut rng).unwrap();
            assert!((75..=125).contains(&len), "{len}");
        }
        assert_eq!(sample_len(100, 0.0, &mut rng).unwrap(), 100);
        assert!(matches!(
            sample_len(100, 1.0, &mut rng),
            Err(DatasetError::RangeRatio(_))
        ));
    }

    #[test]
    fn random_prompts_avoid_excluded_tokens_and_have_the_requested_lengths() {
        let tokens = TokenSampler::new(16, &[0, 1, 2]).unwrap();
        let shape = RandomShape {
            num_prompts: 20,
            input_len: 50,
            output_len: 8,
            range_ratio: 0.0,
        };
        let prompts = random_prompts(shape, &tokens, &mut StdRng::seed_from_u64(2)).unwrap();
        assert_eq!(prompts.len(), 20);
        for p in &prompts {
            assert_eq!(ids(p).len(), 50);
            assert_eq!(p.max_tokens, 8);
            assert!(ids(p).iter().all(|&t| (3..16).contains(&t)));
        }
        assert!(matches!(
            TokenSampler::new(2, &[0, 1]),
            Err(DatasetError::NoTokens { .. })
        ));
    }

    #[test]
    fn shared_prefix_prompts_share_exactly_the_prefix() {
        let tokens = TokenSampler::new(1000, &[]).unwrap();
        let shape = RandomShape {
            num_prompts: 5,
            input_len: 10,
            output_len: 4,
            range_ratio: 0.0,
        };
        let prompts =
            shared_prefix_prompts(shape, 30, &tokens, &mut StdRng::seed_from_u64(3)).unwrap();
        let first = ids(&prompts[0]);
        for p in &prompts {
            assert_eq!(ids(p).len(), 40);
            assert_eq!(&ids(p)[..30], &first[..30]);
        }
        assert_ne!(ids(&prompts[0])[30..], ids(&prompts[1])[30..]);
    }

    #[test]
    fn doc_qa_interleaves_the_questions_of_each_document() {
        let tokens = TokenSampler::new(1000, &[]).unwrap();
        let shape = DocQaShape {
            num_documents: 3,
            document_len: 20,
            questions_per_document: 2,
            question_len: 5,
            output_len: 4,
            range_ratio: 0.0,
        };
        let prompts = doc_qa_prompts(shape, &tokens, &mut StdRng::seed_from_u64(3)).unwrap();
        assert_eq!(prompts.len(), 6);
        for (i, p) in prompts.iter().enumerate() {
            assert_eq!(ids(p).len(), 25);
            assert_eq!(p.max_tokens, 4);
            let same_document = &prompts[(i + 3) % 6];
            assert_eq!(ids(p)[..20], ids(same_document)[..20], "prompt {i}");
            assert_ne!(ids(p)[20..], ids(same_document)[20..], "prompt {i}");
            assert_ne!(ids(p)[..20], ids(&prompts[(i + 1) % 3])[..20], "prompt {i}");
        }
    }

    #[test]
    fn jsonl_lines_give_prompts_with_their_own_or_the_default_length() {
        let text = r#"{"prompt": "a", "max_tokens": 3, "answer": "x"}

{"inputs": "b", "parameters": {"max_new_tokens": 5, "top_k": 1}}
{"prompt": "c"}"#;
        let prompts = parse_jsonl("d.jsonl", text, 9).unwrap();
        let lens: Vec<u32> = prompts.iter().map(|p| p.max_tokens).collect();
        assert_eq!(lens, [3, 5, 9]);
        assert_eq!(prompts[0].input, PromptInput::Text("a".into()));
        assert_eq!(prompts[0].answer.as_deref(), Some("x"));
    }

    #[test]
    fn jsonl_errors_name_the_file_and_line() {
        let err = parse_jsonl("d.jsonl", "{\"prompt\": \"a\"}\n{oops", 1).unwrap_err();
        assert!(err.to_string().starts_with("d.jsonl line 2:"), "{err}");
        assert!(matches!(
            parse_jsonl("e.jsonl", "\n", 1),
            Err(DatasetError::Empty { .. })
        ));
    }

    #[test]
    fn long_context_token_prompts_are_exactly_the_input_length_and_end_with_the_question() {
        let tokenized = TokenizedCorpus {
            prefix: vec![1],
            corpus: (100..1100).collect(),
            question: vec![7, 8],
        };
        let prompts =
            long_context_by_tokens(&tokenized, 64, 16, 4, &mut StdRng::seed_from_u64(4)).unwrap();
        for p in &prompts {
            let ids = ids(p);
            assert_eq!(ids.len(), 64);
            assert_eq!(ids[0], 1);
            assert_eq!(&ids[62..], &[7, 8]);
            assert!(
                ids[1..62].windows(2).all(|w| w[1] == w[0] + 1),
                "a contiguous window"
            );
        }
        assert!(matches!(
            long_context_by_tokens(&tokenized, 3, 16, 1, &mut StdRng::seed_from_u64(4)),
            Err(DatasetError::InputTooShort { .. })
        ));
    }

    #[test]
    fn long_context_char_prompts_end_with_the_question_and_refuse_short_corpora() {
        let corpus = "é".repeat(1000);
        let prompts =
            long_context_by_chars(&corpus, "?", 10, 4, 3, &mut StdRng::seed_from_u64(5)).unwrap();
        for p in &prompts {
            let PromptInput::Text(text) = &p.input else {
                panic!("expected text")
            };
            assert_eq!(text.chars().count(), 10 * CHARS_PER_TOKEN);
            assert!(text.ends_with('?'));
        }
        assert!(matches!(
            long_context_by_chars("short", "?", 10, 4, 1, &mut StdRng::seed_from_u64(5)),
            Err(DatasetError::CorpusTooShort { .. })
        ));
    }
}
