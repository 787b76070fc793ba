//! Typed launches of the kernel files in `kernels/`: one method per kernel, taking device
//! addresses and host sizes, computing the launch configuration (grid, block, dynamic shared
//! memory) from the shapes by the rules each kernel file documents. The sizing rules are plain
//! functions, unit-tested on the host.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig, PushKernelArg};

use super::gpu::{DevPtr, Gpu, driver_error};
use crate::error::{EngineError, Result};

/// Dynamic shared memory a block may use without opting in (every GPU since compute 2.0).
pub const SHARED_MEMORY_LIMIT: usize = 48 * 1024;

/// The largest grid y or z dimension.
const MAX_GRID_YZ: usize = 65_535;

/// Every kernel the forward pass launches, with the kernel file that defines it.
const FUNCTIONS: &[(&str, &str)] = &[
    ("embedding.cu", "glimpse_embedding_gather"),
    ("rms_norm.cu", "glimpse_rms_norm"),
    ("rope.cu", "glimpse_rope"),
    ("silu_mul.cu", "glimpse_silu_mul"),
    ("cache_write.cu", "glimpse_cache_write"),
    ("prefill_attention.cu", "glimpse_prefill_attention"),
    ("decode_attention.cu", "glimpse_decode_attention"),
    ("decode_attention.cu", "glimpse_decode_attention_reduce"),
    ("eviction_scoring.cu", "glimpse_score_softmax_stats"),
    ("eviction_scoring.cu", "glimpse_score_reduce"),
    ("eviction_scoring.cu", "glimpse_score_pool"),
    ("top_k.cu", "glimpse_top_k"),
    ("compact.cu", "glimpse_compact_gather"),
    ("compact.cu", "glimpse_compact_scatter"),
    ("round_to_bf16.cu", "glimpse_round_to_bf16"),
];

/// The loaded kernels, by function name.
pub struct Kernels {
    functions: HashMap<&'static str, CudaFunction>,
}

/// One kernel argument: a device address or a scalar, as the kernel's C signature takes it.
#[derive(Debug, Clone, Copy)]
enum Arg {
    Address(u64),
    Int(i32),
    Long(i64),
    Float(f32),
}

impl From<u64> for Arg {
    fn from(address: u64) -> Self {
        Self::Address(address)
    }
}

impl From<i32> for Arg {
    fn from(value: i32) -> Self {
        Self::Int(value)
    }
}

impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Self::Long(value)
    }
}

impl From<f32> for Arg {
    fn from(value: f32) -> Self {
        Self::Float(value)
    }
}

/// Launches `function` with `args` in the order of its C signature.
fn launch(gpu: &Gpu, function: &CudaFunction, config: LaunchConfig, args: &[Arg]) -> Result<()> {
    let mut builder = gpu.stream.launch_builder(function);
    for arg in args {
        match arg {
            Arg::Address(value) => builder.arg(value),
            Arg::Int(value) => builder.arg(value),
            Arg::Long(value) => builder.arg(value),
            Arg::Float(value) => builder.arg(value),
        };
    }
    // SAFETY: every address argument points into a live device buffer at least as large as the
    // kernel reads or writes for the sizes passed beside it (each wrapper's shapes), and
    // everything runs on the backend's one stream.
    unsafe { builder.launch(config) }
        .map(drop)
        .map_err(driver_error(gpu.ordinal, "cuLaunchKernel"))
}

/// [`launch`] with each argument converted to an [`Arg`].
macro_rules! launch {
    ($gpu:expr, $function:expr, $config:expr, $($arg:expr),+ $(,)?) => {
        launch($gpu, $function, $config, &[$(Arg::from($arg)),+])
    };
}

/// `[x, 1, 1]` blocks of `[threads, 1, 1]` with `shared` bytes.
fn config(grid: (usize, usize, usize), threads: usize, shared: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: shared as u32,
    }
}

/// The smallest power of two at least `work`, within `32..=max` (a whole warp at least).
pub fn pow2_threads(work: usize, max: usize) -> usize {
    work.next_power_of_two().clamp(32, max)
}

/// Blocks of `threads` for a grid-stride loop over `total` elements (at most [`MAX_GRID_YZ`]:
/// the loop covers the rest).
pub fn grid_stride_blocks(total: usize, threads: usize) -> usize {
    total.div_ceil(threads).clamp(1, MAX_GRID_YZ)
}

/// How `glimpse_prefill_attention` tiles a batch (see its file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillTiling {
    /// Keys per tile (`blockDim.x`).
    pub tile: usize,
    pub rows_per_block: usize,
    pub shared_bytes: usize,
}

impl PrefillTiling {
    /// Keys per tile.
    const TILE: usize = 64;

    /// The kernel file's dynamic shared memory for `rows_per_block` rows of `group` query heads.
    fn shared_bytes(tile: usize, rows_per_block: usize, group: usize, head_dim: usize) -> usize {
        let m = rows_per_block * group;
        12 * tile + 8 * rows_per_block + 4 * (2 * m * head_dim + 2 * m * tile + 3 * m)
    }

    /// The most rows per block (a power of two, at most 16 and at most the longest sequence's
    /// rows rounded up) whose shared memory fits [`SHARED_MEMORY_LIMIT`]; `None` when not even
    /// one row fits.
    pub fn choose(max_rows: usize, group: usize, head_dim: usize) -> Option<Self> {
        let most = max_rows.next_power_of_two().min(16);
        std::iter::successors(Some(most), |&r| (r > 1).then_some(r / 2))
            .map(|rows_per_block| Self {
                tile: Self::TILE,
                rows_per_block,
                shared_bytes: Self::shared_bytes(Self::TILE, rows_per_block, group, head_dim),
            })
            .find(|t| t.shared_bytes <= SHARED_MEMORY_LIMIT)
    }
}

/// How `glimpse_decode_attention` splits a decode batch's contexts (see its file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSplit {
    /// Entries per tile (`blockDim.x`).
    pub tile: usize,
    /// Attended entries per partition (the grid's z dimension covers the longest context).
    pub partition_size: usize,
    pub partitions: usize,
    pub shared_bytes: usize,
}

impl DecodeSplit {
    const TILE: usize = 64;
    /// Entries one block folds: long enough that a partition's fixed cost (its query load and
    /// its partial results) is small beside its keys, short enough that a batch of a few long
    /// sequences still gives the GPU many blocks.
    const PARTITION_SIZE: usize = 512;

    /// The split for contexts of at most `max_context` entries and GQA groups of `group` heads
    /// of `head_dim`; `None` when one block's shared memory exceeds [`SHARED_MEMORY_LIMIT`].
    pub fn choose(max_context: usize, group: usize, head_dim: usize) -> Option<Self> {
        let tile = Self::TILE;
        let shared_bytes = 8 * tile + 4 * (2 * group * head_dim + 2 * group * tile + 3 * group);
        (shared_bytes <= SHARED_MEMORY_LIMIT).then(|| Self {
            tile,
            partition_size: Self::PARTITION_SIZE,
            partitions: max_context
                .div_ceil(Self::PARTITION_SIZE)
                .clamp(1, MAX_GRID_YZ),
            shared_bytes,
        })
    }

    /// Elements of each of the partial max and sum arrays (`[num_seqs, num_heads, partitions]`);
    /// the partial outputs hold `head_dim` times as many.
    pub fn partials_len(&self, num_seqs: usize, num_heads: usize) -> usize {
        num_seqs * num_heads * self.partitions
    }
}

/// Threads per block of the eviction kernels (a power of two).
pub const SCORING_THREADS: usize = 128;
/// Threads of `glimpse_top_k` (a power of two).
pub const TOP_K_THREADS: usize = 256;

/// Dynamic shared memory of `glimpse_score_reduce`: the `n_q` queries of one head.
pub fn score_reduce_shared_bytes(num_queries: usize, head_dim: usize) -> usize {
    4 * num_queries * head_dim
}

/// Shapes shared by the attention-side launches.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

/// `glimpse_prefill_attention`'s per-sequence index arrays (`glimpse_decode_attention` reads
/// the block tables, context lengths and skipped ranges).
#[derive(Clone, Copy)]
pub struct PrefillIndex {
    pub block_tables: DevPtr<i32>,
    pub max_blocks_per_seq: usize,
    pub cu_seqlens: DevPtr<i32>,
    pub context_lens: DevPtr<i32>,
    pub num_lookahead: DevPtr<i32>,
    pub skip_starts: DevPtr<i32>,
    pub skip_ends: DevPtr<i32>,
    pub num_seqs: usize,
    /// The most rows any sequence has.
    pub max_rows: usize,
}

/// One eviction scoring launch's inputs (see `eviction_scoring.cu`).
pub struct ScoringLaunch {
    pub queries: DevPtr<f32>,
    pub extra_keys: Option<DevPtr<f32>>,
    pub row_stride: usize,
    pub num_queries: usize,
    pub key_cache: DevPtr<u16>,
    pub block_table: DevPtr<i32>,
    pub prompt_len: usize,
    pub scored: usize,
    pub suffix: bool,
    pub mean: bool,
    /// 0 none, 1 max, 2 average (the kernel file's `GLIMPSE_POOL_*`), and the kernel size.
    pub pool: (i32, usize),
}

fn int(value: usize) -> i32 {
    i32::try_from(value).expect("shapes were checked against the kernels' i32 limit")
}

impl Kernels {
    /// Finds every function of [`FUNCTIONS`] in `modules` (kernel file name → its module).
    pub fn load(gpu: &Gpu, modules: &HashMap<&'static str, Arc<CudaModule>>) -> Result<Self> {
        let functions = FUNCTIONS
            .iter()
            .map(|&(file, name)| {
                let module = modules.get(file).ok_or_else(|| EngineError::CudaDriver {
                    ordinal: gpu.ordinal,
                    call: "cuModuleLoadData",
                    message: format!("kernel file {file} was not loaded"),
                })?;
                let function = module
                    .load_function(name)
                    .map_err(driver_error(gpu.ordinal, "cuModuleGetFunction"))?;
                Ok((name, function))
            })
            .collect::<Result<_>>()?;
        Ok(Self { functions })
    }

    fn get(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }

    /// `out[r] = f32(table[ids[r]])`, `rows` rows of `hidden`.
    pub fn embedding(
        &self,
        gpu: &Gpu,
        table: DevPtr<u16>,
        ids: DevPtr<i32>,
        out: DevPtr<f32>,
        rows: usize,
        hidden: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let cfg = config((rows, 1, 1), pow2_threads(hidden, 256), 0);
        launch!(
            gpu,
            self.get("glimpse_embedding_gather"),
            cfg,
            table.address(),
            ids.address(),
            out.address(),
            int(hidden)
        )
    }

    /// RMSNorm of `rows × pieces` pieces of `width` floats, rows `row_stride` apart (in place
    /// when `x` and `out` are the same).
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        gpu: &Gpu,
        x: DevPtr<f32>,
        weight: DevPtr<f32>,
        out: DevPtr<f32>,
        rows: usize,
        pieces: usize,
        row_stride: usize,
        width: usize,
        eps: f32,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let threads = pow2_threads(width, 1024);
        let cfg = config((rows, pieces, 1), threads, 4 * threads);
        launch!(
            gpu,
            self.get("glimpse_rms_norm"),
            cfg,
            x.address(),
            weight.address(),
            out.address(),
            int(row_stride),
            int(width),
            eps
        )
    }

    /// RoPE in place on the first `num_heads` heads of `rows` rows `row_stride` apart.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        gpu: &Gpu,
        x: DevPtr<f32>,
        positions: DevPtr<i32>,
        cos: DevPtr<f32>,
        sin: DevPtr<f32>,
        rows: usize,
        row_stride: usize,
        num_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let cfg = config((rows, 1, 1), pow2_threads(num_heads * head_dim / 2, 256), 0);
        launch!(
            gpu,
            self.get("glimpse_rope"),
            cfg,
            x.address(),
            positions.address(),
            cos.address(),
            sin.address(),
            int(row_stride),
            int(num_heads),
            int(head_dim)
        )
    }

    /// `out[r] = silu(gate) · up` for `rows` rows of `[gate | up]`.
    pub fn silu_mul(
        &self,
        gpu: &Gpu,
        gate_up: DevPtr<f32>,
        out: DevPtr<f32>,
        rows: usize,
        intermediate: usize,
    ) -> Result<()> {
        let total = rows * intermediate;
        if total == 0 {
            return Ok(());
        }
        let cfg = config((grid_stride_blocks(total, 256), 1, 1), 256, 0);
        launch!(
            gpu,
            self.get("glimpse_silu_mul"),
            cfg,
            gate_up.address(),
            out.address(),
            int(rows),
            int(intermediate)
        )
    }

    /// Rounds `count` floats to bf16 bits.
    pub fn round_to_bf16(
        &self,
        gpu: &Gpu,
        x: DevPtr<f32>,
        out: DevPtr<u16>,
        count: usize,
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        assert!(
            x.len() >= count && out.len() >= count,
            "rounding past a buffer"
        );
        let cfg = config((grid_stride_blocks(count, 256), 1, 1), 256, 0);
        launch!(
            gpu,
            self.get("glimpse_round_to_bf16"),
            cfg,
            x.address(),
            out.address(),
            count as i64
        )
    }

    /// Each row's K and V (at `k_offset`, `v_offset` of fused rows `row_stride` apart) into one
    /// layer of the pool at its slot (`-1`: no slot).
    #[allow(clippy::too_many_arguments)]
    pub fn cache_write(
        &self,
        gpu: &Gpu,
        qkv: DevPtr<f32>,
        slots: DevPtr<i32>,
        (keys, values): (DevPtr<u16>, DevPtr<u16>),
        rows: usize,
        row_stride: usize,
        (k_offset, v_offset): (usize, usize),
        shape: HeadShape,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let cfg = config(
            (rows, 1, 1),
            pow2_threads(shape.num_kv_heads * shape.head_dim, 256),
            0,
        );
        launch!(
            gpu,
            self.get("glimpse_cache_write"),
            cfg,
            qkv.address(),
            slots.address(),
            keys.address(),
            values.address(),
            int(row_stride),
            int(k_offset),
            int(v_offset),
            int(shape.num_kv_heads),
            int(shape.head_dim),
            int(shape.block_size)
        )
    }

    /// Paged varlen attention of every row (queries, and the lookahead rows' side K/V, in the
    /// fused rows `qkv`, `row_stride` apart) over one layer of the pool into `out`
    /// (`[rows, num_heads · head_dim]`).
    #[allow(clippy::too_many_arguments)]
    pub fn prefill_attention(
        &self,
        gpu: &Gpu,
        qkv: DevPtr<f32>,
        row_stride: usize,
        (keys, values): (DevPtr<u16>, DevPtr<u16>),
        index: &PrefillIndex,
        tiling: PrefillTiling,
        out: DevPtr<f32>,
        shape: HeadShape,
    ) -> Result<()> {
        if index.num_seqs == 0 {
            return Ok(());
        }
        let q_width = shape.num_heads * shape.head_dim;
        let kv_width = shape.num_kv_heads * shape.head_dim;
        let (side_keys, side_values) = (qkv.at(q_width), qkv.at(q_width + kv_width));
        let tiles = index.max_rows.div_ceil(tiling.rows_per_block);
        let cfg = config(
            (tiles, index.num_seqs, shape.num_kv_heads),
            tiling.tile,
            tiling.shared_bytes,
        );
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        launch!(
            gpu,
            self.get("glimpse_prefill_attention"),
            cfg,
            qkv.address(),
            side_keys.address(),
            side_values.address(),
            int(row_stride),
            keys.address(),
            values.address(),
            index.block_tables.address(),
            int(index.max_blocks_per_seq),
            index.cu_seqlens.address(),
            index.context_lens.address(),
            index.num_lookahead.address(),
            index.skip_starts.address(),
            index.skip_ends.address(),
            out.address(),
            int(shape.num_heads),
            int(shape.head_dim),
            int(shape.block_size),
            int(tiling.rows_per_block),
            scale,
        )
    }

    /// Paged decode attention of one contiguous query row per sequence (`q`, `[num_seqs,
    /// num_heads · head_dim]`) over one layer of the pool into `out` (same shape), through the
    /// partial results `partials` (max, sum, output), in two launches. `out` may be `q`: the
    /// second launch writes it only after the first has read every query.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_attention(
        &self,
        gpu: &Gpu,
        q: DevPtr<f32>,
        (keys, values): (DevPtr<u16>, DevPtr<u16>),
        index: &PrefillIndex,
        split: DecodeSplit,
        partials: DevPtr<f32>,
        out: DevPtr<f32>,
        shape: HeadShape,
    ) -> Result<()> {
        if index.num_seqs == 0 {
            return Ok(());
        }
        let len = split.partials_len(index.num_seqs, shape.num_heads);
        let (partial_max, partial_sum, partial_out) =
            (partials, partials.at(len), partials.at(2 * len));
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let cfg = config(
            (index.num_seqs, shape.num_kv_heads, split.partitions),
            split.tile,
            split.shared_bytes,
        );
        launch!(
            gpu,
            self.get("glimpse_decode_attention"),
            cfg,
            q.address(),
            keys.address(),
            values.address(),
            index.block_tables.address(),
            int(index.max_blocks_per_seq),
            index.context_lens.address(),
            index.skip_starts.address(),
            index.skip_ends.address(),
            int(split.partition_size),
            partial_max.address(),
            partial_sum.address(),
            partial_out.address(),
            int(shape.num_heads),
            int(shape.head_dim),
            int(shape.block_size),
            scale,
        )?;
        let cfg = config(
            (index.num_seqs, shape.num_heads, 1),
            pow2_threads(shape.head_dim, 256),
            0,
        );
        launch!(
            gpu,
            self.get("glimpse_decode_attention_reduce"),
            cfg,
            partial_max.address(),
            partial_sum.address(),
            partial_out.address(),
            out.address(),
            int(split.partitions),
            int(shape.head_dim),
        )
    }

    /// One layer's eviction scores `[num_kv_heads, scored]` into `scores`, through the
    /// statistics `row_max`, `row_inv_sum` (`[num_heads, n_q]` each) and `reduced` (`[num_heads,
    /// scored]`).
    pub fn eviction_scores(
        &self,
        gpu: &Gpu,
        s: &ScoringLaunch,
        shape: HeadShape,
        (row_max, row_inv_sum, reduced): (DevPtr<f32>, DevPtr<f32>, DevPtr<f32>),
        scores: DevPtr<f32>,
    ) -> Result<()> {
        let (h, kv, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
        let scale = 1.0 / (d as f32).sqrt();
        let extra = s.extra_keys.map_or(0, |p| p.address());
        let cfg = config(
            (s.num_queries, h, 1),
            SCORING_THREADS,
            4 * (d + 2 * SCORING_THREADS),
        );
        launch!(
            gpu,
            self.get("glimpse_score_softmax_stats"),
            cfg,
            s.queries.address(),
            extra,
            int(s.row_stride),
            s.key_cache.address(),
            s.block_table.address(),
            int(s.prompt_len),
            i32::from(s.suffix),
            i32::from(s.extra_keys.is_some()),
            row_max.address(),
            row_inv_sum.address(),
            int(kv),
            int(d),
            int(shape.block_size),
            scale,
        )?;
        let blocks = s.scored.div_ceil(SCORING_THREADS).max(1);
        let cfg = config(
            (blocks, h, 1),
            SCORING_THREADS,
            score_reduce_shared_bytes(s.num_queries, d),
        );
        launch!(
            gpu,
            self.get("glimpse_score_reduce"),
            cfg,
            s.queries.address(),
            int(s.row_stride),
            int(s.num_queries),
            s.key_cache.address(),
            s.block_table.address(),
            int(s.prompt_len),
            int(s.scored),
            i32::from(s.suffix),
            i32::from(s.mean),
            row_max.address(),
            row_inv_sum.address(),
            reduced.address(),
            int(kv),
            int(d),
            int(shape.block_size),
            scale,
        )?;
        let cfg = config((blocks, kv, 1), SCORING_THREADS, 0);
        launch!(
            gpu,
            self.get("glimpse_score_pool"),
            cfg,
            reduced.address(),
            scores.address(),
            int(s.scored),
            int(h),
            s.pool.0,
            int(s.pool.1)
        )
    }

    /// The `k` best of `scored` scores per KV head plus the `window` entries after them, into
    /// `kept` (`[num_kv_heads, min(k, scored) + window]`).
    #[allow(clippy::too_many_arguments)]
    pub fn top_k(
        &self,
        gpu: &Gpu,
        scores: DevPtr<f32>,
        scored: usize,
        k: usize,
        window: usize,
        num_kv_heads: usize,
        kept: DevPtr<i32>,
    ) -> Result<()> {
        let cfg = config(
            (num_kv_heads, 1, 1),
            TOP_K_THREADS,
            4 * (256 + 2 * TOP_K_THREADS + 2),
        );
        launch!(
            gpu,
            self.get("glimpse_top_k"),
            cfg,
            scores.address(),
            int(scored),
            int(k),
            int(window),
            kept.address()
        )
    }

    /// Moves `count` kept entries per KV head of one layer through `scratch` (gather, then
    /// scatter: out of place, see `compact.cu`).
    #[allow(clippy::too_many_arguments)]
    pub fn compact(
        &self,
        gpu: &Gpu,
        (keys, values): (DevPtr<u16>, DevPtr<u16>),
        tables: (DevPtr<i32>, DevPtr<i32>),
        kept: DevPtr<i32>,
        (key_scratch, value_scratch): (DevPtr<u16>, DevPtr<u16>),
        count: usize,
        shape: HeadShape,
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let cfg = config(
            (count, shape.num_kv_heads, 1),
            pow2_threads(shape.head_dim, 128),
            0,
        );
        let (d, bs) = (int(shape.head_dim), int(shape.block_size));
        launch!(
            gpu,
            self.get("glimpse_compact_gather"),
            cfg,
            keys.address(),
            values.address(),
            tables.0.address(),
            kept.address(),
            key_scratch.address(),
            value_scratch.address(),
            d,
            bs
        )?;
        launch!(
            gpu,
            self.get("glimpse_compact_scatter"),
            cfg,
            keys.address(),
            values.address(),
            tables.1.address(),
            key_scratch.address(),
            value_scratch.address(),
            d,
            bs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_are_powers_of_two_of_at_least_a_warp() {
        assert_eq!(pow2_threads(1, 256), 32);
        assert_eq!(pow2_threads(33, 256), 64);
        assert_eq!(pow2_threads(128, 256), 128);
        assert_eq!(pow2_threads(5000, 1024), 1024);
    }

    #[test]
    fn grid_stride_launches_cover_small_work_and_cap_large_work() {
        assert_eq!(grid_stride_blocks(0, 256), 1);
        assert_eq!(grid_stride_blocks(257, 256), 2);
        assert_eq!(grid_stride_blocks(usize::MAX / 2, 256), MAX_GRID_YZ);
    }

    #[test]
    fn prefill_tiling_matches_the_kernel_files_shared_memory_and_fits_the_limit() {
        // One decode row of a 1B Llama (32 heads, 8 KV heads, head_dim 64): one row per block.
        let decode = PrefillTiling::choose(1, 4, 64).unwrap();
        assert_eq!(decode.rows_per_block, 1);
        assert_eq!(
            decode.shared_bytes,
            12 * 64 + 8 + 4 * (2 * 4 * 64 + 2 * 4 * 64 + 12)
        );
        // A long prefill of an 8-wide GQA group at head_dim 128: as many rows as fit.
        let prefill = PrefillTiling::choose(4096, 8, 128).unwrap();
        assert!(prefill.shared_bytes <= SHARED_MEMORY_LIMIT);
        let doubled = PrefillTiling::shared_bytes(64, 2 * prefill.rows_per_block, 8, 128);
        assert!(prefill.rows_per_block == 16 || doubled > SHARED_MEMORY_LIMIT);
        assert!(prefill.rows_per_block.is_power_of_two());
        // A head too wide for even one row.
        assert_eq!(PrefillTiling::choose(1, 64, 1024), None);
    }

    #[test]
    fn decode_splits_cover_the_longest_context_in_partitions() {
        let split = DecodeSplit::choose(1025, 4, 64).unwrap();
        assert_eq!((split.partition_size, split.partitions), (512, 3));
        assert_eq!(
            split.shared_bytes,
            8 * 64 + 4 * (2 * 4 * 64 + 2 * 4 * 64 + 12)
        );
        assert_eq!(split.partials_len(2, 32), 2 * 32 * 3);
        // An empty context still launches one partition (it writes zeros).
        assert_eq!(DecodeSplit::choose(0, 4, 64).unwrap().partitions, 1);
        assert_eq!(DecodeSplit::choose(1, 64, 1024), None);
    }

    #[test]
    fn every_kernel_the_pass_launches_is_defined_in_its_file() {
        for (file, name) in FUNCTIONS {
            let source = super::super::nvrtc::KERNEL_FILES
                .iter()
                .find(|k| k.name == *file)
                .unwrap_or_else(|| panic!("no kernel file {file}"));
            assert!(
                source
                    .source
                    .contains(&format!("GLIMPSE_KERNEL void {name}(")),
                "{name} not in {file}"
            );
        }
    }
}
