//! Automatic prefix caching: which full blocks hold a known token prefix, and which of those no
//! one holds any more (reclaimable, least recently released first).
//!
//! Owns: the block hash (a chain over full blocks of token ids, so equal hashes mean equal
//! prefixes), the hash → block map and the LRU queue of cached blocks with no holder. Must not
//! know: reference counts (the [`crate::BlockAllocator`] owns them and calls in here when a
//! block's last holder leaves or a cached block is reclaimed) or which sequence holds a block.
//!
//! Lineage: vLLM V1's `block_pool.py` (hash → block map, blocks cached until reclaimed) and
//! `kv_cache_utils.py` (hash of parent hash + the block's tokens). Unlike vLLM, a released
//! block that holds no hash goes back to the plain free stack, and a cached block is reclaimed
//! only when that stack is empty, so caching never takes a block a cold request could have used.
//! The LRU queue is a doubly linked list threaded through two `Vec`s by block index (no node
//! allocation): push, pop and unlink are O(1).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

use crate::ids::BlockId;

/// Marks the end of the LRU list.
const END: u32 = u32::MAX;

/// The identity of a full block's contents together with everything before it: a hash of the
/// parent block's hash and the block's token ids.
///
/// 128 bits from two independently keyed SipHash-1-3 instances, keyed at random per
/// [`BlockHasher`]: a collision (which would serve one prompt another's KV) is as unlikely as
/// guessing a 128-bit key, and a client cannot craft one without the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(u128);

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Hashes prompts into chains of [`BlockHash`]es, one per full block.
///
/// No extra key enters the hash: a block's K/V depend only on the model and the tokens up to
/// its end. In particular the LookaheadKV module leaves prompt blocks alone (its LoRA applies
/// only to the lookahead rows, whose K/V stay out of the cache; docs/design.md §3), and eviction
/// never writes a block that holds a hash (docs/design.md §7).
#[derive(Debug, Clone)]
pub struct BlockHasher {
    block_size: usize,
    keys: [RandomState; 2],
}

impl BlockHasher {
    /// A hasher for blocks of `block_size` tokens, with fresh random keys.
    pub fn new(block_size: usize) -> Self {
        Self {
            block_size,
            keys: [RandomState::new(), RandomState::new()],
        }
    }

    /// The hash of each full block of `tokens`, chained from the first; a partial last block
    /// has none.
    pub fn hash_prompt(&self, tokens: &[u32]) -> Vec<BlockHash> {
        let mut parent = None;
        tokens
            .chunks_exact(self.block_size)
            .map(|block| {
                let hash = self.hash_block(parent, block);
                parent = Some(hash);
                hash
            })
            .collect()
    }

    fn hash_block(&self, parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        let half = |keys: &RandomState| {
            let mut hasher = keys.build_hasher();
            parent.hash(&mut hasher);
            tokens.hash(&mut hasher);
            u128::from(hasher.finish())
        };
        BlockHash(half(&self.keys[0]) << 64 | half(&self.keys[1]))
    }
}

/// The cached blocks of a pool of `num_blocks`.
#[derive(Debug, Clone)]
pub(crate) struct PrefixCache {
    /// The hash each block is published under, if any.
    hashes: Vec<Option<BlockHash>>,
    blocks: HashMap<BlockHash, BlockId>,
    /// LRU links of cached blocks no one holds; meaningless for other blocks.
    prev: Vec<u32>,
    next: Vec<u32>,
    /// Least recently released (reclaimed first) and most recently released.
    head: u32,
    tail: u32,
    num_idle: usize,
}

impl PrefixCache {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            hashes: vec![None; num_blocks],
            blocks: HashMap::new(),
            prev: vec![END; num_blocks],
            next: vec![END; num_blocks],
            head: END,
            tail: END,
            num_idle: 0,
        }
    }

    /// Blocks published under a hash, held or not.
    pub fn num_cached(&self) -> usize {
        self.blocks.len()
    }

    /// Cached blocks no one holds (reclaimable).
    pub fn num_idle(&self) -> usize {
        self.num_idle
    }

    pub fn lookup(&self, hash: BlockHash) -> Option<BlockId> {
        self.blocks.get(&hash).copied()
    }

    pub fn hash_of(&self, block: BlockId) -> Option<BlockHash> {
        self.hashes[block.index()]
    }

    /// Publishes a held block under `hash`; `false` (and nothing changes) when another block
    /// already holds that prefix or this block holds one already.
    pub fn publish(&mut self, block: BlockId, hash: BlockHash) -> bool {
        if self.hashes[block.index()].is_some() || self.blocks.contains_key(&hash) {
            return false;
        }
        self.blocks.insert(hash, block);
        self.hashes[block.index()] = Some(hash);
        true
    }

    /// Queues a cached block whose last holder just left, as the most recently released.
    pub fn push_idle(&mut self, block: BlockId) {
        debug_assert!(
            self.hashes[block.index()].is_some(),
            "only cached blocks idle"
        );
        let index = block.0;
        self.prev[block.index()] = self.tail;
        self.next[block.index()] = END;
        match self.tail {
            END => self.head = index,
            tail => self.next[tail as usize] = index,
        }
        self.tail = index;
        self.num_idle += 1;
    }

    /// Takes a cached block off the idle queue because a holder reuses it.
    pub fn unlink_idle(&mut self, block: BlockId) {
        let (prev, next) = (self.prev[block.index()], self.next[block.index()]);
        match prev {
            END => self.head = next,
            prev => self.next[prev as usize] = next,
        }
        match next {
            END => self.tail = prev,
            next => self.prev[next as usize] = prev,
        }
        self.num_idle -= 1;
    }

    /// Reclaims the least recently released idle block: its hash is forgotten and the block is
    /// the caller's to reuse. `None` when no cached block is idle.
    pub fn reclaim(&mut self) -> Option<BlockId> {
        if self.head == END {
            return None;
        }
        let block = BlockId(self.head);
        self.unlink_idle(block);
        let hash = self.hashes[block.index()]
            .take()
            .expect("an idle block holds a hash; a bug otherwise");
        self.blocks.remove(&hash);
        Some(block)
    }

    /// The idle queue, least recently released first (invariant checks).
    pub fn idle_blocks(&self) -> Vec<BlockId> {
        let mut blocks = Vec::with_capacity(self.num_idle);
        let mut cursor = self.head;
        while cursor != END {
            assert!(
                blocks.len() < self.hashes.len(),
                "the idle queue of cached blocks has a cycle"
            );
            blocks.push(BlockId(cursor));
            cursor = self.next[cursor as usize];
        }
        blocks
    }

    /// Checks that the map and the per-block hashes agree both ways.
    pub fn check_map(&self) {
        for (&hash, &block) in &self.blocks {
            assert_eq!(
                self.hashes[block.index()],
                Some(hash),
                "{block} is mapped from a hash it does not hold"
            );
        }
        let published = self.hashes.iter().filter(|h| h.is_some()).count();
        assert_eq!(
            published,
            self.blocks.len(),
            "a block holds a hash the map does not know"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_prefixes_hash_alike_and_a_changed_token_changes_every_later_hash() {
        let hasher = BlockHasher::new(2);
        let a = hasher.hash_prompt(&[1, 2, 3, 4, 5]);
        let b = hasher.hash_prompt(&[1, 2, 3, 4, 6, 7]);
        assert_eq!(a.len(), 2, "a partial block has no hash");
        assert_eq!(a, b[..2]);
        let c = hasher.hash_prompt(&[9, 2, 3, 4]);
        assert!(c.iter().zip(&a).all(|(x, y)| x != y));
    }

    #[test]
    fn the_same_tokens_under_another_parent_hash_differently() {
        let hasher = BlockHasher::new(2);
        let ab = hasher.hash_prompt(&[1, 2, 3, 4]);
        let b = hasher.hash_prompt(&[3, 4]);
        assert_ne!(ab[1], b[0]);
    }

    #[test]
    fn idle_blocks_are_reclaimed_least_recently_released_first() {
        let hasher = BlockHasher::new(1);
        let hashes = hasher.hash_prompt(&[1, 2, 3]);
        let mut cache = PrefixCache::new(3);
        for (i, &hash) in hashes.iter().enumerate() {
            assert!(cache.publish(BlockId(i as u32), hash));
        }
        for i in [2, 0, 1] {
            cache.push_idle(BlockId(i));
        }
        cache.unlink_idle(BlockId(0));
        assert_eq!(cache.idle_blocks(), [BlockId(2), BlockId(1)]);
        assert_eq!(cache.reclaim(), Some(BlockId(2)));
        assert_eq!(cache.lookup(hashes[2]), None);
        assert_eq!(cache.lookup(hashes[0]), Some(BlockId(0)));
        cache.check_map();
    }

    #[test]
    fn a_prefix_is_published_once() {
        let hash = BlockHasher::new(1).hash_prompt(&[7])[0];
        let mut cache = PrefixCache::new(2);
        assert!(cache.publish(BlockId(0), hash));
        assert!(!cache.publish(BlockId(1), hash));
        assert_eq!(cache.lookup(hash), Some(BlockId(0)));
        assert_eq!(cache.hash_of(BlockId(1)), None);
    }
}
