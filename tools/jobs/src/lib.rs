//! Glimpse's offline jobs (crate `glimpse-jobs`): the `glimpse` subcommands that run the engine in
//! process on a prompts file and write files, not serve requests — `eval`, `train-lookahead`,
//! `sample-prompts` and `init-lookahead`. Each module owns its subcommand's flags (clap `Args`)
//! and its `run`; the binary only dispatches to them.
//!
//! Depends on the engine alone, not on the serving crate: the jobs drive the engine's
//! [`OfflineRunner`](glimpse_engine::runner::OfflineRunner) and training code directly.

pub mod eval;
pub mod init_lookahead;
pub mod prompts;
pub mod sample_prompts;
pub mod train_lookahead;

use std::path::{Path, PathBuf};

use glimpse_engine::EngineError;
use glimpse_engine::config::{DtypeChoice, Quantization};
use glimpse_engine::hub::find_model;
use glimpse_engine::model::Model;
use glimpse_engine::tokenizer::Tokenizer;

use eval::output::ReportError;
use prompts::PromptsError;

/// Why a job failed: bad flags, unreadable input, or an engine error, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("loading model from {}", dir.display())]
    LoadModel {
        dir: PathBuf,
        #[source]
        source: EngineError,
    },
    #[error("loading the tokenizer of {}", dir.display())]
    LoadTokenizer {
        dir: PathBuf,
        #[source]
        source: EngineError,
    },
    #[error("loading lookahead module {}", path.display())]
    LoadModule {
        path: PathBuf,
        #[source]
        source: EngineError,
    },
    #[error(transparent)]
    Prompts(#[from] PromptsError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("creating {}", path.display())]
    CreateDir {
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
    #[error("--budgets lists no budget")]
    NoBudgets,
    #[error("--answer-tokens must be at least 1")]
    NoAnswerTokens,
    #[error(
        "nothing to evaluate: no --lookahead, --no-baselines and no expected answers in the prompts"
    )]
    NothingToEvaluate,
    #[error("{prompts} prompts leave none to train on after {validation} validation prompts")]
    NoTrainingPrompts { prompts: usize, validation: usize },
    #[error("the model has no BOS token to start stories from")]
    NoBosToken,
    #[error("--num-tokens and --rank must be at least 1 and --alpha finite")]
    ModuleShape,
}

/// Loads the model `--model` names (a folder or a hub id, see [`find_model`]; else `default_dir`,
/// the binary's bundled model) and its tokenizer; returns the model's folder too, for reports.
fn load_model_and_tokenizer(
    model: Option<PathBuf>,
    default_dir: &Path,
    dtype: DtypeChoice,
    quantize: Quantization,
) -> Result<(PathBuf, Model, Tokenizer), JobError> {
    let dir = match model {
        Some(spec) => find_model(&spec)?.dir,
        None => default_dir.to_path_buf(),
    };
    let model =
        Model::load_quantized(&dir, dtype, quantize).map_err(|source| JobError::LoadModel {
            dir: dir.clone(),
            source,
        })?;
    let tokenizer = Tokenizer::from_dir(&dir).map_err(|source| JobError::LoadTokenizer {
        dir: dir.clone(),
        source,
    })?;
    Ok((dir, model, tokenizer))
}
