//! `glimpse init-lookahead`: writes a seeded, randomly initialised LookaheadKV module for a model
//! (32 embeddings, LoRA A/B on every projection). For load tests, deployments and benchmarks of
//! the lookahead policy's cost before a trained module exists; it carries no learned signal, so
//! its selections are not meant to be good.

use std::path::PathBuf;

use clap::Args;
use glimpse_engine::hub::find_model;
use glimpse_engine::lookahead::{LookaheadModule, RandomInit};
use glimpse_engine::model::Model;

use crate::JobError;

/// Flags of `glimpse init-lookahead`.
#[derive(Args)]
pub struct InitLookaheadArgs {
    /// The model the module is made for: a model folder, a `models--ORG--NAME` hub cache folder or
    /// a hub id `ORG/NAME` in the local hub cache (no download; see `glimpse serve --help`).
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the module (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random values.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub shape: ModuleShapeArgs,
}

/// The size of a lookahead module (paper defaults), shared by `init-lookahead` and
/// `train-lookahead`.
#[derive(Args)]
pub struct ModuleShapeArgs {
    /// Lookahead tokens.
    #[arg(long, default_value_t = RandomInit::default().num_tokens)]
    pub num_tokens: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = RandomInit::default().rank)]
    pub rank: usize,
    /// LoRA alpha (deltas are scaled by alpha / rank).
    #[arg(long, default_value_t = RandomInit::default().alpha)]
    pub alpha: f32,
}

impl ModuleShapeArgs {
    /// A seeded random module of this shape for `model`. Fails on an empty or non-finite shape,
    /// or when the model's identity cannot be read.
    pub fn random_module(&self, model: &Model, seed: u64) -> Result<LookaheadModule, JobError> {
        if !(self.num_tokens > 0 && self.rank > 0 && self.alpha.is_finite()) {
            return Err(JobError::ModuleShape);
        }
        let init = RandomInit {
            seed,
            num_tokens: self.num_tokens,
            rank: self.rank,
            alpha: self.alpha,
        };
        Ok(LookaheadModule::random(
            &model.config,
            model.identity()?,
            init,
        ))
    }
}

/// Runs `glimpse init-lookahead`: writes the random module to `--out`.
pub fn run(args: InitLookaheadArgs) -> Result<(), JobError> {
    let dir = find_model(&args.model)?.dir;
    let model = Model::load(&dir).map_err(|source| JobError::LoadModel { dir, source })?;
    let module = args.shape.random_module(&model, args.seed)?;
    module.save(&args.out)?;
    tracing::info!(out = %args.out.display(), base_model = %module.identity.name, "random lookahead module written");
    Ok(())
}
