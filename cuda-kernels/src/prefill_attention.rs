//! Paged varlen prefill attention (`prefill_attention.cu`) through the host shim.

use crate::{KvLayer, KvLayout, QkvRows, check_block_tables, ffi, int};

/// The sequences of one prefill launch: sequence `s` owns the flat rows
/// `cu_seqlens[s]..cu_seqlens[s + 1]`, its new prompt rows then its `num_lookahead[s]` lookahead
/// rows; its cache holds `context_lens[s]` entries after this pass (cached prefix and prompt rows),
/// through its row of `block_tables` (padded to `max_blocks_per_seq`), and every row skips its
/// entries `skip_starts[s]..skip_ends[s]` (PyramidKV's unused tail of a compacted layer; `0..0` for
/// none).
pub struct PrefillSequences<'a> {
    pub cu_seqlens: &'a [i32],
    pub block_tables: &'a [i32],
    pub max_blocks_per_seq: usize,
    pub context_lens: &'a [i32],
    pub num_lookahead: &'a [i32],
    pub skip_starts: &'a [i32],
    pub skip_ends: &'a [i32],
}

/// How a prefill attention launch runs.
#[derive(Debug, Clone, Copy)]
pub struct PrefillParams {
    pub num_heads: usize,
    pub scale: f32,
    /// Query rows of one sequence per block; with the GQA group they make the block's query heads.
    pub rows_per_block: usize,
    /// Threads per block, a power of two: the tile of keys scored at once.
    pub threads: u32,
}

/// Which build of the prefill attention kernel to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillBuild {
    /// The kernel as shipped.
    Shipped,
    /// The kernel with a causal mask one entry too wide (`GLIMPSE_TEST_CAUSAL_OFF_BY_ONE`), for
    /// the test that shows the bug is caught.
    CausalOffByOne,
}

/// Paged prefill attention of the rows of `qkv` (queries at the start of each row, the lookahead
/// rows' side keys and values where `rows` says) over one layer of the device pool, into `out`
/// (`[rows, num_heads · head_dim]`).
pub fn prefill_attention(
    qkv: &[f32],
    rows: QkvRows,
    layer: &KvLayer<'_>,
    sequences: &PrefillSequences<'_>,
    params: PrefillParams,
    build: PrefillBuild,
    out: &mut [f32],
) {
    let PrefillParams {
        num_heads,
        scale,
        rows_per_block,
        threads,
    } = params;
    let KvLayout {
        num_kv_heads,
        head_dim,
        block_size,
    } = layer.layout;
    let kv_width = num_kv_heads * head_dim;
    assert!(threads.is_power_of_two());
    assert!(rows_per_block > 0);
    assert_eq!(num_heads % num_kv_heads, 0);
    assert!(num_heads * head_dim <= rows.k_offset.min(rows.v_offset));
    assert!(rows.k_offset.max(rows.v_offset) + kv_width <= rows.row_stride);
    let num_seqs = sequences.context_lens.len();
    for column in [
        sequences.num_lookahead,
        sequences.skip_starts,
        sequences.skip_ends,
    ] {
        assert_eq!(column.len(), num_seqs);
    }
    assert_eq!(sequences.cu_seqlens.len(), num_seqs + 1);
    assert_eq!(sequences.cu_seqlens[0], 0);
    let total_rows = sequences.cu_seqlens[num_seqs];
    assert_eq!(
        qkv.len(),
        usize::try_from(total_rows).unwrap() * rows.row_stride
    );
    assert_eq!(
        out.len(),
        qkv.len() / rows.row_stride * num_heads * head_dim
    );
    for (s, bounds) in sequences.cu_seqlens.windows(2).enumerate() {
        let seq_rows = bounds[1] - bounds[0];
        let prompt_rows = seq_rows - sequences.num_lookahead[s];
        assert!(sequences.num_lookahead[s] >= 0 && prompt_rows >= 0);
        assert!(prompt_rows <= sequences.context_lens[s]);
    }
    check_block_tables(
        sequences.block_tables,
        sequences.max_blocks_per_seq,
        sequences.context_lens,
        layer,
    );
    let launch = match build {
        PrefillBuild::Shipped => ffi::glimpse_shim_prefill_attention,
        PrefillBuild::CausalOffByOne => ffi::glimpse_shim_prefill_attention_off_by_one,
    };
    // SAFETY: every row is inside `qkv` and `out`, every block a sequence's entries reach is
    // inside the layer.
    unsafe {
        launch(
            qkv.as_ptr(),
            qkv.as_ptr().add(rows.k_offset),
            qkv.as_ptr().add(rows.v_offset),
            int(rows.row_stride),
            layer.keys.as_ptr(),
            layer.values.as_ptr(),
            sequences.block_tables.as_ptr(),
            int(sequences.max_blocks_per_seq),
            sequences.cu_seqlens.as_ptr(),
            sequences.context_lens.as_ptr(),
            sequences.num_lookahead.as_ptr(),
            sequences.skip_starts.as_ptr(),
            sequences.skip_ends.as_ptr(),
            out.as_mut_ptr(),
            int(num_seqs),
            int(num_heads),
            int(num_kv_heads),
            int(head_dim),
            int(block_size),
            int(rows_per_block),
            scale,
            threads,
        );
    }
}
