// Rounds an f32 activation to bf16 for a cuBLAS GEMM (`out[i] = bf16(x[i])`, to nearest, ties to
// even, through the header's `glimpse_f32_to_bf16`): cuBLAS multiplies bf16 by bf16 only, so each
// GEMM input is rounded once, as the weights were when they were uploaded. A grid-stride loop over
// the `count` elements.
#include "glimpse_cuda.cuh"

GLIMPSE_KERNEL void glimpse_round_to_bf16(const float *x, glimpse_bf16 *out, long long count) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < count; at += step) {
        out[at] = glimpse_f32_to_bf16(x[at]);
    }
}
