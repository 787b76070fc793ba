//! `glimpse bench` (crate `glimpse-bench`): a load-test client for a running `glimpse serve`, in the manner of
//! `vllm bench serve`, that compares KV eviction policies side by side.
//!
//! Every requested policy runs the same prompts on the same arrival schedule, one policy
//! after another, so differences in throughput, latency, peak KV usage and (greedy)
//! agreement with the full cache come from the policy alone. The harness links no engine:
//! it speaks only the public `glimpse.v1` gRPC API or (`--backend openai`) the
//! OpenAI-compatible completions API, and reads `/metrics` (its only Glimpse dependency
//! is `glimpse-proto`), so it measures any server that speaks either, Glimpse or not.
//!
//! Modules: `schedule` (arrival times), `dataset` (prompts), `backend` (which API),
//! `client` (one gRPC request), `openai` and `sse` (one HTTP request), `runner` (one
//! policy run), `scrape` (KV gauges), `stats` and `report` (the numbers).

pub mod backend;
pub mod client;
pub mod dataset;
pub mod openai;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod scrape;
pub mod sse;
pub mod stats;

use std::path::PathBuf;
use std::time::Duration;

use glimpse_proto::v1::{KvPolicy, ModelInfo};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use backend::Backend;
use client::{ClientError, RequestSettings};
use dataset::{
    DatasetError, DocQaShape, Prompt, PromptInput, RandomShape, TokenSampler, TokenizedCorpus,
    Vocabulary,
};
use openai::OpenAiError;
use report::{BenchReport, ModelSummary, PolicyReport, PolicyRun, ServedModel};
use runner::{RunPlan, Scraper};
use schedule::{ArrivalProcess, ScheduleError};
use scrape::{MetricsUrl, ScrapeError};
use stats::Slo;

/// Which API the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Glimpse's `glimpse.v1.Generation` gRPC service.
    Grpc,
    /// An OpenAI-compatible server's streamed `POST /v1/completions` (Glimpse's HTTP API,
    /// vLLM, llama.cpp).
    Openai,
}

impl BackendKind {
    fn default_endpoint(self) -> &'static str {
        match self {
            Self::Grpc => "http://127.0.0.1:50051",
            Self::Openai => "http://127.0.0.1:8000",
        }
    }
}

/// Where prompts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Random token ids of `--input-len` (± `--range-ratio`).
    Random,
    /// Lines of `--dataset-path`: `{"prompt", "max_tokens"?, "answer"?}`.
    Jsonl,
    /// Windows of the `.txt` files in `--text-dir`, each ending with `--question`.
    LongContext,
    /// A `--prefix-len` random prefix shared by all prompts plus a unique suffix.
    SharedPrefix,
    /// `--num-documents` random documents of `--document-len` tokens, each asked
    /// `--questions-per-document` random questions of `--input-len` tokens, the documents'
    /// questions interleaved (`--num-prompts` does not apply).
    DocQa,
}

/// How long-context windows are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CutBy {
    /// Exact token counts, using the server's `Tokenize` RPC.
    Tokens,
    /// About four characters per token; no tokenizer call.
    Chars,
}

/// A KV policy to benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchPolicy {
    /// Whatever the server uses when a request names none.
    Default,
    Full,
    #[value(alias = "streaming_llm", alias = "streamingllm")]
    StreamingLlm,
    Snapkv,
    Pyramidkv,
    Lookahead,
}

impl BenchPolicy {
    fn wire(self) -> KvPolicy {
        match self {
            Self::Default => KvPolicy::Unspecified,
            Self::Full => KvPolicy::Full,
            Self::StreamingLlm => KvPolicy::StreamingLlm,
            Self::Snapkv => KvPolicy::Snapkv,
            Self::Pyramidkv => KvPolicy::Pyramidkv,
            Self::Lookahead => KvPolicy::Lookahead,
        }
    }

    fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .expect("no variant is skipped")
            .get_name()
            .to_owned()
    }
}

/// Flags of `glimpse bench`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct BenchArgs {
    /// API to load: Glimpse's gRPC, or an OpenAI-compatible HTTP server.
    #[arg(long, value_enum, default_value_t = BackendKind::Grpc)]
    pub backend: BackendKind,
    /// The server; `host:port` without a scheme means `http://host:port`. Default
    /// `http://127.0.0.1:50051` (grpc) or `http://127.0.0.1:8000` (openai, which appends
    /// `/v1` when absent).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// `--backend openai`: the `model` field of each request (default: the first id of
    /// `GET /v1/models`).
    #[arg(long)]
    pub model_name: Option<String>,
    /// `--backend openai` with random or shared-prefix prompts: the served model's folder,
    /// whose `config.json` gives the vocabulary the prompts are drawn from (gRPC asks the
    /// server instead).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Prometheus endpoint of the server; scraped before, during and after each run for
    /// peak KV usage.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Milliseconds between scrapes during a run.
    #[arg(long, default_value_t = 250)]
    pub scrape_interval_ms: u64,
    /// Requests per second; `inf` sends all at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    pub request_rate: f64,
    /// Gamma shape of inter-arrival gaps: 1 is Poisson, lower is burstier.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Most requests in flight at once (unbounded if unset).
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Prompts per policy run.
    #[arg(long, default_value_t = 100)]
    pub num_prompts: usize,
    /// Unrecorded requests sent one by one before each policy run.
    #[arg(long, default_value_t = 0)]
    pub num_warmups: usize,
    /// Seed of prompts, schedule and per-request sampling seeds.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompt source.
    #[arg(long, value_enum, default_value_t = DatasetKind::Random)]
    pub dataset: DatasetKind,
    /// JSONL file for `--dataset jsonl`.
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    /// Directory of `.txt` files for `--dataset long-context`.
    #[arg(long)]
    pub text_dir: Option<PathBuf>,
    /// Question appended to each long-context prompt.
    #[arg(
        long,
        default_value = "\n\nIn one sentence, what is the main point of the text above?"
    )]
    pub question: String,
    /// How long-context prompts are cut to `--input-len`.
    #[arg(long, value_enum, default_value_t = CutBy::Tokens)]
    pub cut_by: CutBy,
    /// Prompt tokens (random, long-context; the unique suffix for shared-prefix).
    #[arg(long, default_value_t = 1024)]
    pub input_len: usize,
    /// Tokens to generate (jsonl: for lines without `max_tokens`).
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// Random lengths are uniform in `len·(1 ± ratio)`, ratio in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    pub range_ratio: f64,
    /// Shared prefix tokens for `--dataset shared-prefix`.
    #[arg(long, default_value_t = 256)]
    pub prefix_len: usize,
    /// Documents of `--dataset doc-qa`.
    #[arg(long, default_value_t = 4)]
    pub num_documents: usize,
    /// Tokens of each `--dataset doc-qa` document.
    #[arg(long, default_value_t = 2048)]
    pub document_len: usize,
    /// Questions asked about each `--dataset doc-qa` document.
    #[arg(long, default_value_t = 16)]
    pub questions_per_document: usize,
    /// KV policies to compare, comma-separated; each runs the same prompts in turn.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "full")]
    pub policies: Vec<BenchPolicy>,
    /// Prompt KV entries kept per layer and KV head (server default if unset).
    #[arg(long)]
    pub budget: Option<u32>,
    /// Report each policy's greedy agreement with the `full` run (added first if
    /// missing); needs `--temperature 0`.
    #[arg(long)]
    pub compare_to_full: bool,
    /// Sampling temperature; 0 is greedy, so runs are comparable token for token.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Generate exactly the requested output length, ignoring EOS.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Goodput SLOs in ms, e.g. `ttft:500,tpot:50` (also `e2el`).
    #[arg(long)]
    pub slo: Option<Slo>,
    /// Also write the full report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write one CSV row per request (every policy) here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Also write one JSON line per request (every policy) with its generated text and
    /// token ids, to check two runs token for token (with `--backend openai`, ids are
    /// asked for with vLLM's `return_token_ids` and null when the server sends none).
    #[arg(long)]
    pub output_texts: Option<PathBuf>,
    /// Exit 0 even when requests failed (the report still counts them).
    #[arg(long)]
    pub allow_errors: bool,
}

/// Flag combinations that cannot run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgsError {
    #[error("--compare-to-full needs greedy decoding (--temperature 0), got {0}")]
    CompareNeedsGreedy(f32),
    #[error("--dataset {dataset} needs {flag}")]
    Missing {
        dataset: &'static str,
        flag: &'static str,
    },
    #[error(
        "--backend openai with --dataset {dataset} needs --model-dir (the served model's folder: \
         the OpenAI API does not report the vocabulary random prompts are drawn from)"
    )]
    OpenAiNeedsModelDir { dataset: &'static str },
    #[error(
        "--backend openai cannot cut long-context prompts by tokens (the OpenAI API has no \
         tokenizer call); pass --cut-by chars"
    )]
    OpenAiCutByTokens,
    #[error("--{flag} must be at least 1")]
    Zero { flag: &'static str },
    #[error(
        "prompt {index} has {prompt_tokens} tokens + {max_tokens} to generate = {}, over the \
         server's maximum model length of {max_model_len} tokens (its max_model_len); \
         lower --input-len ({input_len}) or --output-len ({output_len})",
        prompt_tokens + u64::from(*max_tokens)
    )]
    TooLong {
        index: usize,
        prompt_tokens: u64,
        max_tokens: u32,
        max_model_len: u32,
        input_len: usize,
        output_len: usize,
    },
}

/// Requests failed and `--allow-errors` was not given.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "{failed} of {sent} requests failed (first error of each kind above); pass --allow-errors to exit 0 anyway"
)]
pub struct RequestsFailed {
    pub failed: usize,
    pub sent: usize,
}

/// Why a benchmark could not run or report; each module's error, as it names the problem.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Scrape(#[from] ScrapeError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    OpenAi(#[from] OpenAiError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    RequestsFailed(#[from] RequestsFailed),
    #[error("--output-len is too large")]
    OutputLen(#[source] std::num::TryFromIntError),
    #[error("encoding the JSON report")]
    Json(#[source] serde_json::Error),
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BenchArgs {
    fn validate(&self) -> Result<(), ArgsError> {
        if self.compare_to_full && self.temperature != 0.0 {
            return Err(ArgsError::CompareNeedsGreedy(self.temperature));
        }
        if self.dataset == DatasetKind::Jsonl && self.dataset_path.is_none() {
            return Err(ArgsError::Missing {
                dataset: "jsonl",
                flag: "--dataset-path",
            });
        }
        if self.dataset == DatasetKind::LongContext && self.text_dir.is_none() {
            return Err(ArgsError::Missing {
                dataset: "long-context",
                flag: "--text-dir",
            });
        }
        if self.backend == BackendKind::Openai {
            if self.model_dir.is_none() {
                let dataset = match self.dataset {
                    DatasetKind::Random => Some("random"),
                    DatasetKind::SharedPrefix => Some("shared-prefix"),
                    DatasetKind::DocQa => Some("doc-qa"),
                    DatasetKind::Jsonl | DatasetKind::LongContext => None,
                };
                if let Some(dataset) = dataset {
                    return Err(ArgsError::OpenAiNeedsModelDir { dataset });
                }
            }
            if self.dataset == DatasetKind::LongContext && self.cut_by == CutBy::Tokens {
                return Err(ArgsError::OpenAiCutByTokens);
            }
        }
        for (flag, value) in [
            ("num-prompts", self.num_prompts),
            ("max-concurrency", self.max_concurrency.unwrap_or(1)),
            ("num-documents", self.num_documents),
            ("document-len", self.document_len),
            ("questions-per-document", self.questions_per_document),
        ] {
            if value == 0 {
                return Err(ArgsError::Zero { flag });
            }
        }
        Ok(())
    }

    /// Refuses prompts the server would reject as too long, before any is sent: a
    /// prompt's token ids plus its `max_tokens` must fit `max_model_len`. Text prompts
    /// (jsonl, long-context cut by chars) have no token count here; the server judges them.
    fn check_fits(&self, prompts: &[Prompt], max_model_len: u32) -> Result<(), ArgsError> {
        let too_long = prompts.iter().enumerate().find_map(|(index, prompt)| {
            let PromptInput::TokenIds(ids) = &prompt.input else {
                return None;
            };
            let prompt_tokens = ids.len() as u64;
            (prompt_tokens + u64::from(prompt.max_tokens) > u64::from(max_model_len)).then_some(
                ArgsError::TooLong {
                    index,
                    prompt_tokens,
                    max_tokens: prompt.max_tokens,
                    max_model_len,
                    input_len: self.input_len,
                    output_len: self.output_len,
                },
            )
        });
        too_long.map_or(Ok(()), Err)
    }

    /// Policies in run order, each once; `full` first when others are compared to it.
    fn policy_order(&self) -> Vec<BenchPolicy> {
        let mut order = Vec::new();
        if self.compare_to_full {
            order.push(BenchPolicy::Full);
        }
        for &p in &self.policies {
            if !order.contains(&p) {
                order.push(p);
            }
        }
        order
    }
}

/// Runs the benchmark and prints the report. Fails on bad flags, an unreachable server,
/// unreadable data or prompts longer than the model takes (checked before any request is
/// sent); failed requests are counted in the report, their first error of each kind is
/// printed, and they fail the run after the report is written unless `--allow-errors`.
pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    args.validate()?;
    let arrival = ArrivalProcess::new(args.request_rate, args.burstiness)?;
    let scraper = match &args.metrics_url {
        Some(url) => Some(Scraper {
            url: url.parse::<MetricsUrl>()?,
            interval: Duration::from_millis(args.scrape_interval_ms.max(1)),
        }),
        None => None,
    };
    let server = connect(&args).await?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let prompts = build_prompts(&args, &server, &mut rng).await?;
    match server.max_model_len {
        Some(max_model_len) => args.check_fits(&prompts, max_model_len)?,
        None => eprintln!(
            "the server does not report max_model_len (GET /v1/models); prompt lengths are \
             not checked before sending"
        ),
    }
    let offsets = arrival.offsets_secs(prompts.len(), &mut rng);

    let mut runs: Vec<PolicyRun> = Vec::new();
    for policy in args.policy_order() {
        let plan = RunPlan {
            label: policy.name(),
            prompts: &prompts,
            offsets_secs: &offsets,
            max_concurrency: args.max_concurrency,
            settings: RequestSettings {
                temperature: Some(args.temperature),
                seed: args.seed,
                ignore_eos: args.ignore_eos,
                policy: policy.wire(),
                budget: if policy == BenchPolicy::Full {
                    None
                } else {
                    args.budget
                },
            },
            num_warmups: args.num_warmups,
        };
        let failed_warmups = runner::warm_up(&server.backend, &plan).await;
        if failed_warmups > 0 {
            eprintln!(
                "{}: {failed_warmups} of {} warm-up requests failed",
                plan.label, args.num_warmups
            );
        }
        runs.push(runner::run_policy(&server.backend, &plan, scraper.as_ref()).await?);
    }

    let answers: Vec<Option<&str>> = prompts.iter().map(|p| p.answer.as_deref()).collect();
    let full = runs
        .iter()
        .position(|r| r.policy == BenchPolicy::Full.name())
        .filter(|_| args.compare_to_full);
    let reports: Vec<_> = runs
        .iter()
        .enumerate()
        .map(|(i, run)| {
            let reference = full.filter(|&f| f != i).map(|f| &runs[f]);
            report::summarize(run, args.slo.as_ref(), &answers, reference)
        })
        .collect();
    println!("{}", report::markdown(&reports));
    for line in first_errors(&reports) {
        eprintln!("{line}");
    }
    let failures = check_failures(&reports, args.allow_errors);
    if let Some(path) = &args.csv {
        write(path, report::csv(&runs))?;
    }
    if let Some(path) = &args.output_texts {
        write(path, report::texts_jsonl(&runs))?;
    }
    if let Some(path) = &args.json {
        let report = BenchReport {
            args: &args,
            model: server.model,
            policies: reports,
        };
        write(
            path,
            serde_json::to_string_pretty(&report).map_err(BenchError::Json)?,
        )?;
    }
    Ok(failures?)
}

fn write(path: &std::path::Path, contents: String) -> Result<(), BenchError> {
    std::fs::write(path, contents).map_err(|source| BenchError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The server under test, as far as the run needs it before sending.
struct Server {
    backend: Backend,
    model: ServedModel,
    /// Prompt plus output limit, when the server reports one.
    max_model_len: Option<u32>,
    /// From the server (gRPC) or `--model-dir` (OpenAI).
    vocabulary: Option<Vocabulary>,
}

/// Connects to `--endpoint` with `--backend` and reads what the run needs to know.
async fn connect(args: &BenchArgs) -> Result<Server, BenchError> {
    let endpoint = args
        .endpoint
        .as_deref()
        .unwrap_or(args.backend.default_endpoint());
    match args.backend {
        BackendKind::Grpc => {
            let mut connection = client::connect(&client::endpoint_url(endpoint)).await?;
            let info = client::model_info(&mut connection).await?;
            Ok(Server {
                backend: Backend::Grpc(connection),
                max_model_len: Some(info.max_model_len),
                vocabulary: Some(Vocabulary {
                    vocab_size: info.vocab_size,
                    eos_token_ids: info.eos_token_ids.clone(),
                }),
                model: ServedModel::Grpc(model_summary(&info)),
            })
        }
        BackendKind::Openai => {
            let return_token_ids = args.compare_to_full || args.output_texts.is_some();
            let (client, card) =
                openai::connect(endpoint, args.model_name.as_deref(), return_token_ids).await?;
            Ok(Server {
                backend: Backend::OpenAi(client),
                max_model_len: card.max_model_len,
                vocabulary: args
                    .model_dir
                    .as_deref()
                    .map(Vocabulary::from_model_dir)
                    .transpose()?,
                model: ServedModel::Openai(card),
            })
        }
    }
}

/// One line per policy and gRPC code that failed: how often, and the first message.
fn first_errors(reports: &[PolicyReport]) -> Vec<String> {
    reports
        .iter()
        .flat_map(|r| {
            r.errors.iter().map(|(code, n)| {
                let message = r.first_errors.get(code).map_or("", String::as_str);
                format!(
                    "{}: {n} request(s) failed with {code}; first: {message}",
                    r.policy
                )
            })
        })
        .collect()
}

/// Fails when any recorded request failed, unless errors are allowed.
fn check_failures(reports: &[PolicyReport], allow_errors: bool) -> Result<(), RequestsFailed> {
    let failed: usize = reports.iter().map(|r| r.failed_requests).sum();
    let sent: usize = reports
        .iter()
        .map(|r| r.failed_requests + r.successful_requests)
        .sum();
    if failed == 0 || allow_errors {
        Ok(())
    } else {
        Err(RequestsFailed { failed, sent })
    }
}

fn model_summary(info: &ModelInfo) -> ModelSummary {
    ModelSummary {
        model_name: info.model_name.clone(),
        architecture: info.architecture.clone(),
        max_model_len: info.max_model_len,
        block_size: info.block_size,
        num_kv_blocks: info.num_kv_blocks,
        kv_cache_bytes: info.kv_cache_bytes,
        lookahead_name: info.lookahead_name.clone(),
    }
}

/// The prompts of `args.dataset`, `args.num_prompts` of them (jsonl: the first ones).
async fn build_prompts(
    args: &BenchArgs,
    server: &Server,
    rng: &mut StdRng,
) -> Result<Vec<Prompt>, BenchError> {
    let token_sampler = || {
        let vocabulary = server
            .vocabulary
            .as_ref()
            .expect("validated: random prompts have a vocabulary");
        TokenSampler::new(vocabulary.vocab_size, &vocabulary.eos_token_ids)
    };
    let shape = RandomShape {
        num_prompts: args.num_prompts,
        input_len: args.input_len,
        output_len: args.output_len,
        range_ratio: args.range_ratio,
    };
    let max_tokens = u32::try_from(args.output_len).map_err(BenchError::OutputLen)?;
    Ok(match args.dataset {
        DatasetKind::Random => dataset::random_prompts(shape, &token_sampler()?, rng)?,
        DatasetKind::SharedPrefix => {
            dataset::shared_prefix_prompts(shape, args.prefix_len, &token_sampler()?, rng)?
        }
        DatasetKind::DocQa => {
            let shape = DocQaShape {
                num_documents: args.num_documents,
                document_len: args.document_len,
                questions_per_document: args.questions_per_document,
                question_len: args.input_len,
                output_len: args.output_len,
                range_ratio: args.range_ratio,
            };
            dataset::doc_qa_prompts(shape, &token_sampler()?, rng)?
        }
        DatasetKind::Jsonl => {
            let path = args
                .dataset_path
                .as_deref()
                .expect("validated: jsonl has a path");
            let mut prompts = dataset::load_jsonl(path, max_tokens)?;
            prompts.truncate(args.num_prompts);
            prompts
        }
        DatasetKind::LongContext => {
            let dir = args
                .text_dir
                .as_deref()
                .expect("validated: long-context has a dir");
            let corpus = dataset::read_text_dir(dir)?;
            match args.cut_by {
                CutBy::Chars => dataset::long_context_by_chars(
                    &corpus,
                    &args.question,
                    args.input_len,
                    max_tokens,
                    args.num_prompts,
                    rng,
                )?,
                CutBy::Tokens => {
                    let Backend::Grpc(connection) = &server.backend else {
                        unreachable!("validated: only gRPC cuts by tokens");
                    };
                    let client = &mut connection.clone();
                    let tokenized = TokenizedCorpus {
                        prefix: client::tokenize(client, "", true).await?,
                        corpus: client::tokenize(client, &corpus, false).await?,
                        question: client::tokenize(client, &args.question, false).await?,
                    };
                    dataset::long_context_by_tokens(
                        &tokenized,
                        args.input_len,
                        max_tokens,
                        args.num_prompts,
                        rng,
                    )?
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(flags: &[&str]) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))
            .expect("flags parse")
            .bench
    }

    #[test]
    fn defaults_send_random_prompts_all_at_once_with_the_full_cache() {
        let args = parse(&[]);
        assert!(args.request_rate.is_infinite());
        assert_eq!(args.dataset, DatasetKind::Random);
        assert_eq!(args.policies, vec![BenchPolicy::Full]);
        assert_eq!(args.validate(), Ok(()));
    }

    #[test]
    fn policies_are_comma_separated_and_full_runs_first_when_compared() {
        let args = parse(&[
            "--policies",
            "lookahead,streaming_llm,snapkv",
            "--compare-to-full",
            "--slo",
            "ttft:500",
        ]);
        assert_eq!(
            args.policy_order(),
            vec![
                BenchPolicy::Full,
                BenchPolicy::Lookahead,
                BenchPolicy::StreamingLlm,
                BenchPolicy::Snapkv
            ]
        );
        assert_eq!(args.slo.unwrap().ttft_ms, Some(500.0));
        assert_eq!(BenchPolicy::StreamingLlm.name(), "streaming-llm");
    }

    #[test]
    fn comparing_to_full_refuses_sampled_decoding() {
        let args = parse(&["--compare-to-full", "--temperature", "0.7"]);
        assert_eq!(args.validate(), Err(ArgsError::CompareNeedsGreedy(0.7)));
    }

    #[test]
    fn file_datasets_need_their_path() {
        let args = parse(&["--dataset", "long-context"]);
        assert_eq!(
            args.validate(),
            Err(ArgsError::Missing {
                dataset: "long-context",
                flag: "--text-dir"
            })
        );
        assert!(
            parse(&["--dataset", "jsonl", "--dataset-path", "p.jsonl"])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn the_openai_backend_needs_a_model_dir_for_random_ids_and_cannot_cut_by_tokens() {
        assert_eq!(parse(&[]).backend, BackendKind::Grpc);
        assert_eq!(
            parse(&["--backend", "openai"]).validate(),
            Err(ArgsError::OpenAiNeedsModelDir { dataset: "random" })
        );
        let with_dir = parse(&["--backend", "openai", "--model-dir", "models/stories260K"]);
        assert_eq!(with_dir.validate(), Ok(()));
        let long = [
            "--backend",
            "openai",
            "--dataset",
            "long-context",
            "--text-dir",
            "t",
        ];
        assert_eq!(parse(&long).validate(), Err(ArgsError::OpenAiCutByTokens));
        let by_chars = [&long[..], &["--cut-by", "chars"]].concat();
        assert_eq!(parse(&by_chars).validate(), Ok(()));
        assert_eq!(
            BackendKind::Openai.default_endpoint(),
            "http://127.0.0.1:8000"
        );
    }

    fn ids_prompt(len: usize, max_tokens: u32) -> Prompt {
        Prompt {
            input: PromptInput::TokenIds(vec![1; len]),
            max_tokens,
            answer: None,
        }
    }

    #[test]
    fn prompts_longer_than_the_model_are_refused_naming_flags_limit_and_values() {
        let args = parse(&[]);
        let prompts = [ids_prompt(100, 28), ids_prompt(1024, 128)];
        let err = args.check_fits(&prompts, 512).unwrap_err();
        assert_eq!(
            err,
            ArgsError::TooLong {
                index: 1,
                prompt_tokens: 1024,
                max_tokens: 128,
                max_model_len: 512,
                input_len: 1024,
                output_len: 128,
            }
        );
        let message = err.to_string();
        for needle in ["1152", "512", "--input-len (1024)", "--output-len (128)"] {
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
        }
        assert_eq!(args.check_fits(&prompts[..1], 128), Ok(()));
        assert_eq!(args.check_fits(&[ids_prompt(384, 128)], 512), Ok(()));
        let text = Prompt {
            input: PromptInput::Text("x".repeat(4096)),
            ..ids_prompt(0, 128)
        };
        assert_eq!(args.check_fits(&[text], 512), Ok(()));
    }

    fn report_with_errors(policy: &str, ok: usize, errors: &[(&str, usize, &str)]) -> PolicyReport {
        let run = report::PolicyRun {
            policy: policy.into(),
            budget: None,
            records: Vec::new(),
            duration_secs: 1.0,
            kv_usage: None,
        };
        let mut r = report::summarize(&run, None, &[], None);
        r.successful_requests = ok;
        for &(code, n, message) in errors {
            r.failed_requests += n;
            r.errors.insert(code.into(), n);
            r.first_errors.insert(code.into(), message.into());
        }
        r
    }

    #[test]
    fn failed_requests_are_printed_once_per_kind_and_fail_the_run_unless_allowed() {
        let reports = [
            report_with_errors("full", 2, &[]),
            report_with_errors(
                "snapkv",
                0,
                &[
                    ("InvalidArgument", 3, "too long"),
                    ("Unavailable", 1, "draining"),
                ],
            ),
        ];
        assert_eq!(
            first_errors(&reports),
            vec![
                "snapkv: 3 request(s) failed with InvalidArgument; first: too long",
                "snapkv: 1 request(s) failed with Unavailable; first: draining",
            ]
        );
        assert_eq!(
            check_failures(&reports, false),
            Err(RequestsFailed { failed: 4, sent: 6 })
        );
        assert_eq!(check_failures(&reports, true), Ok(()));
        assert_eq!(check_failures(&reports[..1], false), Ok(()));
        assert!(parse(&["--allow-errors"]).allow_errors);
        assert!(!parse(&[]).allow_errors);
    }
}
