//! One sequence's block table: the KV blocks holding its cache entries, in entry order.
//!
//! Owns: the list and the single path by which a sequence's blocks return to the pool
//! ([`BlockTable::release_from`], and [`BlockTable::release_leading`] for the prompt blocks an
//! eviction into fresh blocks leaves behind) — finish, abort, preemption and eviction all go
//! through them.
//! Must not know: why blocks are released or what they store.
//!
//! Cache entry `e` lives in block `blocks[e / block_size]` at offset `e % block_size`.

use crate::block_allocator::BlockAllocator;
use crate::ids::BlockId;

/// The blocks of one sequence, cache entry order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    blocks: Vec<BlockId>,
}

impl BlockTable {
    /// An empty table with room for `capacity_blocks`, so growth never reallocates.
    pub fn with_capacity(capacity_blocks: usize) -> Self {
        Self {
            blocks: Vec::with_capacity(capacity_blocks),
        }
    }

    /// The blocks, for building slot mappings.
    pub fn as_slice(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Appends `count` freshly allocated blocks.
    ///
    /// The caller owes the check `allocator.can_allocate(count)` first; running out midway is
    /// a bug (counting first keeps the choice of a victim in the scheduler).
    pub fn grow(&mut self, count: usize, allocator: &mut BlockAllocator) {
        for _ in 0..count {
            let block = allocator
                .allocate()
                .expect("pool ran out after can_allocate said yes: a bug");
            self.blocks.push(block);
        }
    }

    /// Appends a block found in the prefix cache (a hit); the caller has added its holder.
    pub fn push_cached(&mut self, block: BlockId) {
        self.blocks.push(block);
    }

    /// Keeps the first `keep_blocks` blocks and gives every later one back to the pool, last
    /// block first (so a prompt's cached tail is reclaimed before its head); returns how many
    /// were released.
    pub fn release_from(&mut self, keep_blocks: usize, allocator: &mut BlockAllocator) -> usize {
        let mut released = 0;
        while self.blocks.len() > keep_blocks {
            let block = self.blocks.pop().expect("loop guard says a block is left");
            release(block, allocator);
            released += 1;
        }
        released
    }

    /// Gives the first `count` blocks back to the pool, last of them first; the later blocks
    /// move to the front of the table.
    pub fn release_leading(&mut self, count: usize, allocator: &mut BlockAllocator) {
        for block in self.blocks.drain(..count).rev() {
            release(block, allocator);
        }
    }
}

/// Drops the table's hold on `block`: the one place a block table frees.
fn release(block: BlockId, allocator: &mut BlockAllocator) {
    allocator
        .free(block)
        .expect("a block table holds only blocks it owns; failing to free one is a bug");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_from_keeps_the_leading_blocks_and_frees_the_rest() {
        let mut pool = BlockAllocator::new(5);
        let mut table = BlockTable::with_capacity(5);
        table.grow(4, &mut pool);
        let leading = table.as_slice()[..1].to_vec();
        assert_eq!(table.release_from(1, &mut pool), 3);
        assert_eq!(table.as_slice(), leading.as_slice());
        assert_eq!(pool.num_free(), 4);
        assert_eq!(table.release_from(0, &mut pool), 1);
        assert!(table.is_empty());
        pool.check_invariants();
    }

    #[test]
    fn release_leading_frees_the_first_blocks_and_keeps_the_rest_in_order() {
        let mut pool = BlockAllocator::new(4);
        let mut table = BlockTable::default();
        table.grow(4, &mut pool);
        let rest = table.as_slice()[3..].to_vec();
        table.release_leading(3, &mut pool);
        assert_eq!(table.as_slice(), rest.as_slice());
        assert_eq!(pool.num_free(), 3);
        pool.check_invariants();
    }

    #[test]
    fn releasing_to_a_larger_size_frees_nothing() {
        let mut pool = BlockAllocator::new(2);
        let mut table = BlockTable::default();
        table.grow(1, &mut pool);
        assert_eq!(table.release_from(3, &mut pool), 0);
        assert_eq!(table.len(), 1);
    }
}
