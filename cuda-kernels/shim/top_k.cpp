// C ABI launcher of the top-k selection kernel under the host shim.
#include "shim.h"

#include "top_k.cu"

extern "C" void glimpse_shim_top_k(const float *scores, int scored, int k, int window, int *kept,
                                   int num_kv_heads, unsigned int threads) {
    glimpse_shim::launch(dim3{static_cast<unsigned int>(num_kv_heads)}, dim3{threads},
                         4 * (256 + 2 * static_cast<std::size_t>(threads) + 2),
                         [=] { glimpse_top_k(scores, scored, k, window, kept); });
}
