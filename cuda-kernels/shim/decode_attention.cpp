// C ABI launcher of the paged decode attention kernel under the host shim.
#include "shim.h"

#include "decode_attention.cu"

extern "C" void glimpse_shim_decode_attention(
    const float *q, const glimpse_bf16 *key_cache, const glimpse_bf16 *value_cache,
    const int *block_tables, int max_blocks_per_seq, const int *context_lens,
    const int *skip_starts, const int *skip_ends, float *out, int num_seqs, int num_heads,
    int num_kv_heads, int head_dim, int block_size, float scale, unsigned int threads) {
    const std::size_t group = static_cast<std::size_t>(num_heads / num_kv_heads);
    const std::size_t shared_bytes =
        8 * threads + 4 * (2 * group * head_dim + 2 * group * threads + 3 * group);
    glimpse_shim::launch(
        dim3{static_cast<unsigned int>(num_seqs), static_cast<unsigned int>(num_kv_heads)},
        dim3{threads}, shared_bytes, [=] {
            glimpse_decode_attention(q, key_cache, value_cache, block_tables, max_blocks_per_seq,
                                     context_lens, skip_starts, skip_ends, out, num_heads,
                                     head_dim, block_size, scale);
        });
}
