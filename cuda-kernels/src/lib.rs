//! Glimpse's CUDA kernels (`engine/src/backend/cuda/kernels/*.cu`) built for the CPU through the
//! host shim (`shim/shim.h`: one host thread per CUDA thread, blocks one after another), so
//! `cargo test` checks their logic against the CPU backend on machines without a GPU.
//!
//! Each function launches one kernel on host memory with the grid the CUDA backend would use and
//! the block size the caller picks. They check slice lengths and indices first, as the CUDA
//! backend checks a batch before a launch, and panic on a mismatch: this crate is for tests.

mod eviction;
mod ffi;
mod prefill_attention;

pub use eviction::{ScorePool, ScoringPlan, eviction_scores, score_pool, top_k};
pub use prefill_attention::{PrefillBuild, PrefillParams, PrefillSequences, prefill_attention};

use std::os::raw::c_int;

/// A length or count as the kernels' `int`.
pub(crate) fn int(value: usize) -> c_int {
    c_int::try_from(value).expect("kernel arguments fit an int")
}

/// `out[r, :] = table[ids[r], :]` widened from bf16 bits, for a table `[vocab, hidden]`.
pub fn embedding_gather(table: &[u16], hidden: usize, ids: &[i32], out: &mut [f32], threads: u32) {
    let vocab = table.len() / hidden;
    assert!(ids.iter().all(|&id| (0..int(vocab)).contains(&id)));
    assert_eq!(out.len(), ids.len() * hidden);
    // SAFETY: every id is a row of `table` and `out` holds `ids.len()` rows of `hidden`.
    unsafe {
        ffi::glimpse_shim_embedding_gather(
            table.as_ptr(),
            ids.as_ptr(),
            out.as_mut_ptr(),
            int(ids.len()),
            int(hidden),
            threads,
        );
    }
}

/// Which build of the RMSNorm kernel to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RmsNormBuild {
    /// The kernel as shipped.
    Shipped,
    /// The kernel with its `__syncthreads` removed (`GLIMPSE_TEST_DROP_SYNC`), for the test that
    /// shows a missing barrier is caught.
    WithoutSync,
}

/// Which pieces of a buffer RMSNorm normalises: `pieces` consecutive `width`-wide pieces at the
/// start of each of `rows` rows, rows `row_stride` floats apart.
#[derive(Debug, Clone, Copy)]
struct NormPieces {
    rows: usize,
    pieces: usize,
    row_stride: usize,
}

/// Launches the RMSNorm build `build` over `at` of `x` into the same places of `out` (which may
/// be `x`).
///
/// # Safety
/// `x` and `out` hold `at.rows` rows of `at.row_stride` floats, and
/// `at.pieces · weight.len() ≤ at.row_stride`.
unsafe fn launch_rms_norm(
    x: *const f32,
    out: *mut f32,
    at: NormPieces,
    weight: &[f32],
    eps: f32,
    threads: u32,
    build: RmsNormBuild,
) {
    assert!(threads.is_power_of_two());
    let launch = match build {
        RmsNormBuild::Shipped => ffi::glimpse_shim_rms_norm,
        RmsNormBuild::WithoutSync => ffi::glimpse_shim_rms_norm_without_sync,
    };
    // SAFETY: as the caller promised.
    unsafe {
        launch(
            x,
            weight.as_ptr(),
            out,
            int(at.rows),
            int(at.pieces),
            int(at.row_stride),
            int(weight.len()),
            eps,
            threads,
        );
    }
}

/// RMSNorm of each `weight.len()`-wide row of `x` into `out`; `threads` is a power of two.
pub fn rms_norm(
    x: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
    threads: u32,
    build: RmsNormBuild,
) {
    let width = weight.len();
    assert_eq!(x.len() % width, 0);
    assert_eq!(out.len(), x.len());
    let at = NormPieces {
        rows: x.len() / width,
        pieces: 1,
        row_stride: width,
    };
    // SAFETY: `x` and `out` hold `rows` rows of `width`.
    unsafe {
        launch_rms_norm(
            x.as_ptr(),
            out.as_mut_ptr(),
            at,
            weight,
            eps,
            threads,
            build,
        )
    }
}

/// RMSNorm in place of the first `heads` heads (`weight.len()` wide) of each row of `x`, rows
/// `row_stride` floats apart: Qwen3's q or k norm on the fused qkv buffer.
pub fn rms_norm_heads_in_place(
    x: &mut [f32],
    row_stride: usize,
    heads: usize,
    weight: &[f32],
    eps: f32,
    threads: u32,
) {
    assert!(heads * weight.len() <= row_stride);
    assert_eq!(x.len() % row_stride, 0);
    let at = NormPieces {
        rows: x.len() / row_stride,
        pieces: heads,
        row_stride,
    };
    let ptr = x.as_mut_ptr();
    // SAFETY: `x` holds `rows` rows of `row_stride`, whose first `heads` heads are normalised.
    unsafe { launch_rms_norm(ptr, ptr, at, weight, eps, threads, RmsNormBuild::Shipped) }
}

/// Where RoPE rotates: the first `num_heads` heads of `head_dim` of each row, rows `row_stride`
/// floats apart.
#[derive(Debug, Clone, Copy)]
pub struct RopeShape {
    pub row_stride: usize,
    pub num_heads: usize,
    pub head_dim: usize,
}

/// Rotates each row of `x` in place at `positions[r]`, with angle tables `[positions, head_dim / 2]`.
pub fn rope(
    x: &mut [f32],
    positions: &[i32],
    cos: &[f32],
    sin: &[f32],
    shape: RopeShape,
    threads: u32,
) {
    let half = shape.head_dim / 2;
    assert_eq!(cos.len(), sin.len());
    assert!(shape.num_heads * shape.head_dim <= shape.row_stride);
    assert_eq!(x.len(), positions.len() * shape.row_stride);
    assert!(
        positions
            .iter()
            .all(|&p| (0..int(cos.len() / half)).contains(&p))
    );
    // SAFETY: every row and every position's angles are inside the slices.
    unsafe {
        ffi::glimpse_shim_rope(
            x.as_mut_ptr(),
            positions.as_ptr(),
            cos.as_ptr(),
            sin.as_ptr(),
            int(positions.len()),
            int(shape.row_stride),
            int(shape.num_heads),
            int(shape.head_dim),
            threads,
        );
    }
}

/// SwiGLU of rows `[gate | up]` (`2 · intermediate` wide) into `out` (`intermediate` wide).
pub fn silu_mul(gate_up: &[f32], intermediate: usize, out: &mut [f32], blocks: u32, threads: u32) {
    assert_eq!(gate_up.len() % (2 * intermediate), 0);
    let rows = gate_up.len() / (2 * intermediate);
    assert_eq!(out.len(), rows * intermediate);
    // SAFETY: `gate_up` holds `rows` rows of `2 · intermediate`, `out` of `intermediate`.
    unsafe {
        ffi::glimpse_shim_silu_mul(
            gate_up.as_ptr(),
            out.as_mut_ptr(),
            int(rows),
            int(intermediate),
            blocks,
            threads,
        );
    }
}

/// Every value of `x` rounded to bf16 bits into `out` (the GEMM inputs' rounding).
pub fn round_to_bf16(x: &[f32], out: &mut [u16], blocks: u32, threads: u32) {
    assert_eq!(x.len(), out.len());
    // SAFETY: `x` and `out` hold `x.len()` elements each.
    unsafe {
        ffi::glimpse_shim_round_to_bf16(
            x.as_ptr(),
            out.as_mut_ptr(),
            x.len() as i64,
            blocks,
            threads,
        );
    }
}

/// The shape of one layer of the device KV pool, `[block][kv_head][slot][head_dim]`.
#[derive(Debug, Clone, Copy)]
pub struct KvLayout {
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

impl KvLayout {
    /// Index of dimension `d` of `head`'s entry at pool entry `entry` (`block · block_size + slot`).
    pub fn index(&self, entry: usize, head: usize, d: usize) -> usize {
        let (block, slot) = (entry / self.block_size, entry % self.block_size);
        ((block * self.num_kv_heads + head) * self.block_size + slot) * self.head_dim + d
    }
}

/// One layer of the device KV pool as bf16 bits, keys and values apart.
pub struct KvLayer<'a> {
    pub keys: &'a mut [u16],
    pub values: &'a mut [u16],
    pub layout: KvLayout,
}

/// Where K and V sit in each row of the fused qkv buffer.
#[derive(Debug, Clone, Copy)]
pub struct QkvRows {
    pub row_stride: usize,
    pub k_offset: usize,
    pub v_offset: usize,
}

/// Writes each row's K and V, rounded to bf16, into its pool entry `slot_mapping[r]` (−1: none).
pub fn cache_write(
    qkv: &[f32],
    rows: QkvRows,
    slot_mapping: &[i32],
    layer: KvLayer<'_>,
    threads: u32,
) {
    let KvLayout {
        num_kv_heads,
        head_dim,
        block_size,
    } = layer.layout;
    let kv_width = num_kv_heads * head_dim;
    assert!(rows.k_offset.max(rows.v_offset) + kv_width <= rows.row_stride);
    assert_eq!(qkv.len(), slot_mapping.len() * rows.row_stride);
    assert_eq!(layer.keys.len(), layer.values.len());
    let entries = layer.keys.len() / kv_width;
    assert!(
        slot_mapping
            .iter()
            .all(|&e| e == -1 || (0..int(entries)).contains(&e))
    );
    // SAFETY: every row is inside `qkv` and every mapped entry inside the layer.
    unsafe {
        ffi::glimpse_shim_cache_write(
            qkv.as_ptr(),
            slot_mapping.as_ptr(),
            layer.keys.as_mut_ptr(),
            layer.values.as_mut_ptr(),
            int(slot_mapping.len()),
            int(rows.row_stride),
            int(rows.k_offset),
            int(rows.v_offset),
            int(num_kv_heads),
            int(head_dim),
            int(block_size),
            threads,
        );
    }
}

/// What each sequence of a decode step attends to: its block table (padded to a common width),
/// its number of cache entries, and the entries skipped inside them (PyramidKV's unused tail of a
/// compacted layer; `0..0` for none).
pub struct DecodeContexts<'a> {
    pub block_tables: &'a [i32],
    pub max_blocks_per_seq: usize,
    pub context_lens: &'a [i32],
    pub skip_starts: &'a [i32],
    pub skip_ends: &'a [i32],
}

/// How a decode attention launch runs.
#[derive(Debug, Clone, Copy)]
pub struct DecodeParams {
    pub num_heads: usize,
    pub scale: f32,
    /// Attended entries per block of the first launch; longer contexts split into partitions.
    pub partition_size: usize,
    /// Threads per block, a power of two: the tile of entries scored at once.
    pub threads: u32,
}

/// Paged decode attention of one query row per sequence (`q`, `out`: `[num_seqs, num_heads ·
/// head_dim]`) over one layer of the device pool.
pub fn decode_attention(
    q: &[f32],
    layer: &KvLayer<'_>,
    contexts: &DecodeContexts<'_>,
    params: DecodeParams,
    out: &mut [f32],
) {
    let DecodeParams {
        num_heads,
        scale,
        partition_size,
        threads,
    } = params;
    assert!(partition_size > 0);
    let KvLayout {
        num_kv_heads,
        head_dim,
        block_size,
    } = layer.layout;
    let num_seqs = contexts.context_lens.len();
    assert!(threads.is_power_of_two());
    assert_eq!(num_heads % num_kv_heads, 0);
    assert_eq!(q.len(), num_seqs * num_heads * head_dim);
    assert_eq!(out.len(), q.len());
    assert_eq!(contexts.skip_starts.len(), num_seqs);
    assert_eq!(contexts.skip_ends.len(), num_seqs);
    check_block_tables(
        contexts.block_tables,
        contexts.max_blocks_per_seq,
        contexts.context_lens,
        layer,
    );
    // SAFETY: every block a sequence's entries reach is inside the layer, every row inside `q`.
    unsafe {
        ffi::glimpse_shim_decode_attention(
            q.as_ptr(),
            layer.keys.as_ptr(),
            layer.values.as_ptr(),
            contexts.block_tables.as_ptr(),
            int(contexts.max_blocks_per_seq),
            contexts.context_lens.as_ptr(),
            contexts.skip_starts.as_ptr(),
            contexts.skip_ends.as_ptr(),
            out.as_mut_ptr(),
            int(num_seqs),
            int(num_heads),
            int(num_kv_heads),
            int(head_dim),
            int(block_size),
            scale,
            int(partition_size),
            threads,
        );
    }
}

/// Checks that every block the first `context_lens[s]` entries of sequence `s` reach, through its
/// row of `block_tables` (`max_blocks_per_seq` wide), is a block of `layer`.
pub(crate) fn check_block_tables(
    block_tables: &[i32],
    max_blocks_per_seq: usize,
    context_lens: &[i32],
    layer: &KvLayer<'_>,
) {
    let KvLayout {
        num_kv_heads,
        head_dim,
        block_size,
    } = layer.layout;
    assert_eq!(block_tables.len(), context_lens.len() * max_blocks_per_seq);
    let num_blocks = layer.keys.len() / (num_kv_heads * block_size * head_dim);
    for (table, &context) in block_tables
        .chunks(max_blocks_per_seq.max(1))
        .zip(context_lens)
    {
        let used = usize::try_from(context)
            .expect("context lengths are not negative")
            .div_ceil(block_size);
        assert!(used <= max_blocks_per_seq);
        assert!(
            table[..used]
                .iter()
                .all(|&b| (0..int(num_blocks)).contains(&b))
        );
    }
}

/// Compaction of one sequence's layer: for each KV head `h`, its kept entries
/// `kept[h · count..(h + 1) · count]` (ascending) move to its entries `0..count`, through the
/// sequence's block table.
pub fn compact(layer: KvLayer<'_>, block_table: &[i32], kept: &[i32], count: usize, threads: u32) {
    let KvLayout {
        num_kv_heads,
        head_dim,
        block_size,
    } = layer.layout;
    assert_eq!(kept.len(), num_kv_heads * count);
    let entries = int(block_table.len() * block_size);
    for head in kept.chunks(count.max(1)) {
        assert!(head.windows(2).all(|w| w[0] < w[1]), "kept entries ascend");
        assert!(head.iter().all(|&e| (0..entries).contains(&e)));
    }
    let num_blocks = layer.keys.len() / (num_kv_heads * block_size * head_dim);
    assert!(
        block_table
            .iter()
            .all(|&b| (0..int(num_blocks)).contains(&b))
    );
    if count == 0 {
        return;
    }
    // SAFETY: every kept entry and every destination lies in the sequence's blocks, inside the layer.
    unsafe {
        ffi::glimpse_shim_compact(
            layer.keys.as_mut_ptr(),
            layer.values.as_mut_ptr(),
            block_table.as_ptr(),
            kept.as_ptr(),
            int(count),
            int(num_kv_heads),
            int(head_dim),
            int(block_size),
            threads,
        );
    }
}
