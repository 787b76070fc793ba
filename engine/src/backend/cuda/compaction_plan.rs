//! The index plan of one layer's out-of-place compaction (`kernels/compact.cu`): after eviction
//! selected, per KV head, the prompt entries to keep, those entries move to the sequence's
//! leading entries. The kernels take the kept entries as one rectangular `[num_kv_heads, count]`
//! i32 array (grid `(count, num_kv_heads)`), and two block tables: the one the gather reads
//! through and the one the scatter writes through (the same table for an in-place compaction,
//! fresh blocks otherwise).
//!
//! Selection may keep fewer entries in one head than in another; the layer's `count` is the
//! most any head keeps (as [`SequenceEviction::layer_kept`] reports it) and a shorter head is
//! padded with entries that copy onto themselves: position `i` past the head's own kept entries
//! gathers entry `i` and scatters it back to entry `i`. In place that leaves the entry as it
//! was, exactly as the CPU backend's in-place move does; into fresh blocks it copies an entry the
//! layer never attends to. Either way the launch stays rectangular.
//!
//! [`SequenceEviction::layer_kept`]: crate::batch::SequenceEviction::layer_kept

use super::step_inputs::index_overflow;
use crate::error::{EngineError, Result};

/// One layer's compaction, as the gather and scatter kernels read it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompactionPlan {
    /// Entries each KV head ends with (the grid's x); 0 means nothing to launch.
    pub count: usize,
    /// `[num_kv_heads, count]`: the entry that moves to entry `i` of head `h` at `h * count + i`.
    pub kept: Vec<i32>,
    /// The block table the gather reads kept entries through.
    pub gather_table: Vec<i32>,
    /// The block table the scatter writes entries `0..count` through.
    pub scatter_table: Vec<i32>,
}

impl CompactionPlan {
    /// Plans moving `kept[h]` (ascending, distinct entries of KV head `h`) read through `from` to
    /// entries `0..kept[h].len()` written through `to` (`from` again for an in-place
    /// compaction), blocks of `block_size` entries.
    ///
    /// Fails with [`EngineError::InvalidBatch`] when a head's entries are not ascending and
    /// distinct, an entry is past what `from` covers, `to` cannot hold the layer's count, or an
    /// index does not fit an `i32`.
    pub fn new(kept: &[Vec<usize>], from: &[u32], to: &[u32], block_size: usize) -> Result<Self> {
        assert!(
            block_size > 0,
            "a KV geometry has a block size of at least 1"
        );
        let count = kept.iter().map(Vec::len).max().unwrap_or(0);
        let gather_entries = from.len() * block_size;
        let scatter_entries = to.len() * block_size;
        if count > scatter_entries {
            return Err(EngineError::InvalidBatch {
                message: format!(
                    "compaction keeps {count} entries but the destination table of {} blocks \
                     holds {scatter_entries}",
                    to.len()
                ),
            });
        }
        let mut plan = Self {
            count,
            kept: Vec::with_capacity(kept.len() * count),
            gather_table: to_i32(from)?,
            scatter_table: to_i32(to)?,
        };
        for (head, entries) in kept.iter().enumerate() {
            check_head(head, entries, gather_entries)?;
            let padding = entries.len()..count;
            for entry in entries.iter().copied().chain(padding) {
                plan.kept
                    .push(i32::try_from(entry).map_err(|_| index_overflow("kept entry", entry))?);
            }
        }
        Ok(plan)
    }

    /// Elements of each of the key and value scratch buffers the gather fills:
    /// `[num_kv_heads, count, head_dim]`.
    pub fn scratch_len(&self, head_dim: usize) -> usize {
        self.kept.len() * head_dim
    }
}

/// Checks that one head's kept entries are ascending, distinct and covered by the gather table.
fn check_head(head: usize, entries: &[usize], gather_entries: usize) -> Result<()> {
    if let Some(pair) = entries.windows(2).find(|pair| pair[0] >= pair[1]) {
        return Err(EngineError::InvalidBatch {
            message: format!(
                "KV head {head}: kept entries must be ascending and distinct, got {} then {}",
                pair[0], pair[1]
            ),
        });
    }
    match entries.last() {
        Some(&last) if last >= gather_entries => Err(EngineError::InvalidBatch {
            message: format!(
                "KV head {head}: kept entry {last} is past the {gather_entries} entries the \
                 source table covers"
            ),
        }),
        _ => Ok(()),
    }
}

/// A block table as the kernels' `int` array.
fn to_i32(table: &[u32]) -> Result<Vec<i32>> {
    table
        .iter()
        .map(|&block| i32::try_from(block).map_err(|_| index_overflow("block id", block as usize)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of `[block][kv_head][slot]` entries (head_dim 1), each tagged with its own
    /// position so moves are visible.
    struct Pool {
        cells: Vec<u32>,
        num_kv_heads: usize,
        block_size: usize,
    }

    impl Pool {
        fn new(num_blocks: usize, num_kv_heads: usize, block_size: usize) -> Self {
            let cells = (0..(num_blocks * num_kv_heads * block_size) as u32).collect();
            Self {
                cells,
                num_kv_heads,
                block_size,
            }
        }

        /// The kernels' `glimpse_entry_offset` (head_dim 1).
        fn offset(&self, table: &[i32], entry: usize, head: usize) -> usize {
            let block = table[entry / self.block_size] as usize;
            (block * self.num_kv_heads + head) * self.block_size + entry % self.block_size
        }

        /// `glimpse_compact_gather` then `glimpse_compact_scatter`, every (i, head) cell of the
        /// grid in turn.
        fn run_kernels(&mut self, plan: &CompactionPlan) {
            let mut scratch = vec![0; plan.kept.len()];
            for head in 0..self.num_kv_heads {
                for i in 0..plan.count {
                    let entry = plan.kept[head * plan.count + i] as usize;
                    scratch[head * plan.count + i] =
                        self.cells[self.offset(&plan.gather_table, entry, head)];
                }
            }
            for head in 0..self.num_kv_heads {
                for i in 0..plan.count {
                    let to = self.offset(&plan.scatter_table, i, head);
                    self.cells[to] = scratch[head * plan.count + i];
                }
            }
        }

        /// The CPU backend's in-place move: ascending, one entry at a time.
        fn move_in_place(&mut self, table: &[u32], kept: &[Vec<usize>]) {
            let table = to_i32(table).unwrap();
            for (head, entries) in kept.iter().enumerate() {
                for (i, &entry) in entries.iter().enumerate() {
                    let value = self.cells[self.offset(&table, entry, head)];
                    let to = self.offset(&table, i, head);
                    self.cells[to] = value;
                }
            }
        }
    }

    fn check_matches_in_place_move(
        kept: &[Vec<usize>],
        table: &[u32],
        num_blocks: usize,
        block_size: usize,
    ) {
        let plan = CompactionPlan::new(kept, table, table, block_size).unwrap();
        let mut kernels = Pool::new(num_blocks, kept.len(), block_size);
        let mut reference = Pool::new(num_blocks, kept.len(), block_size);
        kernels.run_kernels(&plan);
        reference.move_in_place(table, kept);
        assert_eq!(kernels.cells, reference.cells, "kept {kept:?}");
    }

    #[test]
    fn out_of_place_kernels_match_the_in_place_move_through_a_scrambled_table() {
        // Destinations 1, 2 and 3 of head 0 are also its sources (of positions 0, 1, 2): a
        // parallel in-place move races there.
        let kept = vec![vec![1, 2, 3, 6], vec![0, 4, 5, 7]];
        check_matches_in_place_move(&kept, &[3, 0, 2], 4, 3);
    }

    #[test]
    fn heads_keeping_different_counts_are_padded_with_entries_copied_onto_themselves() {
        let kept = vec![vec![2, 5, 6], vec![4], vec![]];
        let plan = CompactionPlan::new(&kept, &[1, 0], &[1, 0], 4).unwrap();
        assert_eq!(plan.count, 3);
        assert_eq!(plan.kept, [2, 5, 6, 4, 1, 2, 0, 1, 2]);
        assert_eq!(plan.scratch_len(8), 9 * 8);
        check_matches_in_place_move(&kept, &[1, 0], 2, 4);
    }

    #[test]
    fn block_size_one_moves_whole_blocks() {
        let kept = vec![vec![0, 3, 4], vec![1, 2, 4]];
        check_matches_in_place_move(&kept, &[4, 2, 0, 3, 1], 5, 1);
    }

    #[test]
    fn nothing_kept_plans_no_launch() {
        let plan = CompactionPlan::new(&[vec![], vec![]], &[0], &[0], 16).unwrap();
        assert_eq!(plan.count, 0);
        assert!(plan.kept.is_empty());
        let plan = CompactionPlan::new(&[], &[], &[], 16).unwrap();
        assert_eq!(plan.count, 0);
    }

    #[test]
    fn into_fresh_blocks_the_scatter_writes_through_the_destination_table() {
        let kept = vec![vec![1, 5]];
        let plan = CompactionPlan::new(&kept, &[0, 1], &[2], 4).unwrap();
        assert_eq!(
            (plan.gather_table.as_slice(), plan.scatter_table.as_slice()),
            (&[0, 1][..], &[2][..])
        );
        let mut pool = Pool::new(3, 1, 4);
        pool.run_kernels(&plan);
        assert_eq!(&pool.cells[8..10], [1, 5]);
        assert_eq!(&pool.cells[..8], (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn unordered_or_repeated_entries_are_refused() {
        for kept in [vec![vec![0, 3, 2]], vec![vec![1, 1]]] {
            let error = CompactionPlan::new(&kept, &[0], &[0], 4).unwrap_err();
            assert!(error.to_string().contains("KV head 0"), "{error}");
        }
    }

    #[test]
    fn an_entry_past_the_source_table_is_refused() {
        let error = CompactionPlan::new(&[vec![0], vec![2, 8]], &[0, 1], &[0, 1], 4).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("KV head 1: kept entry 8 is past the 8 entries"),
            "{error}"
        );
    }

    #[test]
    fn a_destination_too_small_for_the_count_is_refused() {
        let error = CompactionPlan::new(&[vec![0, 1, 2]], &[0], &[5], 2).unwrap_err();
        assert!(error.to_string().contains("keeps 3 entries"), "{error}");
    }
}
