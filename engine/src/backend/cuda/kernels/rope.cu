// Rotary position embedding in place, `rotate_half` layout over the whole head (the only layout
// Glimpse's models use): for each head, `lo' = lo·cos − hi·sin`, `hi' = hi·cos + lo·sin` with the
// angle tables the CPU backend builds (`RopeTables`, `[positions, head_dim / 2]`, Llama 3 and
// linear scaling already folded in), uploaded once. Rows are `row_stride` floats apart and their
// first `num_heads` heads are rotated, so one launch covers q and k of the fused qkv buffer.
// One block per row; threads stride over (head, frequency) pairs.
#include "glimpse_cuda.cuh"

GLIMPSE_KERNEL void glimpse_rope(float *x, const int *positions, const float *cos_table,
                                 const float *sin_table, int row_stride, int num_heads,
                                 int head_dim) {
    const int half = head_dim / 2;
    float *row = x + (long long)blockIdx.x * row_stride;
    const long long angles = (long long)positions[blockIdx.x] * half;
    for (int pair = threadIdx.x; pair < num_heads * half; pair += blockDim.x) {
        float *head = row + (pair / half) * head_dim;
        const int i = pair % half;
        const float c = cos_table[angles + i];
        const float s = sin_table[angles + i];
        const float lo = head[i];
        const float hi = head[i + half];
        head[i] = lo * c - hi * s;
        head[i + half] = hi * c + lo * s;
    }
}
