// C ABI launcher of the SwiGLU kernel under the host shim.
#include "shim.h"

#include "silu_mul.cu"

extern "C" void glimpse_shim_silu_mul(const float *gate_up, float *out, int rows,
                                      int intermediate, unsigned int blocks,
                                      unsigned int threads) {
    glimpse_shim::launch(dim3{blocks}, dim3{threads}, 0,
                         [=] { glimpse_silu_mul(gate_up, out, rows, intermediate); });
}
