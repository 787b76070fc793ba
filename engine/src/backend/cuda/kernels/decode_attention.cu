// Paged decode attention: one query row per sequence attends to its cache entries in the device
// KV layout `[block][kv_head][slot][head_dim]` bf16 (see cache_write.cu), through its block
// table (a padded `[num_seqs, max_blocks_per_seq]` array), with an online softmax in f32.
//
// Split over long contexts, in two launches. `glimpse_decode_attention` has grid `(num_seqs,
// num_kv_heads, partitions)`: block `(s, k, p)` folds the attended entries
// `p · partition_size ..` of its partition (so a long context at a small batch still fills the
// GPU) and writes, per query head, its max score, its sum of `exp(score − max)` and its
// unnormalised output to `[num_seqs, num_heads, partitions]` scratch arrays; a partition past
// the context writes max −∞ and zeros. `glimpse_decode_attention_reduce`, grid `(num_seqs,
// num_heads)` with threads over `head_dim`, combines the partitions in index order.
//
// A block serves the `group = num_heads / num_kv_heads` query heads of one KV head, so each key
// and value row it loads serves the whole GQA group.
// `blockDim.x` (a power of two) is the tile: thread `t` scores entry `t` of a tile for every head
// of the group, fixed-order shared-memory trees give the tile's max and sum per head, and thread
// `t` owns the output pairs `(head, dim)` `t, t + blockDim.x, …`, folding the tile's values in
// entry order. The order of every sum is fixed by the shapes, never by scheduling.
//
// A sequence attends to entries `0..context_len` except `skip_start..skip_end` (the unused tail
// of a compacted prefix in a layer that kept fewer entries, PyramidKV; empty otherwise). A
// sequence that attends to nothing gets zeros from the reduce.
//
// Dynamic shared memory: `8·blockDim.x + 4·(2·group·head_dim + 2·group·blockDim.x + 3·group)`
// bytes.
#include "glimpse_cuda.cuh"

GLIMPSE_KERNEL void glimpse_decode_attention(
    const float *q, const glimpse_bf16 *key_cache, const glimpse_bf16 *value_cache,
    const int *block_tables, int max_blocks_per_seq, const int *context_lens,
    const int *skip_starts, const int *skip_ends, int partition_size, float *partial_max,
    float *partial_sum, float *partial_out, int num_heads, int head_dim, int block_size,
    float scale) {
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
    const int begin = blockIdx.z * partition_size;
    const int end = min(context - (skip_end - skip_start), begin + partition_size);
    const int *table = block_tables + (long long)blockIdx.x * max_blocks_per_seq;
    __syncthreads();

    for (int first = begin; first < end; first += tile) {
        const int count = min(tile, end - first);
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

    const long long head_row = ((long long)blockIdx.x * num_heads + (long long)kv_head * group) *
                                   gridDim.z +
                               blockIdx.z;
    for (int h = tid; h < group; h += tile) {
        partial_max[head_row + (long long)h * gridDim.z] = running_max[h];
        partial_sum[head_row + (long long)h * gridDim.z] = running_sum[h];
    }
    for (int at = tid; at < pairs; at += tile) {
        partial_out[(head_row + (long long)(at / head_dim) * gridDim.z) * head_dim +
                    at % head_dim] = acc[at];
    }
}

GLIMPSE_KERNEL void glimpse_decode_attention_reduce(const float *partial_max,
                                                    const float *partial_sum,
                                                    const float *partial_out, float *out,
                                                    int partitions, int head_dim) {
    const long long head_row = (long long)blockIdx.x * gridDim.y + blockIdx.y;
    const float *maxes = partial_max + head_row * partitions;
    const float *sums = partial_sum + head_row * partitions;
    float max_score = glimpse_neg_inf();
    for (int p = 0; p < partitions; ++p) {
        max_score = fmaxf(max_score, maxes[p]);
    }
    float total = 0.0f;
    for (int p = 0; p < partitions; ++p) {
        if (sums[p] > 0.0f) {
            total += sums[p] * expf(maxes[p] - max_score);
        }
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float sum = 0.0f;
        for (int p = 0; p < partitions; ++p) {
            if (sums[p] > 0.0f) {
                sum += partial_out[(head_row * partitions + p) * head_dim + d] *
                       expf(maxes[p] - max_score);
            }
        }
        out[head_row * head_dim + d] = total > 0.0f ? sum / total : 0.0f;
    }
}
