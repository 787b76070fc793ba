// Cache write by slot mapping: each row's K and V (f32, inside the fused qkv buffer, `row_stride`
// floats apart, at `k_offset` and `v_offset`) rounded to bf16 into one layer of the pool.
//
// Device KV layout, one allocation for keys and one for values:
// `[layer][block][kv_head][slot][head_dim]` bf16. The `head_dim` values of one entry are
// contiguous, so threads reading one key or value row load consecutive addresses (coalesced) and
// a block's piece of one head is one contiguous `block_size · head_dim` run. (The CPU pool
// transposes keys for SIMD broadcasts; a GPU thread group reads a whole row instead.)
//
// `slot_mapping[r]` is the row's pool entry, `block · block_size + slot`, or −1 for a row that
// has no cache entry (a lookahead row). One block per row; threads stride over
// (kv_head, dimension).
#include "glimpse_cuda.cuh"

GLIMPSE_KERNEL void glimpse_cache_write(const float *qkv, const int *slot_mapping,
                                        glimpse_bf16 *key_cache, glimpse_bf16 *value_cache,
                                        int row_stride, int k_offset, int v_offset,
                                        int num_kv_heads, int head_dim, int block_size) {
    const int entry = slot_mapping[blockIdx.x];
    if (entry < 0) {
        return;
    }
    const long long block = entry / block_size;
    const long long slot = entry % block_size;
    const float *row = qkv + (long long)blockIdx.x * row_stride;
    for (int at = threadIdx.x; at < num_kv_heads * head_dim; at += blockDim.x) {
        const int head = at / head_dim;
        const int d = at % head_dim;
        const long long to =
            ((block * num_kv_heads + head) * block_size + slot) * head_dim + d;
        key_cache[to] = glimpse_f32_to_bf16(row[k_offset + at]);
        value_cache[to] = glimpse_f32_to_bf16(row[v_offset + at]);
    }
}
