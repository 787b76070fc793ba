//! Scheduler limits.
//!
//! Owns: the five numbers that bound a step and the pool, and whether prefix caching is on. Must not know: the model or the
//! device; the caller sizes `num_blocks` (see [`crate::pool_sizing`]).

use crate::error::{Result, SchedulerError};

/// Limits of the scheduler. Build with struct update syntax over [`Default`], then
/// [`SchedulerConfig::validate`] (the scheduler validates on construction too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Cache entries (tokens) per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    /// Token budget of one step: prefill chunks plus decode tokens.
    pub max_num_batched_tokens: usize,
    /// Cap on running sequences.
    pub max_num_seqs: usize,
    /// Context length of the model: prompt + generated tokens of one request.
    pub max_model_len: usize,
    /// Reuse the KV of full prompt blocks another request computed (docs/design.md §7); off,
    /// the scheduler plans exactly as it did before prefix caching existed.
    pub enable_prefix_caching: bool,
}

impl Default for SchedulerConfig {
    /// vLLM's base defaults (2048 tokens per step, 16-token blocks, prefix caching on) with 256
    /// sequences; the pool holds exactly one `max_model_len` request, so a real caller always
    /// sets `num_blocks`.
    fn default() -> Self {
        let block_size = 16;
        let max_model_len = 2048;
        Self {
            block_size,
            num_blocks: max_model_len / block_size,
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
            max_model_len,
            enable_prefix_caching: true,
        }
    }
}

impl SchedulerConfig {
    /// Checks every limit.
    ///
    /// Fails with [`SchedulerError::ConfigTooSmall`] for a zero limit and
    /// [`SchedulerError::ConfigTooLarge`] for more blocks than a [`crate::BlockId`] can name.
    pub fn validate(&self) -> Result<()> {
        let at_least_one = [
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("max_num_seqs", self.max_num_seqs),
            ("max_model_len", self.max_model_len),
        ];
        for (field, value) in at_least_one {
            if value == 0 {
                return Err(SchedulerError::ConfigTooSmall {
                    field,
                    min: 1,
                    value: 0,
                });
            }
        }
        let max_blocks = u64::from(u32::MAX);
        if self.num_blocks as u64 > max_blocks {
            return Err(SchedulerError::ConfigTooLarge {
                field: "num_blocks",
                max: max_blocks,
                value: self.num_blocks as u64,
            });
        }
        Ok(())
    }

    /// Blocks needed to hold `entries` cache entries.
    pub fn blocks_for(&self, entries: usize) -> usize {
        entries.div_ceil(self.block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        SchedulerConfig::default()
            .validate()
            .expect("default is valid");
    }

    #[test]
    fn zero_block_size_is_refused_naming_the_field() {
        let config = SchedulerConfig {
            block_size: 0,
            ..SchedulerConfig::default()
        };
        assert_eq!(
            config.validate(),
            Err(SchedulerError::ConfigTooSmall {
                field: "block_size",
                min: 1,
                value: 0
            })
        );
    }

    #[test]
    fn each_zero_limit_is_refused() {
        let zeroed: [fn(&mut SchedulerConfig); 4] = [
            |c| c.num_blocks = 0,
            |c| c.max_num_batched_tokens = 0,
            |c| c.max_num_seqs = 0,
            |c| c.max_model_len = 0,
        ];
        for zero in zeroed {
            let mut config = SchedulerConfig::default();
            zero(&mut config);
            assert!(matches!(
                config.validate(),
                Err(SchedulerError::ConfigTooSmall { value: 0, .. })
            ));
        }
    }

    #[test]
    fn more_blocks_than_a_block_id_can_name_are_refused() {
        let config = SchedulerConfig {
            num_blocks: u32::MAX as usize + 1,
            ..SchedulerConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(SchedulerError::ConfigTooLarge {
                field: "num_blocks",
                ..
            })
        ));
    }

    #[test]
    fn blocks_for_rounds_up_to_whole_blocks() {
        let config = SchedulerConfig {
            block_size: 4,
            ..SchedulerConfig::default()
        };
        assert_eq!(config.blocks_for(0), 0);
        assert_eq!(config.blocks_for(1), 1);
        assert_eq!(config.blocks_for(4), 1);
        assert_eq!(config.blocks_for(5), 2);
    }
}
