// SwiGLU: `out[r, i] = silu(gate_up[r, i]) · gate_up[r, I + i]` for rows laid out `[gate | up]`,
// with `silu(g) = g / (1 + exp(−g))` as the CPU backend writes it. A grid-stride loop over the
// `rows · I` outputs.
#include "glimpse_cuda.cuh"

GLIMPSE_KERNEL void glimpse_silu_mul(const float *gate_up, float *out, int rows,
                                     int intermediate) {
    const long long total = (long long)rows * intermediate;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < total;
         at += step) {
        const long long row = at / intermediate;
        const long long i = at % intermediate;
        const float g = gate_up[row * 2 * intermediate + i];
        const float u = gate_up[row * 2 * intermediate + intermediate + i];
        out[at] = g / (1.0f + expf(-g)) * u;
    }
}
