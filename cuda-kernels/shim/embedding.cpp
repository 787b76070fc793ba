// C ABI launcher of the embedding gather kernel under the host shim.
#include "shim.h"

#include "embedding.cu"

extern "C" void glimpse_shim_embedding_gather(const glimpse_bf16 *table, const int *ids,
                                              float *out, int rows, int hidden,
                                              unsigned int threads) {
    glimpse_shim::launch(dim3{static_cast<unsigned int>(rows)}, dim3{threads}, 0,
                         [=] { glimpse_embedding_gather(table, ids, out, hidden); });
}
