// C ABI launcher of the RoPE kernel under the host shim.
#include "shim.h"

#include "rope.cu"

extern "C" void glimpse_shim_rope(float *x, const int *positions, const float *cos_table,
                                  const float *sin_table, int rows, int row_stride,
                                  int num_heads, int head_dim, unsigned int threads) {
    glimpse_shim::launch(dim3{static_cast<unsigned int>(rows)}, dim3{threads}, 0, [=] {
        glimpse_rope(x, positions, cos_table, sin_table, row_stride, num_heads, head_dim);
    });
}
