// RMSNorm, `out[r] = weight · (x[r] · 1/sqrt(mean(x[r]²) + eps))` as the CPU backend writes it.
// Grid `(rows, pieces)`: block `(r, p)` normalises the `width` floats at `r · row_stride +
// p · width` — a whole row (`pieces` 1), or one head of the q or k part of a fused qkv row
// (Qwen3's q/k norm, in place). `blockDim.x` is a power of two and the launch gives `blockDim.x`
// floats of dynamic shared memory. In place is safe: each thread rewrites only the elements it
// reads after the barrier. Each thread sums the squares of its strided elements in order, then a
// fixed-order shared-memory tree adds the partial sums, so a row's result does not depend on the
// batch or on scheduling (the sum's order differs from the CPU's sequential one: equal within a
// tolerance, not bit for bit).
#include "glimpse_cuda.cuh"

// A test build defines GLIMPSE_TEST_DROP_SYNC to show that the shim tests catch a missing barrier.
#ifdef GLIMPSE_TEST_DROP_SYNC
#define GLIMPSE_RMS_SYNC()
#else
#define GLIMPSE_RMS_SYNC() __syncthreads()
#endif

GLIMPSE_KERNEL void glimpse_rms_norm(const float *x, const float *weight, float *out,
                                     int row_stride, int width, float eps) {
    GLIMPSE_DYNAMIC_SHARED(float, partial);
    const long long start = (long long)blockIdx.x * row_stride + (long long)blockIdx.y * width;
    const float *row = x + start;
    float *to = out + start;
    const unsigned int tid = threadIdx.x;
    float sum = 0.0f;
    for (int i = tid; i < width; i += blockDim.x) {
        sum += row[i] * row[i];
    }
    partial[tid] = sum;
    GLIMPSE_RMS_SYNC();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (tid < stride) {
            partial[tid] += partial[tid + stride];
        }
        GLIMPSE_RMS_SYNC();
    }
    const float scale = 1.0f / sqrtf(partial[0] / (float)width + eps);
    for (int i = tid; i < width; i += blockDim.x) {
        to[i] = weight[i] * (row[i] * scale);
    }
}
