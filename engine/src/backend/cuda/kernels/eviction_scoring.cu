// Eviction scoring of one sequence's layer: the scoring queries' f32 softmax over the prompt keys,
// reduced over the queries, pooled, and averaged over each GQA group, as the CPU's
// `eviction::score_prompt` computes it (docs/design.md §4).
//
// The `n_q` scoring queries are rows `row_stride` apart (the RoPE'd fused qkv rows). With `suffix`
// they are the last `n_q` prompt rows and query `i` sees prompt keys `0..prompt_len − n_q + i + 1`
// (SnapKV, PyramidKV); otherwise they sit after the prompt and see every prompt key, plus, with
// `with_extra`, the keys of query rows `0..=i` (`extra_keys`, the lookahead rows' own keys, same
// rows): these enter the softmax denominator and are never scored (LookaheadKV). The prompt keys
// are the sequence's cache entries `0..prompt_len` in the device KV layout through its block table.
// Only the leading `scored` entries get a score.
//
// Three launches, so no `[heads, n_q, prompt_len]` probability matrix is stored:
// 1. `glimpse_score_softmax_stats`, grid `(n_q, num_heads)` × a power-of-two block: each thread
//    folds its strided keys into a running max and sum, a fixed-order shared-memory tree merges
//    them; writes the row's max and `1 / sum` to `[num_heads][n_q]` arrays. Dynamic shared memory:
//    `4·(head_dim + 2·blockDim.x)` bytes.
// 2. `glimpse_score_reduce`, grid `(⌈scored / blockDim.x⌉, num_heads)`: thread per entry, summing
//    `exp(score − max) · (1 / sum)` over the queries that see the entry in query order (then
//    `· 1/n_q` for a mean) into `reduced` `[num_heads][scored]`. Dynamic shared memory:
//    `4·n_q·head_dim` bytes.
// 3. `glimpse_score_pool`, grid `(⌈scored / blockDim.x⌉, num_kv_heads)`: thread per entry, the
//    pooled value of each query head of the group (PyTorch's `max_pool1d` / `avg_pool1d` with
//    stride 1 and padding `kernel / 2`, padding counted in the average) summed in head order, then
//    `· 1/group`, into `scores` `[num_kv_heads][scored]`: the CPU's order exactly.
// The scaled dot products and the exponentials differ from the CPU's in their last bits (another
// summation order; `expf` against the CPU's polynomial), so the scores agree within a tolerance.
#include "glimpse_cuda.cuh"

// How `glimpse_score_pool` pools a reduced row.
#define GLIMPSE_POOL_NONE 0
#define GLIMPSE_POOL_MAX 1
#define GLIMPSE_POOL_AVG 2

// Prompt keys query `i` of `n_q` sees.
static __device__ __forceinline__ int glimpse_visible_prompt(int prompt_len, int n_q, int i,
                                                             int suffix) {
    return suffix ? prompt_len - n_q + i + 1 : prompt_len;
}

// `scale · q·k` for the `head_dim` floats of `q` and the bf16 (`cache`) or f32 (`extra`) key.
static __device__ __forceinline__ float glimpse_scaled_dot(const float *q, const glimpse_bf16 *cache,
                                                           const float *extra, int head_dim,
                                                           float scale) {
    float dot = 0.0f;
    for (int d = 0; d < head_dim; ++d) {
        dot += q[d] * (cache != nullptr ? glimpse_bf16_to_f32(cache[d]) : extra[d]);
    }
    return dot * scale;
}

// First element of prompt entry `entry` of `kv_head`, through the block table.
static __device__ __forceinline__ long long glimpse_score_key_offset(const int *block_table,
                                                                     int entry, int kv_head,
                                                                     int num_kv_heads,
                                                                     int head_dim,
                                                                     int block_size) {
    const long long block = block_table[entry / block_size];
    return ((block * num_kv_heads + kv_head) * block_size + entry % block_size) * head_dim;
}

GLIMPSE_KERNEL void glimpse_score_softmax_stats(
    const float *queries, const float *extra_keys, int row_stride, const glimpse_bf16 *key_cache,
    const int *block_table, int prompt_len, int suffix, int with_extra, float *row_max,
    float *row_inv_sum, int num_kv_heads, int head_dim, int block_size, float scale) {
    const int n_q = gridDim.x;
    const int i = blockIdx.x;
    const int head = blockIdx.y;
    const int num_heads = gridDim.y;
    const int kv_head = head / (num_heads / num_kv_heads);
    const int tid = threadIdx.x;
    const int tile = blockDim.x;
    GLIMPSE_DYNAMIC_SHARED(float, shared);
    float *q = shared;            // [head_dim]
    float *maxes = q + head_dim;  // [tile]
    float *sums = maxes + tile;   // [tile]
    for (int d = tid; d < head_dim; d += tile) {
        q[d] = queries[(long long)i * row_stride + (long long)head * head_dim + d];
    }
    __syncthreads();
    const int visible = glimpse_visible_prompt(prompt_len, n_q, i, suffix);
    const int total = visible + (with_extra ? i + 1 : 0);
    float max_score = glimpse_neg_inf();
    float sum = 0.0f;
    for (int key = tid; key < total; key += tile) {
        float score;
        if (key < visible) {
            const long long at = glimpse_score_key_offset(block_table, key, kv_head,
                                                          num_kv_heads, head_dim, block_size);
            score = glimpse_scaled_dot(q, key_cache + at, nullptr, head_dim, scale);
        } else {
            const long long row = key - visible;
            score = glimpse_scaled_dot(q, nullptr,
                                       extra_keys + row * row_stride + (long long)kv_head * head_dim,
                                       head_dim, scale);
        }
        const float next = fmaxf(max_score, score);
        sum = sum * expf(max_score - next) + expf(score - next);
        max_score = next;
    }
    maxes[tid] = max_score;
    sums[tid] = sum;
    __syncthreads();
    for (int stride = tile / 2; stride > 0; stride /= 2) {
        if (tid < stride && maxes[tid + stride] != glimpse_neg_inf()) {
            const float a = maxes[tid];
            const float b = maxes[tid + stride];
            const float next = fmaxf(a, b);
            sums[tid] = sums[tid] * expf(a - next) + sums[tid + stride] * expf(b - next);
            maxes[tid] = next;
        }
        __syncthreads();
    }
    if (tid == 0) {
        row_max[head * n_q + i] = maxes[0];
        row_inv_sum[head * n_q + i] = 1.0f / sums[0];
    }
}

GLIMPSE_KERNEL void glimpse_score_reduce(const float *queries, int row_stride, int n_q,
                                         const glimpse_bf16 *key_cache, const int *block_table,
                                         int prompt_len, int scored, int suffix, int mean,
                                         const float *row_max, const float *row_inv_sum,
                                         float *reduced, int num_kv_heads, int head_dim,
                                         int block_size, float scale) {
    const int head = blockIdx.y;
    const int num_heads = gridDim.y;
    const int kv_head = head / (num_heads / num_kv_heads);
    GLIMPSE_DYNAMIC_SHARED(float, q);  // [n_q][head_dim]
    for (int at = threadIdx.x; at < n_q * head_dim; at += blockDim.x) {
        q[at] = queries[(long long)(at / head_dim) * row_stride + (long long)head * head_dim +
                        at % head_dim];
    }
    __syncthreads();
    const int entry = blockIdx.x * blockDim.x + threadIdx.x;
    if (entry >= scored) {
        return;
    }
    const long long at = glimpse_score_key_offset(block_table, entry, kv_head, num_kv_heads,
                                                  head_dim, block_size);
    float sum = 0.0f;
    for (int i = 0; i < n_q; ++i) {
        if (entry < glimpse_visible_prompt(prompt_len, n_q, i, suffix)) {
            const float score =
                glimpse_scaled_dot(q + i * head_dim, key_cache + at, nullptr, head_dim, scale);
            sum += expf(score - row_max[head * n_q + i]) * row_inv_sum[head * n_q + i];
        }
    }
    if (mean) {
        sum *= 1.0f / (float)n_q;
    }
    reduced[(long long)head * scored + entry] = sum;
}

GLIMPSE_KERNEL void glimpse_score_pool(const float *reduced, float *scores, int scored,
                                       int num_heads, int pool, int kernel) {
    const int entry = blockIdx.x * blockDim.x + threadIdx.x;
    if (entry >= scored) {
        return;
    }
    const int kv_head = blockIdx.y;
    const int group = num_heads / gridDim.y;
    const int half = kernel / 2;
    const int lo = max(0, entry - half);
    const int hi = min(scored, entry + half + 1);
    float out = 0.0f;
    for (int g = 0; g < group; ++g) {
        const float *row = reduced + (long long)(kv_head * group + g) * scored;
        float pooled;
        if (pool == GLIMPSE_POOL_MAX) {
            pooled = glimpse_neg_inf();
            for (int e = lo; e < hi; ++e) {
                pooled = fmaxf(pooled, row[e]);
            }
        } else if (pool == GLIMPSE_POOL_AVG) {
            float sum = 0.0f;
            for (int e = lo; e < hi; ++e) {
                sum += row[e];
            }
            pooled = sum / (float)kernel;
        } else {
            pooled = row[entry];
        }
        out += pooled;
    }
    scores[(long long)kv_head * scored + entry] = out * (1.0f / (float)group);
}
