// C ABI launcher of the cache-write kernel under the host shim.
#include "shim.h"

#include "cache_write.cu"

extern "C" void glimpse_shim_cache_write(const float *qkv, const int *slot_mapping,
                                         glimpse_bf16 *key_cache, glimpse_bf16 *value_cache,
                                         int rows, int row_stride, int k_offset, int v_offset,
                                         int num_kv_heads, int head_dim, int block_size,
                                         unsigned int threads) {
    glimpse_shim::launch(dim3{static_cast<unsigned int>(rows)}, dim3{threads}, 0, [=] {
        glimpse_cache_write(qkv, slot_mapping, key_cache, value_cache, row_stride, k_offset,
                            v_offset, num_kv_heads, head_dim, block_size);
    });
}
