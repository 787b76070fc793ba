//! `glimpse train-lookahead`: trains a LookaheadKV module for a model (docs/design.md §4).
//!
//! Prompts come from a JSON Lines file or are sampled from the model (`--self-generate N`); the
//! model answers each greedily with the full cache; a held-out share of the prompts measures the
//! validation loss. The module (embeddings + LoRA, paper sizes by default) trains with Adam on the
//! mean KL divergence between the answer's attention and the lookahead rows' attention. Progress
//! shows the loss; checkpoints allow `--resume`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use glimpse_engine::config::{DtypeChoice, Quantization};
use glimpse_engine::lookahead::LookaheadModule;
use glimpse_engine::train::data::greedy_answers;
use glimpse_engine::train::{
    AdamOptions, AttentionTarget, FrozenModel, Precision, TrainOptions, TrainableModule, Trainer,
    checkpoint_module_path,
};
use glimpse_progress::bar;

use crate::init_lookahead::ModuleShapeArgs;
use crate::prompts::read_prompts;
use crate::sample_prompts::SelfGenerateArgs;
use crate::{JobError, load_model_and_tokenizer};

/// Flags of `glimpse train-lookahead`.
#[derive(Args)]
pub struct TrainLookaheadArgs {
    #[arg(long, help = glimpse_engine::hub::MODEL_FLAG_HELP)]
    pub model: Option<PathBuf>,
    /// Training prompts (JSON Lines, `{"prompt": ...}`); or use --self-generate.
    #[arg(
        long,
        conflicts_with = "self_generate",
        required_unless_present = "self_generate"
    )]
    pub prompts: Option<PathBuf>,
    /// Sample this many prompts from the model itself (seeded; see --seed).
    #[arg(long)]
    pub self_generate: Option<usize>,
    #[command(flatten)]
    pub sampling: SelfGenerateArgs,
    /// Longest greedy answer per prompt (the paper uses 512 on 8B models).
    #[arg(long, default_value_t = 64)]
    pub answer_tokens: usize,
    /// Prompts held out for the validation loss (taken from the end of the prompt list).
    #[arg(long, default_value_t = 32)]
    pub validation_prompts: usize,
    /// Adam updates.
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    /// Prompts per update.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub learning_rate: f64,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[command(flatten)]
    pub shape: ModuleShapeArgs,
    /// Train the embeddings only (the LoRA pairs stay zero): the ablation without adapters.
    #[arg(long)]
    pub no_lora: bool,
    /// Seed of the initial module.
    #[arg(long, default_value_t = 0)]
    pub init_seed: u64,
    /// Compute the validation loss every this many updates.
    #[arg(long, default_value_t = 25)]
    pub validate_every: u64,
    /// Checkpoint directory (module + optimiser), written every --checkpoint-every updates.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Continue from this checkpoint directory (same data and options).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Where to write the trained module.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `glimpse train-lookahead` and writes the module to `--out`. `default_model_dir` is the
/// model used when `--model` is not given. Fails on bad flags or data, an unreadable model or
/// checkpoint, or an engine error while answering or training.
pub fn run(args: TrainLookaheadArgs, default_model_dir: &Path) -> Result<(), JobError> {
    let (_, model, tokenizer) = load_model_and_tokenizer(
        args.model.clone(),
        default_model_dir,
        DtypeChoice::Auto,
        Quantization::None,
    )?;

    let started = Instant::now();
    let prompts = match (&args.prompts, args.self_generate) {
        (Some(path), _) => read_prompts(path, &tokenizer)?,
        (None, Some(count)) => args.sampling.sample(&model, &tokenizer, count)?,
        (None, None) => unreachable!("clap requires one of --prompts and --self-generate"),
    };
    if prompts.len() <= args.validation_prompts {
        return Err(JobError::NoTrainingPrompts {
            prompts: prompts.len(),
            validation: args.validation_prompts,
        });
    }
    let answering = bar("answers", prompts.len());
    let examples = greedy_answers(&model, prompts, args.answer_tokens, || answering.inc(1))?;
    answering.finish_and_clear();

    let max_positions = model
        .config
        .max_model_len
        .max(examples.iter().map(|e| e.prompt.len()).max().unwrap_or(0) + args.shape.num_tokens);
    let frozen = FrozenModel::load(&model, Precision::F32, max_positions)?;
    let targeting = bar("targets", examples.len());
    let mut targets = Vec::with_capacity(examples.len());
    for e in examples.iter().filter(|e| !e.answer.is_empty()) {
        targets.push(AttentionTarget::compute(&frozen, &e.prompt, &e.answer)?);
        targeting.inc(1);
    }
    targeting.finish_and_clear();
    let validation = targets.split_off(targets.len() - args.validation_prompts);
    let mean_prompt =
        targets.iter().map(|t| t.prompt_len()).sum::<usize>() as f64 / targets.len() as f64;
    tracing::info!(
        train = targets.len(),
        validation = validation.len(),
        mean_prompt_tokens = format!("{mean_prompt:.0}"),
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "training data ready"
    );

    let initial = match &args.resume {
        Some(checkpoint) => LookaheadModule::load(&checkpoint_module_path(checkpoint), &model)?,
        None => args.shape.random_module(&model, args.init_seed)?,
    };
    let options = TrainOptions {
        batch_size: args.batch_size,
        seed: args.sampling.seed,
        adam: AdamOptions {
            learning_rate: args.learning_rate,
            max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
            ..AdamOptions::default()
        },
    };
    let module = TrainableModule::new(&initial, Precision::F32, !args.no_lora)?;
    let mut trainer = Trainer::new(&frozen, module, targets, validation, options)?;
    if let Some(checkpoint) = &args.resume {
        trainer = trainer.resume(checkpoint)?;
    }
    let initial_validation = trainer.validation_loss()?;
    tracing::info!(step = trainer.step_count(), validation_loss = ?initial_validation, "training starts");

    let progress = bar("training", args.steps as usize);
    progress.set_position(trainer.step_count());
    let training_started = Instant::now();
    let first_step = trainer.step_count();
    let mut last_validation = initial_validation;
    while trainer.step_count() < args.steps {
        let report = trainer.step()?;
        if report.step % args.validate_every == 0 || report.step == args.steps {
            last_validation = trainer.validation_loss()?;
            tracing::info!(step = report.step, loss = report.loss, validation_loss = ?last_validation, "validation");
        }
        if let Some(dir) = &args.checkpoint_dir
            && (report.step % args.checkpoint_every == 0 || report.step == args.steps)
        {
            trainer.save_checkpoint(dir)?;
        }
        progress.set_message(format!(
            "loss {:.4} val {} |g| {:.3}",
            report.loss,
            last_validation.map_or("-".into(), |v| format!("{v:.4}")),
            report.grad_norm
        ));
        progress.inc(1);
    }
    progress.finish_and_clear();
    let seconds = training_started.elapsed().as_secs_f64();
    let steps = trainer.step_count() - first_step;
    let rows_per_step = args.batch_size as f64 * (mean_prompt + args.shape.num_tokens as f64);
    tracing::info!(
        steps,
        seconds = format!("{seconds:.1}"),
        tokens_per_second = format!("{:.0}", steps as f64 * rows_per_step / seconds.max(1e-9)),
        initial_validation_loss = ?initial_validation,
        final_validation_loss = ?last_validation,
        "training done (tokens = prompt + lookahead rows per prompt per update)"
    );
    trainer.module()?.save(&args.out)?;
    tracing::info!(out = %args.out.display(), "lookahead module written");
    Ok(())
}
