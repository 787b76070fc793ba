//! Identifier newtypes shared by every module of the crate.
//!
//! Owns: `BlockId` (an index into the KV block pool) and `SeqId` (the caller's name for a
//! request). Must not know: what a block stores or where a request came from.

use std::fmt;

/// Index of one KV-cache block in the pool, `0..num_blocks`.
///
/// A `u32` keeps block tables compact (the engine copies them to the device every step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockId(pub u32);

impl BlockId {
    /// The block's position in the pool, for indexing per-block arrays.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block#{}", self.0)
    }
}

/// The caller's identifier of a request; unique among the requests the scheduler still knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqId(pub u64);

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq#{}", self.0)
    }
}
