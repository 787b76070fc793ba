//! The checks every backend runs on a [`ForwardBatch`] before it writes anything: the batch
//! against the model (vocabulary, length, layers), the KV pool (block tables, blocks to compact
//! into) and the loaded LookaheadKV module. One home, so a batch one backend refuses is refused
//! by every backend with the same error.

use super::KvGeometry;
use crate::batch::{ForwardBatch, SequenceInput};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::eviction::{EvictionPolicy, LookaheadMismatch, PromptEviction};

/// What a batch is checked against.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits<'a> {
    pub config: &'a ModelConfig,
    pub geometry: &'a KvGeometry,
    /// Token count of the loaded LookaheadKV module, `None` when none is loaded.
    pub lookahead_tokens: Option<usize>,
}

impl BatchLimits<'_> {
    /// Checks the batch against the model and pool before anything is written.
    ///
    /// Fails with [`EngineError::InvalidBatch`] or [`EngineError::InvalidParameter`] as
    /// [`super::Backend::forward`] documents.
    pub fn validate(&self, batch: &ForwardBatch<'_>) -> Result<()> {
        let (config, geometry) = (self.config, self.geometry);
        let bad = |message: String| Err(EngineError::InvalidBatch { message });
        for (i, seq) in batch.sequences.iter().enumerate() {
            if seq.token_ids.is_empty() {
                return bad(format!("sequence {i} has no tokens"));
            }
            if let Some(t) = seq
                .token_ids
                .iter()
                .find(|&&t| t as usize >= config.vocab_size)
            {
                return bad(format!(
                    "sequence {i}: token id {t} >= vocabulary size {}",
                    config.vocab_size
                ));
            }
            let last_position = seq.first_position + seq.token_ids.len();
            if last_position > config.max_model_len {
                return bad(format!(
                    "sequence {i}: position {} beyond the model's maximum length {}",
                    last_position - 1,
                    config.max_model_len
                ));
            }
            let needed = geometry.blocks_for(seq.num_entries_after());
            if seq.block_table.len() < needed {
                return bad(format!(
                    "sequence {i}: {} entries need {needed} blocks, block table has {}",
                    seq.num_entries_after(),
                    seq.block_table.len()
                ));
            }
            if let Some(b) = seq.block_table[..needed]
                .iter()
                .find(|&&b| b as usize >= geometry.num_blocks)
            {
                return bad(format!(
                    "sequence {i}: block {b} outside the pool of {}",
                    geometry.num_blocks
                ));
            }
            if let Some(prefix) = seq.compacted {
                let fits = prefix.layer_kept.len() == config.num_layers
                    && prefix.layer_kept.iter().all(|&k| k <= prefix.entries)
                    && prefix.entries <= seq.first_cache_entry;
                if !fits {
                    return bad(format!(
                        "sequence {i}: compacted prefix of {} entries with {} layer counts does not fit {} layers and {} cached entries",
                        prefix.entries,
                        prefix.layer_kept.len(),
                        config.num_layers,
                        seq.first_cache_entry
                    ));
                }
            }
            if let Some(policy) = seq.eviction {
                self.validate_eviction(i, seq, policy)?;
            } else if seq.compact_into.is_some() {
                return bad(format!(
                    "sequence {i}: blocks to compact into but no eviction"
                ));
            }
        }
        Ok(())
    }

    /// Checks that `sequence`'s blocks to compact into lie in the pool, hold the most entries
    /// `prompt` keeps and are none of the blocks its entries are read from.
    fn validate_compact_into(
        &self,
        i: usize,
        seq: &SequenceInput<'_>,
        prompt: PromptEviction,
    ) -> Result<()> {
        let Some(into) = seq.compact_into else {
            return Ok(());
        };
        let geometry = self.geometry;
        let most_kept = prompt
            .layer_budgets(self.config.num_layers)
            .into_iter()
            .max()
            .unwrap_or(0)
            .min(prompt.prompt_len());
        let sources = &seq.block_table[..geometry.blocks_for(prompt.prompt_len())];
        let fits = into.len() >= geometry.blocks_for(most_kept)
            && into
                .iter()
                .all(|b| (*b as usize) < geometry.num_blocks && !sources.contains(b));
        if fits {
            return Ok(());
        }
        Err(EngineError::InvalidBatch {
            message: format!(
                "sequence {i}: {} blocks to compact into must be in the pool, outside its block table and hold {most_kept} entries",
                into.len()
            ),
        })
    }

    /// What an evicting sequence owes: a never-compacted cache, its scoring window inside the
    /// chunk, and for LookaheadKV a loaded module with the policy's token count.
    fn validate_eviction(
        &self,
        i: usize,
        seq: &SequenceInput<'_>,
        policy: EvictionPolicy,
    ) -> Result<()> {
        policy.validate()?;
        let bad = |message: String| Err(EngineError::InvalidBatch { message });
        if seq.first_cache_entry != seq.first_position || seq.compacted.is_some() {
            return bad(format!(
                "sequence {i}: eviction needs a cache that was never compacted (entries = positions)"
            ));
        }
        let Some(prompt) = policy.for_prompt(seq.num_entries_after()) else {
            return Ok(());
        };
        self.validate_compact_into(i, seq, prompt)?;
        let Some(plan) = prompt.scoring_plan() else {
            return Ok(());
        };
        let window = plan.min_last_chunk_tokens();
        if window > seq.token_ids.len() {
            return bad(format!(
                "sequence {i}: the last prefill chunk holds {} tokens, fewer than the scoring window of {window}",
                seq.token_ids.len()
            ));
        }
        policy
            .check_lookahead_module(self.lookahead_tokens)
            .map_err(|mismatch| EngineError::InvalidParameter {
                field: match mismatch {
                    LookaheadMismatch::NotLoaded => "eviction.policy",
                    LookaheadMismatch::TokenCount { .. } => "eviction.num_tokens",
                },
                message: mismatch.to_string(),
            })
    }
}
