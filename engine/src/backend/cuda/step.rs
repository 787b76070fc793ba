//! The host side of one forward pass on the device: every per-row and per-sequence index array
//! the kernels read, built from the batch and its row plan, packed into one `i32` array so a step
//! uploads its indices in one copy ([`StepIndex::offsets`] says where each array starts).

use super::step_inputs::{
    NO_SLOT, PackedBlockTables, fill_cu_seqlens, index_overflow, push_slot_mapping,
};
use crate::backend::eviction_pass::SequenceRows;
use crate::batch::ForwardBatch;
use crate::error::Result;

/// Where each array starts in [`StepIndex::packed`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IndexOffsets {
    /// `[rows]` token id per row (0 for a lookahead row, whose input is the module's row).
    pub ids: usize,
    /// `[rows]` position per row.
    pub positions: usize,
    /// `[rows]` pool entry per row, [`NO_SLOT`] for a lookahead row.
    pub slots: usize,
    /// `[num_seqs, max_blocks_per_seq]`.
    pub block_tables: usize,
    /// `[num_seqs + 1]`.
    pub cu_seqlens: usize,
    /// `[num_seqs]` cache entries after the pass.
    pub context_lens: usize,
    /// `[num_seqs]` lookahead rows.
    pub num_lookahead: usize,
    /// `[num_layers, num_seqs]` each: the skipped range of a compacted prefix per layer.
    pub skip_starts: usize,
    pub skip_ends: usize,
}

/// One step's index arrays, refilled each step.
#[derive(Debug, Default)]
pub struct StepIndex {
    pub packed: Vec<i32>,
    pub offsets: IndexOffsets,
    pub tables: PackedBlockTables,
    pub num_rows: usize,
    /// The most rows of any sequence.
    pub max_rows: usize,
    slots: Vec<i32>,
    cu_seqlens: Vec<i32>,
}

impl StepIndex {
    /// Fills the arrays for `batch` laid out as `sequences`, with blocks of `block_size` entries
    /// and `num_layers` layers.
    ///
    /// Fails with [`crate::EngineError::InvalidBatch`] when an index does not fit the kernels'
    /// `i32`.
    pub fn fill(
        &mut self,
        batch: &ForwardBatch<'_>,
        sequences: &[SequenceRows],
        block_size: usize,
        num_layers: usize,
    ) -> Result<()> {
        let int =
            |what, value: usize| i32::try_from(value).map_err(|_| index_overflow(what, value));
        self.tables
            .pack(batch.sequences.iter().map(|seq| seq.block_table))?;
        fill_cu_seqlens(
            &mut self.cu_seqlens,
            sequences.iter().map(|rows| rows.rows().len()),
        )?;
        self.slots.clear();
        for (seq, rows) in batch.sequences.iter().zip(sequences) {
            push_slot_mapping(
                &mut self.slots,
                seq.block_table,
                block_size,
                seq.first_cache_entry,
                seq.token_ids.len(),
            )?;
            self.slots
                .extend(std::iter::repeat_n(NO_SLOT, rows.num_lookahead));
        }
        self.num_rows = self.slots.len();
        self.max_rows = sequences
            .iter()
            .map(|rows| rows.rows().len())
            .max()
            .unwrap_or(0);
        let p = &mut self.packed;
        p.clear();
        let mut o = IndexOffsets {
            ids: p.len(),
            ..IndexOffsets::default()
        };
        for (seq, rows) in batch.sequences.iter().zip(sequences) {
            p.extend(seq.token_ids.iter().map(|&t| t as i32));
            p.extend(std::iter::repeat_n(0, rows.num_lookahead));
        }
        o.positions = p.len();
        for (seq, rows) in batch.sequences.iter().zip(sequences) {
            for i in 0..seq.token_ids.len() {
                p.push(int("position", seq.first_position + i)?);
            }
            let prompt_len = rows.prompt_len();
            for i in 0..rows.num_lookahead {
                p.push(int("position", prompt_len + i)?);
            }
        }
        o.slots = p.len();
        p.extend_from_slice(&self.slots);
        o.block_tables = p.len();
        p.extend_from_slice(&self.tables.table);
        o.cu_seqlens = p.len();
        p.extend_from_slice(&self.cu_seqlens);
        o.context_lens = p.len();
        for seq in &batch.sequences {
            p.push(int("context length", seq.num_entries_after())?);
        }
        o.num_lookahead = p.len();
        p.extend(sequences.iter().map(|rows| rows.num_lookahead as i32));
        let skips = |layer: usize| {
            batch.sequences.iter().map(move |seq| {
                seq.compacted
                    .map_or((0, 0), |prefix| (prefix.layer_kept[layer], prefix.entries))
            })
        };
        o.skip_starts = p.len();
        for layer in 0..num_layers {
            for (start, _) in skips(layer) {
                p.push(int("compacted prefix", start)?);
            }
        }
        o.skip_ends = p.len();
        for layer in 0..num_layers {
            for (_, end) in skips(layer) {
                p.push(int("compacted prefix", end)?);
            }
        }
        self.offsets = o;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::eviction_pass::plan_sequences;
    use crate::batch::{CompactedPrefix, LogitsRequest, SequenceInput};
    use crate::eviction::{EvictionPolicy, Policy};

    fn sequence<'a>(tokens: &'a [u32], first: usize, table: &'a [u32]) -> SequenceInput<'a> {
        SequenceInput {
            token_ids: tokens,
            first_position: first,
            first_cache_entry: first,
            block_table: table,
            logits: LogitsRequest::Last,
            eviction: None,
            compacted: None,
            compact_into: None,
        }
    }

    #[test]
    fn a_prefill_and_a_decode_pack_rows_slots_tables_and_offsets() {
        let compacted = [2, 3];
        let mut decode = sequence(&[9], 5, &[4, 1]);
        decode.first_cache_entry = 3;
        decode.compacted = Some(CompactedPrefix {
            entries: 3,
            layer_kept: &compacted,
        });
        let batch = ForwardBatch {
            sequences: vec![sequence(&[7, 8, 6], 0, &[2]), decode],
        };
        let mut sequences = Vec::new();
        plan_sequences(&batch, 2, &mut sequences);
        let mut index = StepIndex::default();
        index.fill(&batch, &sequences, 4, 2).unwrap();
        let o = index.offsets;
        let p = &index.packed;
        assert_eq!((index.num_rows, index.max_rows), (4, 3));
        assert_eq!(p[o.ids..o.positions], [7, 8, 6, 9]);
        assert_eq!(p[o.positions..o.slots], [0, 1, 2, 5]);
        // Row 3 writes entry 3 of the decode sequence: block 4, slot 3.
        assert_eq!(p[o.slots..o.block_tables], [8, 9, 10, 19]);
        assert_eq!(p[o.block_tables..o.cu_seqlens], [2, -1, 4, 1]);
        assert_eq!(p[o.cu_seqlens..o.context_lens], [0, 3, 4]);
        assert_eq!(p[o.context_lens..o.num_lookahead], [3, 4]);
        assert_eq!(p[o.num_lookahead..o.skip_starts], [0, 0]);
        // Per layer, per sequence: layer 0 skips 2..3 of the decode sequence, layer 1 3..3.
        assert_eq!(p[o.skip_starts..o.skip_ends], [0, 2, 0, 3]);
        assert_eq!(p[o.skip_ends..], [0, 3, 0, 3]);
    }

    #[test]
    fn lookahead_rows_follow_their_prompt_with_no_slot_and_positions_after_it() {
        let policy = EvictionPolicy {
            policy: Policy::Lookahead {
                num_tokens: 2,
                window: 0,
            },
            budget: 2,
        };
        let mut seq = sequence(&[1, 2, 3, 4], 0, &[0, 3]);
        seq.eviction = Some(policy);
        let batch = ForwardBatch {
            sequences: vec![seq],
        };
        let mut sequences = Vec::new();
        assert_eq!(plan_sequences(&batch, 1, &mut sequences), 1);
        let mut index = StepIndex::default();
        index.fill(&batch, &sequences, 2, 1).unwrap();
        let (o, p) = (index.offsets, &index.packed);
        assert_eq!(index.num_rows, 6);
        assert_eq!(p[o.ids..o.positions], [1, 2, 3, 4, 0, 0]);
        assert_eq!(p[o.positions..o.slots], [0, 1, 2, 3, 4, 5]);
        assert_eq!(p[o.slots..o.block_tables], [0, 1, 6, 7, NO_SLOT, NO_SLOT]);
        assert_eq!(p[o.cu_seqlens..o.context_lens], [0, 6]);
        assert_eq!(p[o.num_lookahead..o.skip_starts], [2]);
    }
}
