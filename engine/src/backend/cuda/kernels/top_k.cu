// Selection of one layer's kept prompt entries per KV head, as the CPU's
// `eviction::select_with_window` picks them: the `k` highest of the `scored` scores of the head
// (higher score first, ties to the lower entry index, scores ordered as `f32::total_cmp` orders
// them), ascending, then the `window` entries after the scored ones. Writes
// `kept[kv_head][0..min(k, scored) + window]`: the input of compaction (compact.cu).
//
// Grid `(num_kv_heads)` × a power-of-two block. Each score becomes a 32-bit key whose unsigned
// order is `total_cmp`'s. A radix select, 8 bits at a time from the top, finds the `k`-th highest
// key `T` and how many entries equal to `T` are kept (`take`): each pass counts the keys that
// match the digits chosen so far into a 256-bin shared histogram and walks it from the top. Then a
// pass over the entries in index order, a tile of `blockDim.x` at a time, keeps every key above
// `T` and the first `take` equal to `T`; block-wide prefix sums give each kept entry's place, so
// the output ascends. Counts do not depend on the order of the histogram's atomic adds: the
// result is the CPU's, bit for bit.
//
// Dynamic shared memory: `4·(256 + 2·blockDim.x + 2)` bytes.
#include "glimpse_cuda.cuh"

// The key of a score whose unsigned order is `f32::total_cmp`'s: negative values reversed below
// the positive ones.
static __device__ __forceinline__ unsigned int glimpse_order_key(float score) {
    const unsigned int bits = __float_as_uint(score);
    return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

// Inclusive prefix sum of `values[0..blockDim.x]` in place (Hillis–Steele); every thread calls it.
static __device__ __forceinline__ void glimpse_block_scan(int *values) {
    const int tid = threadIdx.x;
    for (int offset = 1; offset < (int)blockDim.x; offset *= 2) {
        const int before = tid >= offset ? values[tid - offset] : 0;
        __syncthreads();
        values[tid] += before;
        __syncthreads();
    }
}

GLIMPSE_KERNEL void glimpse_top_k(const float *scores, int scored, int k, int window,
                                  int *kept) {
    const int kv_head = blockIdx.x;
    const int tid = threadIdx.x;
    const int tile = blockDim.x;
    k = min(k, scored);
    const float *row = scores + (long long)kv_head * scored;
    int *out = kept + (long long)kv_head * (k + window);

    GLIMPSE_DYNAMIC_SHARED(unsigned int, shared);
    unsigned int *histogram = shared;                   // [256]
    int *equal = (int *)(histogram + 256);              // [tile] scan of keys equal to T
    int *chosen = equal + tile;                         // [tile] scan of kept entries
    unsigned int *threshold = (unsigned int *)(chosen + tile);  // T, digit by digit
    int *take = (int *)(threshold + 1);                 // kept entries equal to T (rank among them)

    if (tid == 0) {
        *threshold = 0;
        *take = k;
    }
    __syncthreads();
    for (int shift = 24; shift >= 0 && k > 0; shift -= 8) {
        for (int bin = tid; bin < 256; bin += tile) {
            histogram[bin] = 0;
        }
        __syncthreads();
        const unsigned int high = shift == 24 ? 0u : 0xffffffffu << (shift + 8);
        const unsigned int prefix = *threshold & high;
        for (int e = tid; e < scored; e += tile) {
            const unsigned int key = glimpse_order_key(row[e]);
            if ((key & high) == prefix) {
                atomicAdd(&histogram[(key >> shift) & 0xffu], 1u);
            }
        }
        __syncthreads();
        if (tid == 0) {
            int above = 0;
            for (int bin = 255; bin >= 0; --bin) {
                const int count = (int)histogram[bin];
                if (above + count >= *take) {
                    *threshold |= (unsigned int)bin << shift;
                    *take -= above;
                    break;
                }
                above += count;
            }
        }
        __syncthreads();
    }

    const unsigned int t = *threshold;
    const int take_equal = *take;
    int equal_before = 0;
    int kept_before = 0;
    for (int first = 0; first < scored && k > 0; first += tile) {
        const int e = first + tid;
        const unsigned int key = e < scored ? glimpse_order_key(row[e]) : 0u;
        const int is_equal = e < scored && key == t;
        equal[tid] = is_equal;
        __syncthreads();
        glimpse_block_scan(equal);
        const int rank = equal_before + equal[tid] - is_equal;
        const int keep = (e < scored && key > t) || (is_equal && rank < take_equal);
        chosen[tid] = keep;
        __syncthreads();
        glimpse_block_scan(chosen);
        if (keep) {
            out[kept_before + chosen[tid] - 1] = e;
        }
        equal_before += equal[tile - 1];
        kept_before += chosen[tile - 1];
        __syncthreads();
    }
    for (int w = tid; w < window; w += tile) {
        out[k + w] = scored + w;
    }
}
