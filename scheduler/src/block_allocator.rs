//! Reference-counted KV block pool with automatic prefix caching.
//!
//! Owns: which blocks are free and how many holders each used block has, and (through
//! [`PrefixCache`]) which blocks are published under a prefix hash. Must not know: which
//! sequence holds a block or what the block stores; choosing whom to preempt belongs to the
//! scheduler (the allocator answers *can* and *did*, never *who*).
//!
//! A block with no holder is *free*: either on the plain free stack, or *cached* — it holds a
//! hash and waits on the prefix cache's LRU queue, reusable by a request with that prefix until
//! the pool needs it. Allocation takes the free stack first and reclaims the least recently
//! released cached block only when the stack is empty (docs/design.md §7).
//!
//! Costs: `allocate`, `free` and `reuse_cached` are O(1). The free stack is threaded through
//! `next_free` by index, so no node is ever allocated (the layout of mistral.rs's block pool;
//! reference counts and cached-but-free blocks as in vLLM V1's `block_pool.py`).

use crate::error::{Result, SchedulerError};
use crate::ids::BlockId;
use crate::prefix_cache::{BlockHash, PrefixCache};

/// Marks the end of the free list in `next_free`.
const END: u32 = u32::MAX;

/// A fixed pool of `num_blocks` blocks with per-block reference counts.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    /// Holders per block; 0 means the block is free (on the free stack or cached and idle).
    ref_counts: Vec<u32>,
    /// For a block on the free stack, the next one (or `END`); meaningless for other blocks.
    next_free: Vec<u32>,
    /// Top of the free stack, or `END` when it is empty.
    free_head: u32,
    /// Blocks on the free stack (cached idle blocks not included).
    num_on_stack: usize,
    cache: PrefixCache,
}

impl BlockAllocator {
    /// A pool with every block free. `num_blocks` must fit a `u32` (checked by
    /// [`crate::SchedulerConfig::validate`]).
    pub fn new(num_blocks: usize) -> Self {
        assert!(
            num_blocks <= END as usize,
            "pool of {num_blocks} blocks exceeds what a BlockId can name; config validation missed it, a bug"
        );
        // Block 0 on top, so a fresh pool hands out 0, 1, 2, ...
        let next_free = (1..=num_blocks as u32)
            .map(|next| {
                if next as usize == num_blocks {
                    END
                } else {
                    next
                }
            })
            .collect();
        Self {
            ref_counts: vec![0; num_blocks],
            next_free,
            free_head: if num_blocks == 0 { END } else { 0 },
            num_on_stack: num_blocks,
            cache: PrefixCache::new(num_blocks),
        }
    }

    /// Blocks in the pool.
    pub fn num_total(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks no one holds: the free stack plus cached blocks waiting to be reused or reclaimed.
    pub fn num_free(&self) -> usize {
        self.num_on_stack + self.cache.num_idle()
    }

    /// Blocks published under a prefix hash, held or idle (the cached-blocks gauge).
    pub fn num_cached(&self) -> usize {
        self.cache.num_cached()
    }

    /// Cached blocks no one holds.
    pub fn num_cached_idle(&self) -> usize {
        self.cache.num_idle()
    }

    /// Blocks held by at least one holder.
    pub fn num_used(&self) -> usize {
        self.num_total() - self.num_free()
    }

    /// Whether `count` blocks can be allocated right now.
    pub fn can_allocate(&self, count: usize) -> bool {
        count <= self.num_free()
    }

    /// Holders of `block`, or `None` for a block outside the pool.
    pub fn ref_count(&self, block: BlockId) -> Option<u32> {
        self.ref_counts.get(block.index()).copied()
    }

    /// Takes a free block with one holder, or `None` when the pool is exhausted (the caller
    /// then decides whom to preempt). The free stack goes first; when it is empty the least
    /// recently released cached block is reclaimed and its hash forgotten.
    pub fn allocate(&mut self) -> Option<BlockId> {
        if self.free_head == END {
            let block = self.cache.reclaim()?;
            self.ref_counts[block.index()] = 1;
            return Some(block);
        }
        let block = self.free_head;
        let index = block as usize;
        debug_assert_eq!(
            self.ref_counts[index], 0,
            "a block on the free list is in use: a bug"
        );
        self.free_head = self.next_free[index];
        self.ref_counts[index] = 1;
        self.num_on_stack -= 1;
        Some(BlockId(block))
    }

    /// The block published under `hash`, held or idle.
    pub fn cached_block(&self, hash: BlockHash) -> Option<BlockId> {
        self.cache.lookup(hash)
    }

    /// Adds a holder to a cached block (a prefix-cache hit), taking it off the idle queue if
    /// no one held it.
    ///
    /// Panics if `block` holds no hash: the caller found it with [`Self::cached_block`].
    pub fn reuse_cached(&mut self, block: BlockId) {
        assert!(
            self.cache.hash_of(block).is_some(),
            "{block} reused from the prefix cache holds no hash; a bug"
        );
        let count = &mut self.ref_counts[block.index()];
        if *count == 0 {
            self.cache.unlink_idle(block);
        }
        *count = count
            .checked_add(1)
            .expect("more than u32::MAX holders of one block is a bug");
    }

    /// Publishes a held block, whose entries now hold the prefix `hash` names, for reuse.
    /// Returns `false` (changing nothing) when another block holds that prefix already or this
    /// block is published; the block then stays private and is freed as usual.
    ///
    /// Panics if no one holds `block`.
    pub fn publish(&mut self, block: BlockId, hash: BlockHash) -> bool {
        assert!(
            self.ref_counts[block.index()] > 0,
            "{block} published while free; a bug"
        );
        self.cache.publish(block, hash)
    }

    /// Whether `block` is published under a prefix hash.
    pub fn is_cached(&self, block: BlockId) -> bool {
        self.cache.hash_of(block).is_some()
    }

    /// Adds a holder to a used block (prefix sharing).
    ///
    /// Fails with [`SchedulerError::ForeignBlock`] or [`SchedulerError::IncrefFreeBlock`].
    pub fn incref(&mut self, block: BlockId) -> Result<()> {
        let count = self.ref_count_mut(block)?;
        if *count == 0 {
            return Err(SchedulerError::IncrefFreeBlock { block });
        }
        *count = count
            .checked_add(1)
            .expect("more than u32::MAX holders of one block is a bug");
        Ok(())
    }

    /// Drops one holder of `block`; returns `true` when that was the last one and the block is
    /// free again.
    ///
    /// Fails with [`SchedulerError::ForeignBlock`] or [`SchedulerError::DoubleFree`], leaving the
    /// pool unchanged.
    pub fn free(&mut self, block: BlockId) -> Result<bool> {
        let count = self.ref_count_mut(block)?;
        if *count == 0 {
            return Err(SchedulerError::DoubleFree { block });
        }
        *count -= 1;
        if *count > 0 {
            return Ok(false);
        }
        if self.cache.hash_of(block).is_some() {
            self.cache.push_idle(block);
        } else {
            self.next_free[block.index()] = self.free_head;
            self.free_head = block.0;
            self.num_on_stack += 1;
        }
        Ok(true)
    }

    fn ref_count_mut(&mut self, block: BlockId) -> Result<&mut u32> {
        let num_blocks = self.ref_counts.len();
        self.ref_counts
            .get_mut(block.index())
            .ok_or(SchedulerError::ForeignBlock { block, num_blocks })
    }

    /// Checks that the free stack and the cached idle queue together hold exactly the blocks
    /// with no holder, once each, that every idle block holds a hash and no stacked one does,
    /// that the counts agree and that the hash map and the blocks' hashes agree.
    /// O(num_blocks); meant for tests.
    ///
    /// Panics with a message naming the broken invariant.
    pub fn check_invariants(&self) {
        let mut on_list = vec![false; self.num_total()];
        let mut cursor = self.free_head;
        let mut listed = 0;
        while cursor != END {
            let index = cursor as usize;
            assert!(
                index < self.num_total(),
                "free list points outside the pool"
            );
            assert!(
                !on_list[index],
                "{} is on the free list twice",
                BlockId(cursor)
            );
            assert_eq!(
                self.ref_counts[index],
                0,
                "{} is on the free list but in use",
                BlockId(cursor)
            );
            assert!(
                !self.is_cached(BlockId(cursor)),
                "{} is on the free stack but holds a hash",
                BlockId(cursor)
            );
            on_list[index] = true;
            listed += 1;
            cursor = self.next_free[index];
        }
        assert_eq!(
            listed, self.num_on_stack,
            "num_on_stack disagrees with the free stack"
        );
        let idle = self.cache.idle_blocks();
        assert_eq!(
            idle.len(),
            self.cache.num_idle(),
            "the idle count disagrees with the idle queue"
        );
        for block in idle {
            assert!(
                !on_list[block.index()],
                "{block} is both on the free stack and cached idle"
            );
            assert_eq!(
                self.ref_counts[block.index()],
                0,
                "{block} is cached idle but referenced"
            );
            assert!(self.is_cached(block), "{block} is idle but holds no hash");
            on_list[block.index()] = true;
        }
        self.cache.check_map();
        for (index, &count) in self.ref_counts.iter().enumerate() {
            assert!(
                count > 0 || on_list[index],
                "{} has no holder but is not on the free list (leaked)",
                BlockId(index as u32)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    #[test]
    fn fresh_pool_counts_every_block_free() {
        let pool = BlockAllocator::new(4);
        assert_eq!(
            (pool.num_total(), pool.num_free(), pool.num_used()),
            (4, 4, 0)
        );
        pool.check_invariants();
    }

    #[test]
    fn exhausted_pool_allocates_nothing() {
        let mut pool = BlockAllocator::new(2);
        assert!(pool.allocate().is_some());
        assert!(pool.allocate().is_some());
        assert_eq!(pool.allocate(), None);
        assert!(!pool.can_allocate(1));
        pool.check_invariants();
    }

    #[test]
    fn double_free_is_a_typed_error_and_changes_nothing() {
        let mut pool = BlockAllocator::new(2);
        let block = pool.allocate().expect("pool has blocks");
        assert_eq!(pool.free(block), Ok(true));
        assert_eq!(pool.free(block), Err(SchedulerError::DoubleFree { block }));
        assert_eq!(pool.num_free(), 2);
        pool.check_invariants();
    }

    #[test]
    fn freeing_a_foreign_block_is_a_typed_error() {
        let mut pool = BlockAllocator::new(2);
        let block = BlockId(7);
        assert_eq!(
            pool.free(block),
            Err(SchedulerError::ForeignBlock {
                block,
                num_blocks: 2
            })
        );
        assert_eq!(
            pool.incref(block),
            Err(SchedulerError::ForeignBlock {
                block,
                num_blocks: 2
            })
        );
    }

    #[test]
    fn a_shared_block_is_free_only_after_its_last_holder_frees_it() {
        let mut pool = BlockAllocator::new(1);
        let block = pool.allocate().expect("pool has a block");
        pool.incref(block).expect("block is in use");
        assert_eq!(pool.ref_count(block), Some(2));
        assert_eq!(pool.free(block), Ok(false));
        assert_eq!(pool.num_free(), 0);
        assert_eq!(pool.free(block), Ok(true));
        assert_eq!(pool.num_free(), 1);
        pool.check_invariants();
    }

    #[test]
    fn incref_of_a_free_block_is_refused() {
        let mut pool = BlockAllocator::new(1);
        let block = BlockId(0);
        assert_eq!(
            pool.incref(block),
            Err(SchedulerError::IncrefFreeBlock { block })
        );
    }

    #[test]
    fn a_released_cached_block_waits_until_the_free_stack_is_empty() {
        let hash = crate::BlockHasher::new(1).hash_prompt(&[7])[0];
        let mut pool = BlockAllocator::new(2);
        let cached = pool.allocate().expect("pool has blocks");
        assert!(pool.publish(cached, hash));
        assert_eq!(pool.free(cached), Ok(true));
        assert_eq!((pool.num_free(), pool.num_cached_idle()), (2, 1));
        pool.check_invariants();
        let plain = pool.allocate().expect("the free stack has a block");
        assert_ne!(plain, cached);
        assert_eq!(pool.cached_block(hash), Some(cached), "still cached");
        assert_eq!(
            pool.allocate(),
            Some(cached),
            "reclaimed once nothing else is free"
        );
        assert_eq!(pool.cached_block(hash), None, "its hash is forgotten");
        pool.check_invariants();
    }

    #[test]
    fn reusing_an_idle_cached_block_takes_it_off_the_idle_queue() {
        let hash = crate::BlockHasher::new(1).hash_prompt(&[7])[0];
        let mut pool = BlockAllocator::new(1);
        let block = pool.allocate().expect("pool has a block");
        pool.publish(block, hash);
        pool.free(block).expect("held");
        pool.reuse_cached(block);
        assert_eq!((pool.ref_count(block), pool.num_free()), (Some(1), 0));
        pool.reuse_cached(block);
        assert_eq!(pool.ref_count(block), Some(2));
        assert_eq!(pool.allocate(), None);
        pool.check_invariants();
    }

    #[test]
    fn never_hands_out_a_block_twice_under_random_allocate_and_free() {
        let mut runner = TestRunner::new_with_rng(
            Config {
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
        );
        let ops = proptest::collection::vec((any::<bool>(), any::<usize>()), 1..400);
        runner
            .run(&(1usize..40, ops), |(num_blocks, ops)| {
                let mut pool = BlockAllocator::new(num_blocks);
                let mut held: Vec<BlockId> = Vec::new();
                for (allocate, pick) in ops {
                    if allocate || held.is_empty() {
                        match pool.allocate() {
                            Some(block) => {
                                prop_assert!(!held.contains(&block), "{block} handed out twice");
                                held.push(block);
                            }
                            None => prop_assert_eq!(held.len(), num_blocks),
                        }
                    } else {
                        let block = held.swap_remove(pick % held.len());
                        prop_assert_eq!(pool.free(block), Ok(true));
                    }
                    pool.check_invariants();
                    prop_assert_eq!(pool.num_used(), held.len());
                }
                for block in held.drain(..) {
                    prop_assert_eq!(pool.free(block), Ok(true));
                }
                prop_assert_eq!(pool.num_free(), num_blocks);
                Ok(())
            })
            .expect("allocator property holds");
    }
}
