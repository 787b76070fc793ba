//! Eviction inside the CUDA forward pass, per layer right after its attention, as the CPU
//! backend's `evict` module does it on the host: score the evicting sequence's prompt keys in
//! the pool with its scoring queries (`eviction_scoring.cu`, three launches), select the kept
//! entries per KV head on the device (`top_k.cu`, the CPU's tie-break bit for bit), bring the
//! selection back to the host (the pass reports it in `out.evictions`, and the compaction plan is
//! checked there, [`CompactionPlan`]), then compact out of place (`compact.cu`). StreamingLLM
//! needs no scores: its selection is the host's, as on the CPU.
//!
//! Kernels run asynchronously: the times a pass reports for scoring, selection and compaction
//! are host times of the launches plus the one wait for the selection, not device times.

use std::time::Instant;

use super::compaction_plan::CompactionPlan;
use super::gpu::{DevPtr, Gpu};
use super::kernels::{Compaction, Kernels, KvLayer, QkvRows, ScoringLaunch, ScoringStats};
use super::scratch::Scratch;
use crate::backend::eviction_pass::{PendingEviction, SequenceRows};
use crate::batch::SequenceInput;
use crate::error::Result;
use crate::eviction::{LayerSelection, Pool, QueryReduction, ScoringQueries};

/// Device and host buffers of one layer's eviction, reused across layers and steps.
pub struct EvictionScratch {
    /// `row_max`, `row_inv_sum` (`[num_heads, n_q]` each), then `reduced` (`[num_heads,
    /// scored]`) and `scores` (`[num_kv_heads, scored]`).
    floats: Scratch<f32>,
    /// The top-k output, then the compaction plan's arrays.
    indices: Scratch<i32>,
    /// The compaction's key and value scratch.
    moved: Scratch<u16>,
    host_kept: Vec<i32>,
    host_plan: Vec<i32>,
}

impl Default for EvictionScratch {
    fn default() -> Self {
        Self {
            floats: Scratch::new("eviction scores"),
            indices: Scratch::new("eviction selections"),
            moved: Scratch::new("compaction scratch"),
            host_kept: Vec::new(),
            host_plan: Vec::new(),
        }
    }
}

/// Where one layer's eviction reads its inputs.
pub struct LayerInput {
    pub layer: usize,
    /// The fused, RoPE'd qkv rows of the pass.
    pub qkv: QkvRows,
    /// The layer of the pool.
    pub cache: KvLayer,
    /// The sequence's row of the packed block tables on the device.
    pub block_table: DevPtr<i32>,
}

/// `glimpse_top_k`'s arguments for one layer, as the CPU's `select_with_window` selects: the `k =
/// budget − window` best scored entries, then the `window` entries after the scored ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TopK {
    k: usize,
    window: usize,
    /// Entries each KV head keeps: `min(k, scored) + window`.
    per_head: usize,
}

impl TopK {
    fn new(budget: usize, prompt_len: usize, scored: usize) -> Self {
        let window = prompt_len - scored;
        let k = budget.saturating_sub(window);
        Self {
            k,
            window,
            per_head: k.min(scored) + window,
        }
    }

    /// The selection the kernel wrote (`[num_kv_heads, per_head]`).
    fn selection(&self, kept: &[i32], num_kv_heads: usize) -> LayerSelection {
        LayerSelection {
            kept: (0..num_kv_heads)
                .map(|head| {
                    let row = &kept[head * self.per_head..(head + 1) * self.per_head];
                    row.iter().map(|&entry| entry as usize).collect()
                })
                .collect(),
        }
    }
}

/// The scoring launch of `pending` for `rows`, `None` when its policy needs no scores.
fn scoring_launch(
    pending: &PendingEviction,
    rows: &SequenceRows,
    input: &LayerInput,
    q_width: usize,
) -> Option<ScoringLaunch> {
    let plan = pending.scoring?;
    let query_rows = pending.scoring_rows(rows.first_row, rows.num_tokens);
    let (qkv, stride) = (input.qkv.qkv, input.qkv.row_stride);
    let lookahead = matches!(plan.queries, ScoringQueries::Lookahead { .. });
    Some(ScoringLaunch {
        queries: qkv.at(query_rows.start * stride),
        extra_keys: lookahead.then(|| qkv.at(rows.lookahead_rows().start * stride + q_width)),
        row_stride: stride,
        num_queries: query_rows.len(),
        key_cache: input.cache.keys,
        block_table: input.block_table,
        prompt_len: pending.prompt_len(),
        scored: plan.scored_entries,
        suffix: !lookahead,
        mean: plan.reduction == QueryReduction::Mean,
        pool: match plan.pooling {
            None => (0, 1),
            Some(p) => (if p.pool == Pool::Max { 1 } else { 2 }, p.kernel),
        },
    })
}

impl EvictionScratch {
    /// Scores, selects and compacts layer `input.layer` of `seq` (laid out as `rows`, evicting
    /// as `pending`), recording the selection in `pending`.
    pub fn run_layer(
        &mut self,
        (gpu, kernels): (&Gpu, &Kernels),
        pending: &mut PendingEviction,
        seq: &SequenceInput<'_>,
        rows: &SequenceRows,
        input: &LayerInput,
    ) -> Result<()> {
        let shape = kernels.shape;
        let budget = pending.layer_budgets[input.layer];
        let started = Instant::now();
        let selection = match scoring_launch(pending, rows, input, shape.q_width()) {
            Some(launch) => {
                let (n_q, scored) = (launch.num_queries, launch.scored);
                let (h, kv) = (shape.num_heads, shape.num_kv_heads);
                let floats = self.floats.ensure(gpu, 2 * h * n_q + (h + kv) * scored)?;
                let stats = ScoringStats {
                    row_max: floats,
                    row_inv_sum: floats.at(h * n_q),
                    reduced: floats.at(2 * h * n_q),
                };
                let scores = floats.at(2 * h * n_q + h * scored);
                kernels.eviction_scores(&launch, stats, scores)?;
                let scoring_done = Instant::now();
                pending.times.scoring += scoring_done - started;
                let top = TopK::new(budget, pending.prompt_len(), scored);
                let kept = self.indices.ensure(gpu, kv * top.per_head)?;
                kernels.top_k(scores, scored, (top.k, top.window), kept)?;
                self.host_kept.resize(kv * top.per_head, 0);
                gpu.read(kept, &mut self.host_kept)?;
                let selection = top.selection(&self.host_kept, kv);
                pending.times.selection += scoring_done.elapsed();
                selection
            }
            None => {
                let selection = pending
                    .prompt
                    .select_layer(budget, shape.num_kv_heads, None)?;
                pending.times.selection += started.elapsed();
                selection
            }
        };
        let started = Instant::now();
        let into = seq.compact_into.unwrap_or(seq.block_table);
        let plan = CompactionPlan::new(&selection.kept, seq.block_table, into, shape.block_size)?;
        self.compact((gpu, kernels), input.cache, &plan)?;
        pending.times.compaction += started.elapsed();
        pending.push_selection(selection);
        Ok(())
    }

    /// Runs `plan` on one layer of the pool.
    fn compact(
        &mut self,
        (gpu, kernels): (&Gpu, &Kernels),
        cache: KvLayer,
        plan: &CompactionPlan,
    ) -> Result<()> {
        if plan.count == 0 {
            return Ok(());
        }
        self.host_plan.clear();
        self.host_plan.extend_from_slice(&plan.kept);
        self.host_plan.extend_from_slice(&plan.gather_table);
        self.host_plan.extend_from_slice(&plan.scatter_table);
        let kept = self.indices.upload(gpu, &self.host_plan)?;
        let gather_table = kept.at(plan.kept.len());
        let scratch_len = plan.scratch_len(kernels.shape.head_dim);
        let moved = self.moved.ensure(gpu, 2 * scratch_len)?;
        let compaction = Compaction {
            kept,
            count: plan.count,
            gather_table,
            scatter_table: gather_table.at(plan.gather_table.len()),
            key_scratch: moved,
            value_scratch: moved.at(scratch_len),
        };
        kernels.compact(cache, compaction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kernels::HeadShape;
    use crate::eviction::{EvictionPolicy, Policy};

    const SHAPE: HeadShape = HeadShape {
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        block_size: 16,
    };
    const QKV_WIDTH: usize = (4 + 2 * 2) * 8;

    /// The launch for a sequence whose `num_tokens` rows start at row 3 of a 100-row batch,
    /// with fake device addresses (nothing is dereferenced on the host).
    fn launch_for(policy: Policy, prompt_len: usize, num_tokens: usize) -> Option<ScoringLaunch> {
        let prompt = EvictionPolicy { policy, budget: 6 }
            .for_prompt(prompt_len)
            .expect("a prompt over budget is evicted");
        let pending = PendingEviction::new(prompt, 1);
        let rows = SequenceRows {
            first_row: 3,
            num_tokens,
            num_lookahead: pending.lookahead_rows(),
            lookahead_index: 0,
            eviction: None,
        };
        let input = LayerInput {
            layer: 0,
            qkv: QkvRows {
                qkv: DevPtr::new(0, 100 * QKV_WIDTH),
                rows: 100,
                row_stride: QKV_WIDTH,
            },
            cache: KvLayer {
                keys: DevPtr::new(0x9000, 1 << 20),
                values: DevPtr::new(0xa000, 1 << 20),
            },
            block_table: DevPtr::new(0x8000, 4),
        };
        scoring_launch(&pending, &rows, &input, SHAPE.q_width())
    }

    #[test]
    fn snapkv_scores_with_the_last_window_prompt_rows_and_no_extra_keys() {
        let pool = Pool::Max;
        let policy = Policy::SnapKv {
            window: 2,
            kernel: 3,
            pool,
        };
        let launch = launch_for(policy, 20, 5).unwrap();
        // Rows 3..8 are the chunk; the window is rows 6 and 7.
        assert_eq!(launch.queries.address(), (6 * QKV_WIDTH * 4) as u64);
        assert_eq!(launch.num_queries, 2);
        assert!(launch.extra_keys.is_none() && launch.suffix && !launch.mean);
        assert_eq!((launch.prompt_len, launch.scored), (20, 18));
        assert_eq!(launch.pool, (1, 3));
        assert_eq!(launch.block_table.address(), 0x8000);
    }

    #[test]
    fn lookahead_scores_with_its_rows_after_the_chunk_and_their_keys_as_extras() {
        let policy = Policy::Lookahead {
            num_tokens: 4,
            window: 1,
        };
        let launch = launch_for(policy, 20, 5).unwrap();
        // The lookahead rows follow the chunk: rows 8..12; their keys sit after the queries.
        assert_eq!(launch.queries.address(), (8 * QKV_WIDTH * 4) as u64);
        assert_eq!(launch.num_queries, 4);
        let q_width = SHAPE.num_heads * SHAPE.head_dim;
        let extra = launch.extra_keys.unwrap();
        assert_eq!(extra.address(), ((8 * QKV_WIDTH + q_width) * 4) as u64);
        assert!(!launch.suffix && launch.mean);
        assert_eq!((launch.scored, launch.pool), (19, (0, 1)));
    }

    #[test]
    fn top_k_keeps_what_the_cpus_selection_keeps() {
        let scores: Vec<f32> = (0..18).map(|i| ((i * 7) % 5) as f32).collect();
        for (budget, prompt_len) in [(6, 20), (3, 20), (40, 20)] {
            let top = TopK::new(budget, prompt_len, 18);
            let cpu = crate::eviction::select_with_window(&scores, prompt_len, budget, 2);
            assert_eq!(
                (top.window, top.per_head),
                (2, cpu.len()),
                "budget {budget}"
            );
            // The kernel's output for two heads, read back as the CPU's selection per head.
            let written: Vec<i32> = cpu.iter().chain(&cpu).map(|&e| e as i32).collect();
            assert_eq!(top.selection(&written, 2).kept, [cpu.clone(), cpu]);
        }
    }

    #[test]
    fn streaming_llm_needs_no_scoring_launch() {
        assert!(launch_for(Policy::StreamingLlm { sinks: 2 }, 20, 5).is_none());
    }
}
