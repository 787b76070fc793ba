//! `glimpse eval`: how much of a full-cache answer survives each KV eviction policy at each
//! budget on a prompts file. Every policy answers the same prompts greedily; each answer is
//! compared token by token and distribution by distribution with the full-cache answer —
//! agreement, teacher-forced KL, attention recall, TTFT overhead, and when the prompts carry
//! expected answers exact-answer accuracy per task and needle depth — written as Markdown tables,
//! a JSON file and PNG plots.
//!
//! [`measure`] runs the prompts under every policy, [`accuracy`] scores answers against expected
//! ones and [`report`] writes everything; [`output`] holds what the two writers share (the error,
//! the font), so `report` uses `accuracy` and nothing points back.

pub mod accuracy;
pub mod measure;
pub mod output;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use glimpse_engine::backend::Device;
use glimpse_engine::config::{DtypeChoice, KvCacheDtype, KvCacheDtypeChoice, Quantization};
use glimpse_engine::eviction::Policy;
use glimpse_engine::lookahead::LookaheadModule;
use glimpse_engine::tokenizer::Tokenizer;
use glimpse_progress::bar;

use crate::prompts::read_eval_prompts;
use crate::{JobError, load_model_and_tokenizer};
use accuracy::{AnswerOutcome, Expected, FULL_CACHE};
use measure::{Candidate, CandidateKind, EvictedLength, PromptAnswers, RunSettings, evaluate};
use report::{EvalReport, EvalRow};

/// Flags of `glimpse eval`.
#[derive(Args)]
pub struct EvalArgs {
    #[arg(long, help = glimpse_engine::hub::MODEL_FLAG_HELP)]
    pub model: Option<PathBuf>,
    /// Dtype the weight matrices are held in: `auto` (the checkpoint's), `f32` or `bf16`.
    #[arg(long, default_value_t = DtypeChoice::Auto)]
    pub dtype: DtypeChoice,
    /// Quantize the weight matrices at load: `none`, or `int8` (Q8_0, as `glimpse serve
    /// --quantize`).
    #[arg(long, default_value_t = Quantization::None)]
    pub quantize: Quantization,
    /// Device to run on: `cpu`, or `cuda[:N]` (as `glimpse serve --device`).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// KV cache dtype of every policy's runs (`auto`: f32 on the CPU, bf16 on CUDA; `f32`;
    /// `bf16`); the full-cache reference is the device's widest (f32 on the CPU). With bf16, a `full` policy (no eviction) is evaluated first, so
    /// its row measures the KV dtype alone: KL(f32 full ‖ bf16 full) and agreement.
    #[arg(long, default_value_t = KvCacheDtypeChoice::Auto)]
    pub kv_cache_dtype: KvCacheDtypeChoice,
    /// Prompts (JSON Lines, `{"prompt": ...}`). Lines that also carry `answer` (and optionally
    /// `task`, `depth`, `context_tokens_target`, as the retrieval task generator writes them) add
    /// exact-answer accuracy; every evicted answer then runs to its own end of sequence.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Budgets (prompt entries kept per layer and KV head), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
    pub budgets: Vec<usize>,
    /// Longest greedy answer per prompt and policy.
    #[arg(long, default_value_t = 64)]
    pub answer_tokens: usize,
    /// A lookahead module to evaluate, as `LABEL=PATH` (repeatable); a bare path is labelled
    /// `lookahead`.
    #[arg(long = "lookahead")]
    pub lookahead: Vec<String>,
    /// Evaluate each lookahead module also with these windows (the last W prompt entries always
    /// kept, capped at half the budget), comma-separated; 0 is the paper's LookaheadKV.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub lookahead_windows: Vec<usize>,
    /// Leave out the baselines (StreamingLLM, SnapKV, PyramidKV). With no --lookahead either,
    /// prompts with expected answers are scored with the full cache alone.
    #[arg(long)]
    pub no_baselines: bool,
    /// Directory for eval.md, eval.json and the plots.
    #[arg(long)]
    pub out_dir: PathBuf,
}

/// Runs `glimpse eval`: prints the Markdown table and writes it, the JSON report and the plots
/// to `--out-dir`. `default_model_dir` is the model used when `--model` is not given. Fails on
/// bad flags, unreadable model, prompts or modules, or an unwritable output directory.
pub fn run(args: EvalArgs, default_model_dir: &Path) -> Result<(), JobError> {
    let (dir, model, tokenizer) = load_model_and_tokenizer(
        args.model.clone(),
        default_model_dir,
        args.dtype,
        args.quantize,
    )?;
    let (prompts, expected) = read_eval_prompts(&args.prompts, &tokenizer)?;
    if args.budgets.is_empty() {
        return Err(JobError::NoBudgets);
    }
    if args.answer_tokens == 0 {
        return Err(JobError::NoAnswerTokens);
    }

    let kv_dtype = args.kv_cache_dtype.resolve(args.device);
    let mut candidates = Vec::new();
    if kv_dtype != KvCacheDtype::widest_on(args.device) {
        candidates.push(Candidate {
            label: format!("full ({kv_dtype} KV)"),
            kind: CandidateKind::Baseline(Policy::Full),
        });
    }
    let mut modules = Vec::new();
    for spec in &args.lookahead {
        let (label, path) = spec
            .split_once('=')
            .map_or(("lookahead", spec.as_str()), |(l, p)| (l, p));
        let path = PathBuf::from(path);
        let module =
            LookaheadModule::load(&path, &model).map_err(|source| JobError::LoadModule {
                path: path.clone(),
                source,
            })?;
        modules.push((label.to_string(), path.display().to_string()));
        let module = Arc::new(module);
        for &window in &args.lookahead_windows {
            candidates.push(Candidate {
                label: match window {
                    0 => label.to_string(),
                    w => format!("{label} + window {w}"),
                },
                kind: CandidateKind::Lookahead {
                    module: module.clone(),
                    window,
                },
            });
        }
    }
    if !args.no_baselines {
        for policy in [
            Policy::snapkv(),
            Policy::pyramidkv(),
            Policy::streaming_llm(),
        ] {
            candidates.push(Candidate {
                label: policy.name().to_string(),
                kind: CandidateKind::Baseline(policy),
            });
        }
    }
    if candidates.is_empty() && expected.is_none() {
        return Err(JobError::NothingToEvaluate);
    }

    let progress = bar("eval", prompts.len());
    let settings = RunSettings {
        answer_tokens: args.answer_tokens,
        evicted_length: match expected {
            Some(_) => EvictedLength::OwnStop,
            None => EvictedLength::LikeFullCache,
        },
        kv_dtype,
    };
    let evaluation = evaluate(
        &model,
        args.device,
        &prompts,
        &candidates,
        &args.budgets,
        settings,
        || progress.inc(1),
    )?;
    progress.finish_and_clear();

    let mut rows = evaluation.rows;
    let outcomes = match &expected {
        Some(expected) => {
            let outcomes = score_answers(
                &tokenizer,
                expected,
                &evaluation.answers,
                &candidates,
                &args.budgets,
            )?;
            fill_row_accuracy(&mut rows, &outcomes);
            outcomes
        }
        None => Vec::new(),
    };

    let report = EvalReport {
        model: dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        prompts_file: args.prompts.display().to_string(),
        num_prompts: prompts.len(),
        mean_prompt_tokens: prompts.iter().map(Vec::len).sum::<usize>() as f64
            / prompts.len() as f64,
        answer_tokens: args.answer_tokens,
        modules,
        rows,
        oracle_recall: evaluation.oracle_recall,
        accuracy: outcomes,
    };
    std::fs::create_dir_all(&args.out_dir).map_err(|source| JobError::CreateDir {
        path: args.out_dir.clone(),
        source,
    })?;
    let table = report::markdown(&report);
    let table_path = args.out_dir.join("eval.md");
    std::fs::write(&table_path, &table).map_err(|source| JobError::Write {
        path: table_path,
        source,
    })?;
    report::write_json(&report, &args.out_dir.join("eval.json"))?;
    let plots = report::plot_all(&report, &args.out_dir)?;
    println!("{table}");
    tracing::info!(out_dir = %args.out_dir.display(), plots = plots.len(), "evaluation written");
    Ok(())
}

/// Every greedy answer decoded and scored against its prompt's expected answer.
fn score_answers(
    tokenizer: &Tokenizer,
    expected: &[Expected],
    answers: &[PromptAnswers],
    candidates: &[Candidate],
    budgets: &[usize],
) -> Result<Vec<AnswerOutcome>, JobError> {
    let mut outcomes = Vec::new();
    for (expected, answers) in expected.iter().zip(answers) {
        let full = tokenizer.decode(&answers.full, true)?;
        outcomes.push(accuracy::outcome(expected, FULL_CACHE, None, &full));
        for (candidate, per_budget) in candidates.iter().zip(&answers.evicted) {
            for (&budget, answer) in budgets.iter().zip(per_budget) {
                let text = tokenizer.decode(answer, true)?;
                outcomes.push(accuracy::outcome(
                    expected,
                    &candidate.label,
                    Some(budget),
                    &text,
                ));
            }
        }
    }
    Ok(outcomes)
}

/// Each row's accuracy over all prompts, from the scored outcomes.
fn fill_row_accuracy(rows: &mut [EvalRow], outcomes: &[AnswerOutcome]) {
    for row in rows {
        row.accuracy = accuracy::of_policy(outcomes, &row.policy, Some(row.budget));
    }
}
