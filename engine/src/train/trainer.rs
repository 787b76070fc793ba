//! The training loop: batches of prompts in a seeded order, the mean KL loss of a batch, one Adam
//! update per batch, validation on held-out prompts, checkpoints that resume exactly.

use std::path::Path;

use candle_core::Tensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::adam::{Adam, AdamOptions};
use super::adapters::TrainableModule;
use super::frozen::FrozenModel;
use super::objective::kl_loss;
use super::target::AttentionTarget;
use crate::error::{EngineError, Result};
use crate::lookahead::LookaheadModule;

/// File names inside a checkpoint directory.
const CHECKPOINT_MODULE: &str = "module.safetensors";
const CHECKPOINT_OPTIMIZER: &str = "optimizer.safetensors";

/// How to train.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainOptions {
    /// Prompts per update (the paper's effective batch is 32).
    pub batch_size: usize,
    /// Seeds the order in which prompts are visited (a fresh permutation per epoch).
    pub seed: u64,
    pub adam: AdamOptions,
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Updates done so far, this one included.
    pub step: u64,
    /// Mean KL loss of the batch, before the update.
    pub loss: f64,
    /// Global gradient norm, before clipping.
    pub grad_norm: f64,
}

/// Trains one lookahead module on precomputed targets.
pub struct Trainer<'a> {
    frozen: &'a FrozenModel,
    module: TrainableModule,
    adam: Adam,
    train: Vec<AttentionTarget>,
    validation: Vec<AttentionTarget>,
    options: TrainOptions,
}

impl<'a> Trainer<'a> {
    /// A trainer starting from `module` with a fresh optimiser.
    ///
    /// Fails with [`EngineError::InvalidParameter`] when there is no training target or the batch
    /// size is 0.
    pub fn new(
        frozen: &'a FrozenModel,
        module: TrainableModule,
        train: Vec<AttentionTarget>,
        validation: Vec<AttentionTarget>,
        options: TrainOptions,
    ) -> Result<Self> {
        if train.is_empty() || options.batch_size == 0 {
            return Err(EngineError::InvalidParameter {
                field: "training set",
                message: format!(
                    "need at least one training prompt and a positive batch size, got {} prompts and batch {}",
                    train.len(),
                    options.batch_size
                ),
            });
        }
        let adam = Adam::new(&module.trainable(), options.adam)?;
        Ok(Self {
            frozen,
            module,
            adam,
            train,
            validation,
            options,
        })
    }

    /// Continues from a checkpoint written by [`Self::save_checkpoint`]: `module` must be the
    /// checkpoint's module (see [`checkpoint_module_path`]); the optimiser's moments and step
    /// count are read from the directory, so the run goes on as if never stopped.
    pub fn resume(mut self, checkpoint: &Path) -> Result<Self> {
        self.adam = Adam::load(
            &checkpoint.join(CHECKPOINT_OPTIMIZER),
            &self.module.trainable(),
            self.options.adam,
        )?;
        Ok(self)
    }

    /// Updates done so far.
    pub fn step_count(&self) -> u64 {
        self.adam.step_count()
    }

    /// Runs one update on the next batch.
    pub fn step(&mut self) -> Result<StepReport> {
        let indices = self.batch_indices(self.adam.step_count());
        let losses = indices
            .par_iter()
            .map(|&i| kl_loss(self.frozen, &self.module, &self.train[i]))
            .collect::<Result<Vec<Tensor>>>()?;
        let loss = (Tensor::stack(&losses, 0)?.sum_all()? / losses.len() as f64)?;
        let grads = loss.backward()?;
        let value = scalar(&loss)?;
        let grad_norm = self.adam.step(&self.module.trainable(), &grads)?;
        Ok(StepReport {
            step: self.adam.step_count(),
            loss: value,
            grad_norm,
        })
    }

    /// Mean KL loss over the validation prompts (`None` when there are none).
    pub fn validation_loss(&self) -> Result<Option<f64>> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        let losses = self
            .validation
            .par_iter()
            .map(|t| scalar(&kl_loss(self.frozen, &self.module, t)?))
            .collect::<Result<Vec<f64>>>()?;
        Ok(Some(losses.iter().sum::<f64>() / losses.len() as f64))
    }

    /// The module as trained so far.
    pub fn module(&self) -> Result<LookaheadModule> {
        self.module.to_module()
    }

    /// Writes the module and the optimiser state to `dir` (created if needed), replacing any
    /// earlier checkpoint there.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        self.module()?.save(&checkpoint_module_path(dir))?;
        self.adam.save(&dir.join(CHECKPOINT_OPTIMIZER))
    }

    /// Indices of the batch of update `step`: consecutive slices of one seeded permutation of the
    /// training set per epoch, so a resumed run visits the prompts a continuous one would.
    fn batch_indices(&self, step: u64) -> Vec<usize> {
        let len = self.train.len();
        let first = step as usize * self.options.batch_size;
        let mut epoch_order = None::<(usize, Vec<usize>)>;
        (first..first + self.options.batch_size)
            .map(|k| {
                let epoch = k / len;
                if epoch_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    let mut order: Vec<usize> = (0..len).collect();
                    let mut rng = ChaCha8Rng::seed_from_u64(
                        self.options.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    order.shuffle(&mut rng);
                    epoch_order = Some((epoch, order));
                }
                epoch_order.as_ref().expect("set above").1[k % len]
            })
            .collect()
    }
}

/// The module file inside a checkpoint directory (load it to resume).
pub fn checkpoint_module_path(dir: &Path) -> std::path::PathBuf {
    dir.join(CHECKPOINT_MODULE)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}
