//! The per-step index arrays the CUDA kernels read, built on the host from a [`ForwardBatch`]'s
//! sequences and uploaded once per step: padded block tables, the slot mapping of the cache
//! write, and the `cu_seqlens` offsets of varlen prefill.
//!
//! Every array is `i32`, as the kernels index with `int`; a block id or entry that does not fit
//! is an [`EngineError::InvalidBatch`], never a wrapped index. The buffers are owned by the
//! caller and refilled each step (`clear()` and reuse, no allocation once warm). Nothing here
//! knows device memory: the backend uploads the slices.
//!
//! [`ForwardBatch`]: crate::batch::ForwardBatch

use crate::error::{EngineError, Result};

/// What fills a block table's row past the sequence's own blocks. No kernel reads it (entries
/// past a sequence's context are never attended to), and a negative block index makes a stray
/// read land outside the pool, where the host shim's AddressSanitizer reports it, instead of
/// silently reading block 0.
pub const BLOCK_TABLE_PAD: i32 = -1;

/// The slot mapping's value for a row with no cache entry (a lookahead row): the cache-write
/// kernel skips it.
pub const NO_SLOT: i32 = -1;

/// Block tables of a batch as one row-major `[num_seqs, max_blocks_per_seq]` array, each row
/// padded with [`BLOCK_TABLE_PAD`]; the decode and prefill attention kernels index row `s` at
/// `s * max_blocks_per_seq`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackedBlockTables {
    pub table: Vec<i32>,
    pub num_seqs: usize,
    /// The longest table's length (the row stride); 0 when every table is empty.
    pub max_blocks_per_seq: usize,
}

impl PackedBlockTables {
    /// Refills `self` with `tables`, one row per sequence in order.
    ///
    /// Fails with [`EngineError::InvalidBatch`] when a block id does not fit an `i32`; `self`
    /// is then left empty.
    pub fn pack<'a>(&mut self, tables: impl Iterator<Item = &'a [u32]> + Clone) -> Result<()> {
        self.table.clear();
        self.num_seqs = tables.clone().count();
        self.max_blocks_per_seq = tables.clone().map(<[u32]>::len).max().unwrap_or(0);
        for blocks in tables {
            for &block in blocks {
                match i32::try_from(block) {
                    Ok(block) => self.table.push(block),
                    Err(_) => {
                        self.table.clear();
                        self.num_seqs = 0;
                        self.max_blocks_per_seq = 0;
                        return Err(index_overflow("block id", block as usize));
                    }
                }
            }
            let padding = self.max_blocks_per_seq - blocks.len();
            self.table
                .extend(std::iter::repeat_n(BLOCK_TABLE_PAD, padding));
        }
        debug_assert_eq!(self.table.len(), self.num_seqs * self.max_blocks_per_seq);
        Ok(())
    }

    /// Row `seq` of the packed array, padding included.
    pub fn row(&self, seq: usize) -> &[i32] {
        let width = self.max_blocks_per_seq;
        &self.table[seq * width..(seq + 1) * width]
    }
}

/// Appends to `slots` the pool entry (`block * block_size + slot`) of each of `num_tokens`
/// tokens written from cache entry `first_entry` on, through `block_table`; the cache-write
/// kernel stores row `r`'s K/V at `slots[r]`.
///
/// Fails with [`EngineError::InvalidBatch`] when the table does not cover the last entry or a
/// pool entry does not fit an `i32`; `slots` then holds what it held before.
pub fn push_slot_mapping(
    slots: &mut Vec<i32>,
    block_table: &[u32],
    block_size: usize,
    first_entry: usize,
    num_tokens: usize,
) -> Result<()> {
    assert!(
        block_size > 0,
        "a KV geometry has a block size of at least 1"
    );
    let end = first_entry + num_tokens;
    let needed_blocks = end.div_ceil(block_size);
    if block_table.len() < needed_blocks {
        return Err(EngineError::InvalidBatch {
            message: format!(
                "block table of {} blocks does not cover entries {first_entry}..{end} \
                 ({needed_blocks} blocks of {block_size})",
                block_table.len()
            ),
        });
    }
    let start = slots.len();
    for entry in first_entry..end {
        let pool_entry = block_table[entry / block_size] as usize * block_size + entry % block_size;
        match i32::try_from(pool_entry) {
            Ok(slot) => slots.push(slot),
            Err(_) => {
                slots.truncate(start);
                return Err(index_overflow("pool entry", pool_entry));
            }
        }
    }
    Ok(())
}

/// Refills `offsets` with the varlen prefill offsets of sequences of `lengths` rows:
/// `[0, l0, l0 + l1, …]`, one more than there are sequences; sequence `s` owns rows
/// `offsets[s]..offsets[s + 1]` of the flat activation.
///
/// Fails with [`EngineError::InvalidBatch`] when the total does not fit an `i32`; `offsets` is
/// then empty.
pub fn fill_cu_seqlens(offsets: &mut Vec<i32>, lengths: impl Iterator<Item = usize>) -> Result<()> {
    offsets.clear();
    offsets.push(0);
    let mut total = 0usize;
    for length in lengths {
        total += length;
        match i32::try_from(total) {
            Ok(offset) => offsets.push(offset),
            Err(_) => {
                offsets.clear();
                return Err(index_overflow("cu_seqlens total rows", total));
            }
        }
    }
    Ok(())
}

/// The error for an index the kernels' `int` cannot hold.
pub(super) fn index_overflow(what: &str, value: usize) -> EngineError {
    EngineError::InvalidBatch {
        message: format!(
            "{what} {value} exceeds the CUDA kernels' i32 index limit {}",
            i32::MAX
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_tables_are_padded_to_the_longest_with_the_pad_value() {
        let tables: [&[u32]; 3] = [&[7, 2], &[], &[5, 0, 9]];
        let mut packed = PackedBlockTables::default();
        packed.pack(tables.iter().copied()).unwrap();
        assert_eq!(packed.num_seqs, 3);
        assert_eq!(packed.max_blocks_per_seq, 3);
        assert_eq!(packed.table, [7, 2, -1, -1, -1, -1, 5, 0, 9]);
        assert_eq!(packed.row(2), [5, 0, 9]);
    }

    #[test]
    fn packing_no_sequences_or_only_empty_tables_gives_an_empty_array() {
        let mut packed = PackedBlockTables::default();
        packed.pack(std::iter::empty()).unwrap();
        assert_eq!((packed.num_seqs, packed.max_blocks_per_seq), (0, 0));
        let empty: [&[u32]; 2] = [&[], &[]];
        packed.pack(empty.iter().copied()).unwrap();
        assert_eq!((packed.num_seqs, packed.max_blocks_per_seq), (2, 0));
        assert!(packed.table.is_empty());
    }

    #[test]
    fn repacking_reuses_the_buffer_and_forgets_the_previous_step() {
        let mut packed = PackedBlockTables::default();
        let first: [&[u32]; 2] = [&[1, 2, 3, 4], &[5]];
        packed.pack(first.iter().copied()).unwrap();
        let second: [&[u32]; 1] = [&[6]];
        packed.pack(second.iter().copied()).unwrap();
        assert_eq!(packed.table, [6]);
    }

    #[test]
    fn a_block_id_past_i32_is_refused_and_leaves_nothing_half_packed() {
        let tables: [&[u32]; 2] = [&[1], &[u32::MAX]];
        let mut packed = PackedBlockTables::default();
        let error = packed.pack(tables.iter().copied()).unwrap_err();
        assert!(error.to_string().contains("block id 4294967295"), "{error}");
        assert_eq!((packed.table.len(), packed.num_seqs), (0, 0));
    }

    #[test]
    fn slot_mapping_follows_the_block_table_across_a_partial_block() {
        let mut slots = vec![NO_SLOT];
        // Entries 2..7 with blocks of 4: slots 2, 3 of block 9, then 0..3 of block 4.
        push_slot_mapping(&mut slots, &[9, 4], 4, 2, 5).unwrap();
        assert_eq!(slots, [-1, 38, 39, 16, 17, 18]);
    }

    #[test]
    fn slot_mapping_with_block_size_one_is_the_block_table() {
        let mut slots = Vec::new();
        push_slot_mapping(&mut slots, &[3, 8, 1], 1, 0, 3).unwrap();
        assert_eq!(slots, [3, 8, 1]);
    }

    #[test]
    fn slot_mapping_of_no_tokens_adds_nothing() {
        let mut slots = Vec::new();
        push_slot_mapping(&mut slots, &[], 16, 0, 0).unwrap();
        assert!(slots.is_empty());
    }

    #[test]
    fn slot_mapping_refuses_a_table_that_does_not_cover_the_tokens() {
        let mut slots = vec![5];
        let error = push_slot_mapping(&mut slots, &[0, 1], 16, 30, 3).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("2 blocks does not cover entries 30..33"),
            "{error}"
        );
        assert_eq!(slots, [5]);
    }

    #[test]
    fn slot_mapping_refuses_a_pool_entry_past_i32() {
        let mut slots = vec![5];
        let block = (i32::MAX as u32) / 16 + 1;
        let error = push_slot_mapping(&mut slots, &[0, block], 16, 15, 2).unwrap_err();
        assert!(error.to_string().contains("pool entry"), "{error}");
        assert_eq!(slots, [5]);
    }

    #[test]
    fn cu_seqlens_are_prefix_sums_starting_at_zero() {
        let mut offsets = vec![42];
        fill_cu_seqlens(&mut offsets, [3, 1, 0, 5].into_iter()).unwrap();
        assert_eq!(offsets, [0, 3, 4, 4, 9]);
        fill_cu_seqlens(&mut offsets, std::iter::empty()).unwrap();
        assert_eq!(offsets, [0]);
    }

    #[test]
    fn cu_seqlens_refuse_a_total_past_i32() {
        let mut offsets = Vec::new();
        let lengths = [i32::MAX as usize, 1];
        let error = fill_cu_seqlens(&mut offsets, lengths.into_iter()).unwrap_err();
        assert!(error.to_string().contains("cu_seqlens"), "{error}");
        assert!(offsets.is_empty());
    }
}
