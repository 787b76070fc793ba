// C ABI launcher of paged varlen prefill attention under the host shim
// (`prefill_attention_off_by_one.cpp` builds it again with a planted causal off-by-one, under
// another name).
#include "shim.h"

#include "prefill_attention.cu"

#ifndef GLIMPSE_SHIM_PREFILL_ATTENTION
#define GLIMPSE_SHIM_PREFILL_ATTENTION glimpse_shim_prefill_attention
#endif

extern "C" void GLIMPSE_SHIM_PREFILL_ATTENTION(
    const float *q, const float *side_keys, const float *side_values, int row_stride,
    const glimpse_bf16 *key_cache, const glimpse_bf16 *value_cache, const int *block_tables,
    int max_blocks_per_seq, const int *cu_seqlens, const int *context_lens,
    const int *num_lookahead, const int *skip_starts, const int *skip_ends, float *out,
    int num_seqs, int num_heads, int num_kv_heads, int head_dim, int block_size,
    int rows_per_block, float scale, unsigned int threads) {
    int longest = 0;
    for (int s = 0; s < num_seqs; ++s) {
        longest = max(longest, cu_seqlens[s + 1] - cu_seqlens[s]);
    }
    const unsigned int row_tiles =
        static_cast<unsigned int>(max(1, (longest + rows_per_block - 1) / rows_per_block));
    const std::size_t heads = static_cast<std::size_t>(rows_per_block) * (num_heads / num_kv_heads);
    const std::size_t shared_bytes = 12 * threads + 8 * static_cast<std::size_t>(rows_per_block) +
                                     4 * (2 * heads * head_dim + 2 * heads * threads + 3 * heads);
    glimpse_shim::launch(
        dim3{row_tiles, static_cast<unsigned int>(num_seqs),
             static_cast<unsigned int>(num_kv_heads)},
        dim3{threads}, shared_bytes, [=] {
            glimpse_prefill_attention(q, side_keys, side_values, row_stride, key_cache,
                                      value_cache, block_tables, max_blocks_per_seq, cu_seqlens,
                                      context_lens, num_lookahead, skip_starts, skip_ends, out,
                                      num_heads, head_dim, block_size, rows_per_block, scale);
        });
}
