// Compaction after eviction, out of place: for each KV head `h` of one layer, the kept entries
// `kept[h][0..count]` (ascending) of one sequence move to its entries `0..count`, keys and values
// alike, in the device KV layout `[block][kv_head][slot][head_dim]` (see cache_write.cu).
//
// Two launches, because a parallel in-place move races: destination `i` can be the source of a
// later kept entry (`kept[h][j] == i` for some `j > i`), and blocks run in any order. The CPU
// backend moves in place only because it goes in ascending order, one entry at a time.
// `glimpse_compact_gather` copies the kept entries to a scratch buffer `[kv_head][count]
// [head_dim]`, `glimpse_compact_scatter` writes the scratch to the leading entries. Grid
// `(count, num_kv_heads)`; threads stride over `head_dim`.
#include "glimpse_cuda.cuh"

// Offset of the first element of `entry` of `head`, through the sequence's block table.
static __device__ __forceinline__ long long glimpse_entry_offset(const int *block_table,
                                                                 int entry, int head,
                                                                 int num_kv_heads,
                                                                 int head_dim, int block_size) {
    const long long block = block_table[entry / block_size];
    return ((block * num_kv_heads + head) * block_size + entry % block_size) * head_dim;
}

GLIMPSE_KERNEL void glimpse_compact_gather(const glimpse_bf16 *key_cache,
                                           const glimpse_bf16 *value_cache,
                                           const int *block_table, const int *kept,
                                           glimpse_bf16 *key_scratch,
                                           glimpse_bf16 *value_scratch, int head_dim,
                                           int block_size) {
    const int count = gridDim.x;
    const int head = blockIdx.y;
    const int entry = kept[head * count + blockIdx.x];
    const long long from =
        glimpse_entry_offset(block_table, entry, head, gridDim.y, head_dim, block_size);
    const long long to = ((long long)head * count + blockIdx.x) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        key_scratch[to + d] = key_cache[from + d];
        value_scratch[to + d] = value_cache[from + d];
    }
}

GLIMPSE_KERNEL void glimpse_compact_scatter(glimpse_bf16 *key_cache, glimpse_bf16 *value_cache,
                                            const int *block_table,
                                            const glimpse_bf16 *key_scratch,
                                            const glimpse_bf16 *value_scratch, int head_dim,
                                            int block_size) {
    const int count = gridDim.x;
    const int head = blockIdx.y;
    const long long from = ((long long)head * count + blockIdx.x) * head_dim;
    const long long to =
        glimpse_entry_offset(block_table, blockIdx.x, head, gridDim.y, head_dim, block_size);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        key_cache[to + d] = key_scratch[from + d];
        value_cache[to + d] = value_scratch[from + d];
    }
}
