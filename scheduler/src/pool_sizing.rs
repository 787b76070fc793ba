//! KV pool sizing: how many blocks a memory budget buys. Pure arithmetic.
//!
//! Owns: the division and its report. Must not know: the model's shapes or the device; the
//! caller computes `bytes_per_block` (2 × layers × KV heads × head dim × element bytes ×
//! block size for a K and a V cache).

use crate::error::{Result, SchedulerError};

/// A pool sized for a memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPoolSize {
    pub num_blocks: usize,
    /// Cache entries the pool holds: `num_blocks × block_size`.
    pub max_cached_tokens: usize,
    /// Bytes the blocks take; the rest of the budget stays unused.
    pub used_bytes: u64,
}

/// The most whole blocks of `bytes_per_block` that fit `kv_bytes_budget`.
///
/// Fails with [`SchedulerError::ConfigTooSmall`] for a zero `bytes_per_block` or `block_size`,
/// or when the budget buys no block at all, and with [`SchedulerError::ConfigTooLarge`] when it
/// buys more blocks than a [`crate::BlockId`] can name (the error gives the largest budget that
/// fits, rather than a pool silently smaller than asked for).
pub fn num_blocks_for_budget(
    kv_bytes_budget: u64,
    bytes_per_block: u64,
    block_size: usize,
) -> Result<KvPoolSize> {
    if bytes_per_block == 0 {
        return Err(SchedulerError::ConfigTooSmall {
            field: "bytes_per_block",
            min: 1,
            value: 0,
        });
    }
    if block_size == 0 {
        return Err(SchedulerError::ConfigTooSmall {
            field: "block_size",
            min: 1,
            value: 0,
        });
    }
    if kv_bytes_budget < bytes_per_block {
        return Err(SchedulerError::ConfigTooSmall {
            field: "kv_bytes_budget",
            min: bytes_per_block,
            value: kv_bytes_budget,
        });
    }
    let max_blocks = u64::from(u32::MAX);
    let num_blocks = kv_bytes_budget / bytes_per_block;
    if num_blocks > max_blocks {
        return Err(SchedulerError::ConfigTooLarge {
            field: "kv_bytes_budget",
            max: (max_blocks + 1).saturating_mul(bytes_per_block) - 1,
            value: kv_bytes_budget,
        });
    }
    let num_blocks = num_blocks as usize;
    Ok(KvPoolSize {
        num_blocks,
        max_cached_tokens: num_blocks.saturating_mul(block_size),
        used_bytes: num_blocks as u64 * bytes_per_block,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_buys_whole_blocks_and_reports_tokens() {
        let size = num_blocks_for_budget(1000, 96, 16).expect("budget buys blocks");
        assert_eq!(
            size,
            KvPoolSize {
                num_blocks: 10,
                max_cached_tokens: 160,
                used_bytes: 960
            }
        );
    }

    #[test]
    fn budget_smaller_than_one_block_is_refused_naming_the_limit() {
        assert_eq!(
            num_blocks_for_budget(95, 96, 16),
            Err(SchedulerError::ConfigTooSmall {
                field: "kv_bytes_budget",
                min: 96,
                value: 95
            })
        );
    }

    #[test]
    fn budget_beyond_the_block_ids_is_refused_naming_the_largest_that_fits() {
        let largest = (1u64 << 32) * 20480 - 1;
        assert_eq!(
            num_blocks_for_budget(1 << 62, 20480, 16),
            Err(SchedulerError::ConfigTooLarge {
                field: "kv_bytes_budget",
                max: largest,
                value: 1 << 62
            })
        );
        let size = num_blocks_for_budget(largest, 20480, 16).expect("the largest budget fits");
        assert_eq!(size.num_blocks, u32::MAX as usize);
    }

    #[test]
    fn zero_sized_blocks_are_refused() {
        assert!(num_blocks_for_budget(1000, 0, 16).is_err());
        assert!(num_blocks_for_budget(1000, 96, 0).is_err());
    }
}
