// Paged decode attention: one query row per sequence attends to its cache entries in the device
// KV layout `[block][kv_head][slot][head_dim]` bf16 (see cache_write.cu), through its block
// table (a padded `[num_seqs, max_blocks_per_seq]` array), with an online softmax in f32.
//
// Grid `(num_seqs, num_kv_heads)`: a block serves the `group = num_heads / num_kv_heads` query
// heads of one KV head, so each key and value row it loads serves the whole GQA group.
// `blockDim.x` (a power of two) is the tile: thread `t` scores entry `t` of a tile for every head
// of the group, fixed-order shared-memory trees give the tile's max and sum per head, and thread
// `t` owns the output pairs `(head, dim)` `t, t + blockDim.x, …`, folding the tile's values in
// entry order. The order of every sum is fixed by the shapes, never by scheduling.
//
// A sequence attends to entries `0..context_len` except `skip_start..skip_end` (the unused tail
// of a compacted prefix in a layer that kept fewer entries, PyramidKV; empty otherwise). A
// sequence that attends to nothing gets zeros.
//
// Dynamic shared memory: `8·blockDim.x + 4·(2·group·head_dim + 2·group·blockDim.x + 3·group)`
// bytes.
#include "glimpse_cuda.cuh"

GLIMPSE_KERNEL void glimpse_decode_attention(
    const float *q, const glimpse_bf16 *key_cache, const glimpse_bf16 *value_cache,
    const int *block_tables, int max_blocks_per_seq, const int *context_lens,
    const int *skip_starts, const int *skip_ends, float *out, int num_heads, int head_dim,
    int block_size, float scale) {
    const int num_kv_heads = gridDim.y;
    const int kv_head = blockIdx.y;
    const int group = num_heads / num_kv_heads;
    const int tile = blockDim.x;
    const int tid = threadIdx.x;
    const int pairs = group * head_dim;

    GLIMPSE_DYNAMIC_SHARED(long long, shared);
    long long *offsets = shared;                              // [tile] entry's first element
    float *q_group = (float *)(offsets + tile);               // [group][head_dim]
    float *acc = q_group + pairs;                             // [group][head_dim]
    float *scores = acc + pairs;                              // [group][tile]
    float *scratch = scores + group * tile;                   // [group][tile]
    float *running_max = scratch + group * tile;              // [group]
    float *running_sum = running_max + group;                 // [group]
    float *next_max = running_sum + group;                    // [group]

    const long long row = (long long)blockIdx.x * num_heads * head_dim + (long long)kv_head * pairs;
    for (int at = tid; at < pairs; at += tile) {
        q_group[at] = q[row + at];
        acc[at] = 0.0f;
    }
    for (int h = tid; h < group; h += tile) {
        running_max[h] = glimpse_neg_inf();
        running_sum[h] = 0.0f;
    }

    const int context = context_lens[blockIdx.x];
    const int skip_start = min(skip_starts[blockIdx.x], context);
    const int skip_end = max(skip_start, min(skip_ends[blockIdx.x], context));
    const int attended = context - (skip_end - skip_start);
    const int *table = block_tables + (long long)blockIdx.x * max_blocks_per_seq;
    __syncthreads();

    for (int first = 0; first < attended; first += tile) {
        const int count = min(tile, attended - first);
        // 1. This thread's entry: where it lies, and its score for every head of the group.
        if (tid < count) {
            int entry = first + tid;
            if (entry >= skip_start) {
                entry += skip_end - skip_start;
            }
            const long long block = table[entry / block_size];
            const long long offset =
                ((block * num_kv_heads + kv_head) * block_size + entry % block_size) * head_dim;
            offsets[tid] = offset;
            for (int h = 0; h < group; ++h) {
                float dot = 0.0f;
                for (int d = 0; d < head_dim; ++d) {
                    dot += q_group[h * head_dim + d] * glimpse_bf16_to_f32(key_cache[offset + d]);
                }
                scores[h * tile + tid] = dot * scale;
                scratch[h * tile + tid] = dot * scale;
            }
        } else {
            for (int h = 0; h < group; ++h) {
                scores[h * tile + tid] = glimpse_neg_inf();
                scratch[h * tile + tid] = glimpse_neg_inf();
            }
        }
        __syncthreads();
        // 2. The tile's max per head, and the new running max.
        for (int stride = tile / 2; stride > 0; stride /= 2) {
            if (tid < stride) {
                for (int h = 0; h < group; ++h) {
                    scratch[h * tile + tid] =
                        fmaxf(scratch[h * tile + tid], scratch[h * tile + tid + stride]);
                }
            }
            __syncthreads();
        }
        for (int h = tid; h < group; h += tile) {
            next_max[h] = fmaxf(running_max[h], scratch[h * tile]);
        }
        __syncthreads();
        // 3. Probabilities against the new max, and the tile's sum of them per head.
        for (int h = 0; h < group; ++h) {
            const float p = tid < count ? expf(scores[h * tile + tid] - next_max[h]) : 0.0f;
            scores[h * tile + tid] = p;
            scratch[h * tile + tid] = p;
        }
        __syncthreads();
        for (int stride = tile / 2; stride > 0; stride /= 2) {
            if (tid < stride) {
                for (int h = 0; h < group; ++h) {
                    scratch[h * tile + tid] += scratch[h * tile + tid + stride];
                }
            }
            __syncthreads();
        }
        // 4. Each owned (head, dim): rescale to the new max, fold the tile's values in order.
        for (int at = tid; at < pairs; at += tile) {
            const int h = at / head_dim;
            const int d = at % head_dim;
            float sum = acc[at] * expf(running_max[h] - next_max[h]);
            for (int e = 0; e < count; ++e) {
                sum += scores[h * tile + e] * glimpse_bf16_to_f32(value_cache[offsets[e] + d]);
            }
            acc[at] = sum;
        }
        __syncthreads();
        // 5. The running sum and max move to this tile.
        for (int h = tid; h < group; h += tile) {
            running_sum[h] = running_sum[h] * expf(running_max[h] - next_max[h]) + scratch[h * tile];
            running_max[h] = next_max[h];
        }
        __syncthreads();
    }

    for (int at = tid; at < pairs; at += tile) {
        const float total = running_sum[at / head_dim];
        out[row + at] = total > 0.0f ? acc[at] / total : 0.0f;
    }
}
