//! How a kernel is launched: its arguments in the order of its C signature ([`Arg`],
//! [`launch`]), and the sizing rules of the launch configurations (grid, block, dynamic shared
//! memory) each kernel file documents, as plain functions unit-tested on the host. The typed
//! launches themselves are [`super::kernels`].

use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig, PushKernelArg};

use super::gpu::driver_error;
use crate::error::Result;

/// Dynamic shared memory a block may use without opting in (every GPU since compute 2.0).
pub const SHARED_MEMORY_LIMIT: usize = 48 * 1024;

/// The largest grid y or z dimension.
pub const MAX_GRID_YZ: usize = 65_535;

/// One kernel argument: a device address or a scalar, as the kernel's C signature takes it.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
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
pub fn launch(
    stream: &CudaStream,
    ordinal: usize,
    function: &CudaFunction,
    config: LaunchConfig,
    args: &[Arg],
) -> Result<()> {
    let mut builder = stream.launch_builder(function);
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
        .map_err(driver_error(ordinal, "cuLaunchKernel"))
}

/// `[x, 1, 1]` blocks of `[threads, 1, 1]` with `shared` bytes.
pub fn config(grid: (usize, usize, usize), threads: usize, shared: usize) -> LaunchConfig {
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
}
