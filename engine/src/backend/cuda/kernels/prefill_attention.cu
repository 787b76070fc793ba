// Paged varlen prefill attention: the query rows of several sequences, packed flat (sequence `s`
// owns rows `cu_seqlens[s]..cu_seqlens[s + 1]`), attend causally to their own cache entries in the
// device KV layout `[block][kv_head][slot][head_dim]` bf16 (see cache_write.cu) through their block
// tables (a padded `[num_seqs, max_blocks_per_seq]` array), with an online softmax in f32.
//
// A sequence's rows are its new prompt rows, then its `num_lookahead[s]` lookahead rows
// (LookaheadKV). After this pass the sequence's cache holds `context_lens[s]` entries: a cached
// prefix, then one entry per prompt row, so prompt row `i` attends entries
// `0..context − prompt_rows + i + 1`. Lookahead rows are never cached: their keys and values stay
// f32 in the rows' own `side_keys` / `side_values` (the fused qkv rows, `row_stride` apart, as the
// queries); lookahead row `j` attends every cache entry and the side K/V of lookahead rows `0..=j`,
// and no prompt row sees them. Every row skips the entries `skip_start..skip_end` of its sequence
// (the unused tail of a compacted prefix in a layer that kept fewer entries, PyramidKV; empty
// otherwise), as decode attention does. A row that attends nothing gets zeros.
//
// Grid `(row tiles, num_seqs, num_kv_heads)`: block `(t, s, k)` serves the `rows_per_block` rows
// `t · rows_per_block ..` of sequence `s` (the launch sizes the first dimension for the longest
// sequence; blocks past a sequence's rows return at once) for the `group = num_heads /
// num_kv_heads` query heads of KV head `k`: `m = rows_per_block · group` query heads that share each
// key and value load (flash-style tiles). The keys a block folds are its rows' attended cache
// entries in order (the widest row's; a shorter row masks the rest), then the side entries.
// `blockDim.x` (a power of two) is the key tile: thread `t` scores key `t` of a tile against all
// `m` query heads, fixed-order shared-memory trees give each head's tile max and sum, and thread `t`
// owns the output pairs `(head, dim)` `t, t + blockDim.x, …`, folding the tile's values in key
// order. The order of every sum is fixed by the shapes, never by scheduling.
//
// Dynamic shared memory: `12·blockDim.x + 8·rows_per_block + 4·(2·m·head_dim + 2·m·blockDim.x
// + 3·m)` bytes.
#include "glimpse_cuda.cuh"

// A test build defines GLIMPSE_TEST_CAUSAL_OFF_BY_ONE to show that the shim tests catch a causal
// mask one entry too wide (each prompt row also sees the next row's key).
#ifdef GLIMPSE_TEST_CAUSAL_OFF_BY_ONE
#define GLIMPSE_PREFILL_OWN_ENTRY 2
#else
#define GLIMPSE_PREFILL_OWN_ENTRY 1
#endif

// Cache entries among `0..entries` outside the skipped range `skip_start..skip_end`.
static __device__ __forceinline__ int glimpse_attended(int entries, int skip_start, int skip_end) {
    return entries - (min(skip_end, entries) - min(skip_start, entries));
}

GLIMPSE_KERNEL void glimpse_prefill_attention(
    const float *q, const float *side_keys, const float *side_values, int row_stride,
    const glimpse_bf16 *key_cache, const glimpse_bf16 *value_cache, const int *block_tables,
    int max_blocks_per_seq, const int *cu_seqlens, const int *context_lens,
    const int *num_lookahead, const int *skip_starts, const int *skip_ends, float *out,
    int num_heads, int head_dim, int block_size, int rows_per_block, float scale) {
    const int seq = blockIdx.y;
    const int seq_first_row = cu_seqlens[seq];
    const int seq_rows = cu_seqlens[seq + 1] - seq_first_row;
    const int tile_first_row = blockIdx.x * rows_per_block;
    if (tile_first_row >= seq_rows) {
        return;
    }
    const int num_kv_heads = gridDim.z;
    const int kv_head = blockIdx.z;
    const int group = num_heads / num_kv_heads;
    const int heads = rows_per_block * group;
    const int tile = blockDim.x;
    const int tid = threadIdx.x;
    const int pairs = heads * head_dim;

    GLIMPSE_DYNAMIC_SHARED(long long, shared);
    long long *offsets = shared;                              // [tile] key's first element
    int *is_side = (int *)(offsets + tile);                   // [tile] side key (not cache)
    int *cache_limit = is_side + tile;                        // [rows_per_block] attended entries
    int *side_limit = cache_limit + rows_per_block;           // [rows_per_block] side keys
    float *q_heads = (float *)(side_limit + rows_per_block);  // [heads][head_dim]
    float *acc = q_heads + pairs;                             // [heads][head_dim]
    float *scores = acc + pairs;                              // [heads][tile]
    float *scratch = scores + heads * tile;                   // [heads][tile]
    float *running_max = scratch + heads * tile;              // [heads]
    float *running_sum = running_max + heads;                 // [heads]
    float *next_max = running_sum + heads;                    // [heads]

    const int context = context_lens[seq];
    const int lookahead = num_lookahead[seq];
    const int prompt_rows = seq_rows - lookahead;
    const int skip_start = min(skip_starts[seq], context);
    const int skip_end = max(skip_start, min(skip_ends[seq], context));
    const int rows = min(rows_per_block, seq_rows - tile_first_row);
    const int q_width = num_heads * head_dim;

    for (int at = tid; at < pairs; at += tile) {
        const int r = at / (group * head_dim);
        const int rest = at % (group * head_dim);
        q_heads[at] = r < rows ? q[(long long)(seq_first_row + tile_first_row + r) * row_stride +
                                   (long long)kv_head * group * head_dim + rest]
                               : 0.0f;
        acc[at] = 0.0f;
    }
    for (int h = tid; h < heads; h += tile) {
        running_max[h] = glimpse_neg_inf();
        running_sum[h] = 0.0f;
    }
    for (int r = tid; r < rows_per_block; r += tile) {
        const int i = tile_first_row + r;
        int cache = 0;
        int side = 0;
        if (r < rows && i < prompt_rows) {
            const int entries = context - prompt_rows + i + GLIMPSE_PREFILL_OWN_ENTRY;
            cache = glimpse_attended(entries, skip_start, skip_end);
        } else if (r < rows) {
            cache = glimpse_attended(context, skip_start, skip_end);
            side = i - prompt_rows + 1;
        }
        cache_limit[r] = cache;
        side_limit[r] = side;
    }
    __syncthreads();

    // The keys folded: the widest row's attended cache entries, then the widest row's side keys.
    int cache_keys = 0;
    int side_count = 0;
    for (int r = 0; r < rows; ++r) {
        cache_keys = max(cache_keys, cache_limit[r]);
        side_count = max(side_count, side_limit[r]);
    }
    const int total = cache_keys + side_count;
    const int *table = block_tables + (long long)seq * max_blocks_per_seq;
    const int first_side_row = seq_first_row + prompt_rows;

    for (int first = 0; first < total; first += tile) {
        const int count = min(tile, total - first);
        // 1. This thread's key: where it lies, and its score for every query head it is visible to.
        if (tid < count) {
            const int key = first + tid;
            long long offset;
            int side = key >= cache_keys;
            if (side) {
                offset = (long long)(first_side_row + key - cache_keys) * row_stride +
                         (long long)kv_head * head_dim;
            } else {
                const int entry = key >= skip_start ? key + (skip_end - skip_start) : key;
                const long long block = table[entry / block_size];
                offset = ((block * num_kv_heads + kv_head) * block_size + entry % block_size) *
                         head_dim;
            }
            offsets[tid] = offset;
            is_side[tid] = side;
            for (int h = 0; h < heads; ++h) {
                const int r = h / group;
                const bool visible =
                    side ? key - cache_keys < side_limit[r] : key < cache_limit[r];
                float score = glimpse_neg_inf();
                if (visible) {
                    float dot = 0.0f;
                    for (int d = 0; d < head_dim; ++d) {
                        const float k = side ? side_keys[offset + d]
                                             : glimpse_bf16_to_f32(key_cache[offset + d]);
                        dot += q_heads[h * head_dim + d] * k;
                    }
                    score = dot * scale;
                }
                scores[h * tile + tid] = score;
                scratch[h * tile + tid] = score;
            }
        } else {
            for (int h = 0; h < heads; ++h) {
                scores[h * tile + tid] = glimpse_neg_inf();
                scratch[h * tile + tid] = glimpse_neg_inf();
            }
        }
        __syncthreads();
        // 2. The tile's max per head, and the new running max.
        for (int stride = tile / 2; stride > 0; stride /= 2) {
            if (tid < stride) {
                for (int h = 0; h < heads; ++h) {
                    scratch[h * tile + tid] =
                        fmaxf(scratch[h * tile + tid], scratch[h * tile + tid + stride]);
                }
            }
            __syncthreads();
        }
        for (int h = tid; h < heads; h += tile) {
            next_max[h] = fmaxf(running_max[h], scratch[h * tile]);
        }
        __syncthreads();
        // 3. Probabilities against the new max (0 for a masked key), and their sum per head.
        for (int h = 0; h < heads; ++h) {
            const float score = scores[h * tile + tid];
            const float p = score == glimpse_neg_inf() ? 0.0f : expf(score - next_max[h]);
            scores[h * tile + tid] = p;
            scratch[h * tile + tid] = p;
        }
        __syncthreads();
        for (int stride = tile / 2; stride > 0; stride /= 2) {
            if (tid < stride) {
                for (int h = 0; h < heads; ++h) {
                    scratch[h * tile + tid] += scratch[h * tile + tid + stride];
                }
            }
            __syncthreads();
        }
        // 4. Each owned (head, dim): rescale to the new max, fold the tile's values in order.
        for (int at = tid; at < pairs; at += tile) {
            const int h = at / head_dim;
            const int d = at % head_dim;
            const float rescale =
                next_max[h] == glimpse_neg_inf() ? 1.0f : expf(running_max[h] - next_max[h]);
            float sum = acc[at] * rescale;
            for (int e = 0; e < count; ++e) {
                const float v = is_side[e] ? side_values[offsets[e] + d]
                                           : glimpse_bf16_to_f32(value_cache[offsets[e] + d]);
                sum += scores[h * tile + e] * v;
            }
            acc[at] = sum;
        }
        __syncthreads();
        // 5. The running sum and max move to this tile.
        for (int h = tid; h < heads; h += tile) {
            if (next_max[h] != glimpse_neg_inf()) {
                running_sum[h] =
                    running_sum[h] * expf(running_max[h] - next_max[h]) + scratch[h * tile];
                running_max[h] = next_max[h];
            }
        }
        __syncthreads();
    }

    for (int at = tid; at < rows * group * head_dim; at += tile) {
        const int h = at / head_dim;
        const int r = h / group;
        const long long row = seq_first_row + tile_first_row + r;
        out[row * q_width + (long long)(kv_head * group + h % group) * head_dim + at % head_dim] =
            running_sum[h] > 0.0f ? acc[at] / running_sum[h] : 0.0f;
    }
}
