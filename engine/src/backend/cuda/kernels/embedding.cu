// Embedding gather: `out[r, :] = f32(table[ids[r], :])` for a bf16 table `[vocab, hidden]`.
// One block per row; threads stride over the hidden dimension (coalesced). Token ids are checked
// against the vocabulary on the host before the launch.
#include "glimpse_cuda.cuh"

GLIMPSE_KERNEL void glimpse_embedding_gather(const glimpse_bf16 *table, const int *ids,
                                             float *out, int hidden) {
    const long long row = blockIdx.x;
    const glimpse_bf16 *from = table + (long long)ids[row] * hidden;
    float *to = out + row * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        to[i] = glimpse_bf16_to_f32(from[i]);
    }
}
