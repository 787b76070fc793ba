//! `glimpse sample-prompts`: writes prompts sampled from the model itself (seeded stories cut at a
//! random length), for training and evaluating lookahead modules where no text corpus is at hand.

use std::path::{Path, PathBuf};

use clap::Args;
use glimpse_engine::config::{DtypeChoice, Quantization};
use glimpse_engine::model::Model;
use glimpse_engine::tokenizer::Tokenizer;
use glimpse_engine::train::data::sample_prompts;
use glimpse_progress::bar as progress_bar;

use crate::prompts::write_prompts;
use crate::{JobError, load_model_and_tokenizer};

/// How many prompts to draw from the model, and how long.
#[derive(Args, Clone)]
pub struct SelfGenerateArgs {
    /// Seed of the draws (prompts with different seeds are, in practice, disjoint).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Shortest prompt, in tokens (BOS included).
    #[arg(long, default_value_t = 200)]
    pub min_prompt_tokens: usize,
    /// Longest prompt, in tokens.
    #[arg(long, default_value_t = 448)]
    pub max_prompt_tokens: usize,
}

impl SelfGenerateArgs {
    /// Samples `count` prompts with a progress bar. Fails when the model has no BOS token to
    /// start from, or on an engine error.
    pub fn sample(
        &self,
        model: &Model,
        tokenizer: &Tokenizer,
        count: usize,
    ) -> Result<Vec<Vec<u32>>, JobError> {
        let start: Vec<u32> = tokenizer
            .bos_token_id()
            .or(model.config.bos_token_id)
            .into_iter()
            .collect();
        if start.is_empty() {
            return Err(JobError::NoBosToken);
        }
        let bar = progress_bar("prompts", count);
        let prompts = sample_prompts(
            model,
            &start,
            count,
            self.seed,
            self.min_prompt_tokens..=self.max_prompt_tokens,
            || bar.inc(1),
        )?;
        bar.finish_and_clear();
        Ok(prompts)
    }
}

/// Flags of `glimpse sample-prompts`.
#[derive(Args)]
pub struct SamplePromptsArgs {
    #[arg(long, help = glimpse_engine::hub::MODEL_FLAG_HELP)]
    pub model: Option<PathBuf>,
    /// Prompts to write.
    #[arg(long)]
    pub count: usize,
    #[command(flatten)]
    pub sampling: SelfGenerateArgs,
    /// Output file (JSON Lines, `{"prompt": ...}`).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `glimpse sample-prompts`: writes `--count` sampled prompts to `--out`.
/// `default_model_dir` is the model used when `--model` is not given.
pub fn run(args: SamplePromptsArgs, default_model_dir: &Path) -> Result<(), JobError> {
    let (_, model, tokenizer) = load_model_and_tokenizer(
        args.model,
        default_model_dir,
        DtypeChoice::Auto,
        Quantization::None,
    )?;
    let prompts = args.sampling.sample(&model, &tokenizer, args.count)?;
    write_prompts(&args.out, &prompts, &tokenizer)?;
    tracing::info!(count = prompts.len(), out = %args.out.display(), "prompts written");
    Ok(())
}
