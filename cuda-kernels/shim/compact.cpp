// C ABI launcher of compaction under the host shim: the gather and the scatter launch, with the
// scratch buffer between them.
#include "shim.h"

#include "compact.cu"

extern "C" void glimpse_shim_compact(glimpse_bf16 *key_cache, glimpse_bf16 *value_cache,
                                     const int *block_table, const int *kept, int count,
                                     int num_kv_heads, int head_dim, int block_size,
                                     unsigned int threads) {
    const std::size_t scratch_len = static_cast<std::size_t>(count) * num_kv_heads * head_dim;
    std::vector<glimpse_bf16> key_scratch(scratch_len), value_scratch(scratch_len);
    const dim3 grid{static_cast<unsigned int>(count), static_cast<unsigned int>(num_kv_heads)};
    glimpse_bf16 *keys = key_scratch.data();
    glimpse_bf16 *values = value_scratch.data();
    glimpse_shim::launch(grid, dim3{threads}, 0, [=] {
        glimpse_compact_gather(key_cache, value_cache, block_table, kept, keys, values, head_dim,
                               block_size);
    });
    glimpse_shim::launch(grid, dim3{threads}, 0, [=] {
        glimpse_compact_scatter(key_cache, value_cache, block_table, keys, values, head_dim,
                                block_size);
    });
}
