// C ABI launcher of the bf16 rounding of GEMM inputs under the host shim.
#include "shim.h"

#include "round_to_bf16.cu"

extern "C" void glimpse_shim_round_to_bf16(const float *x, unsigned short *out, long long count,
                                           unsigned int blocks, unsigned int threads) {
    glimpse_shim::launch(dim3{blocks}, dim3{threads}, 0,
                         [=] { glimpse_round_to_bf16(x, out, count); });
}
