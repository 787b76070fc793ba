//! The C ABI launchers of `shim/*.cpp`, one per kernel build.

use std::os::raw::c_int;

/// Declares the launchers of the RMSNorm builds (`rms_norm.cpp` and `rms_norm_without_sync.cpp`),
/// one source under two names, with their one signature.
macro_rules! rms_norm_launchers {
    ($($name:ident),+) => {
        unsafe extern "C" {
            $(
                pub fn $name(
                    x: *const f32,
                    weight: *const f32,
                    out: *mut f32,
                    rows: c_int,
                    pieces: c_int,
                    row_stride: c_int,
                    width: c_int,
                    eps: f32,
                    threads: u32,
                );
            )+
        }
    };
}

rms_norm_launchers!(glimpse_shim_rms_norm, glimpse_shim_rms_norm_without_sync);

/// Declares the launchers of the prefill attention builds (`prefill_attention.cpp` and
/// `prefill_attention_off_by_one.cpp`), one source under two names, with their one signature.
macro_rules! prefill_attention_launchers {
    ($($name:ident),+) => {
        unsafe extern "C" {
            $(
                pub fn $name(
                    q: *const f32,
                    side_keys: *const f32,
                    side_values: *const f32,
                    row_stride: c_int,
                    key_cache: *const u16,
                    value_cache: *const u16,
                    block_tables: *const c_int,
                    max_blocks_per_seq: c_int,
                    cu_seqlens: *const c_int,
                    context_lens: *const c_int,
                    num_lookahead: *const c_int,
                    skip_starts: *const c_int,
                    skip_ends: *const c_int,
                    out: *mut f32,
                    num_seqs: c_int,
                    num_heads: c_int,
                    num_kv_heads: c_int,
                    head_dim: c_int,
                    block_size: c_int,
                    rows_per_block: c_int,
                    scale: f32,
                    threads: u32,
                );
            )+
        }
    };
}

prefill_attention_launchers!(
    glimpse_shim_prefill_attention,
    glimpse_shim_prefill_attention_off_by_one
);

unsafe extern "C" {
    pub fn glimpse_shim_embedding_gather(
        table: *const u16,
        ids: *const c_int,
        out: *mut f32,
        rows: c_int,
        hidden: c_int,
        threads: u32,
    );
    pub fn glimpse_shim_rope(
        x: *mut f32,
        positions: *const c_int,
        cos_table: *const f32,
        sin_table: *const f32,
        rows: c_int,
        row_stride: c_int,
        num_heads: c_int,
        head_dim: c_int,
        threads: u32,
    );
    pub fn glimpse_shim_silu_mul(
        gate_up: *const f32,
        out: *mut f32,
        rows: c_int,
        intermediate: c_int,
        blocks: u32,
        threads: u32,
    );
    pub fn glimpse_shim_round_to_bf16(
        x: *const f32,
        out: *mut u16,
        count: i64,
        blocks: u32,
        threads: u32,
    );
    pub fn glimpse_shim_cache_write(
        qkv: *const f32,
        slot_mapping: *const c_int,
        key_cache: *mut u16,
        value_cache: *mut u16,
        rows: c_int,
        row_stride: c_int,
        k_offset: c_int,
        v_offset: c_int,
        num_kv_heads: c_int,
        head_dim: c_int,
        block_size: c_int,
        threads: u32,
    );
    pub fn glimpse_shim_decode_attention(
        q: *const f32,
        key_cache: *const u16,
        value_cache: *const u16,
        block_tables: *const c_int,
        max_blocks_per_seq: c_int,
        context_lens: *const c_int,
        skip_starts: *const c_int,
        skip_ends: *const c_int,
        out: *mut f32,
        num_seqs: c_int,
        num_heads: c_int,
        num_kv_heads: c_int,
        head_dim: c_int,
        block_size: c_int,
        scale: f32,
        partition_size: c_int,
        threads: u32,
    );
    pub fn glimpse_shim_compact(
        key_cache: *mut u16,
        value_cache: *mut u16,
        block_table: *const c_int,
        kept: *const c_int,
        count: c_int,
        num_kv_heads: c_int,
        head_dim: c_int,
        block_size: c_int,
        threads: u32,
    );
    pub fn glimpse_shim_eviction_scores(
        queries: *const f32,
        extra_keys: *const f32,
        row_stride: c_int,
        n_q: c_int,
        key_cache: *const u16,
        block_table: *const c_int,
        prompt_len: c_int,
        scored: c_int,
        suffix: c_int,
        with_extra: c_int,
        mean: c_int,
        pool: c_int,
        kernel: c_int,
        scores: *mut f32,
        num_heads: c_int,
        num_kv_heads: c_int,
        head_dim: c_int,
        block_size: c_int,
        scale: f32,
        threads: u32,
    );
    pub fn glimpse_shim_score_pool(
        reduced: *const f32,
        scores: *mut f32,
        scored: c_int,
        num_heads: c_int,
        num_kv_heads: c_int,
        pool: c_int,
        kernel: c_int,
        threads: u32,
    );
    pub fn glimpse_shim_top_k(
        scores: *const f32,
        scored: c_int,
        k: c_int,
        window: c_int,
        kept: *mut c_int,
        num_kv_heads: c_int,
        threads: u32,
    );
}
