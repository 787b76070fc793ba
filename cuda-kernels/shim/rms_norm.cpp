// C ABI launcher of the RMSNorm kernel under the host shim (`rms_norm_without_sync.cpp` builds
// it again with its barriers removed, under another name).
#include "shim.h"

#include "rms_norm.cu"

#ifndef GLIMPSE_SHIM_RMS_NORM
#define GLIMPSE_SHIM_RMS_NORM glimpse_shim_rms_norm
#endif

extern "C" void GLIMPSE_SHIM_RMS_NORM(const float *x, const float *weight, float *out, int rows,
                                      int pieces, int row_stride, int width, float eps,
                                      unsigned int threads) {
    glimpse_shim::launch(
        dim3{static_cast<unsigned int>(rows), static_cast<unsigned int>(pieces)}, dim3{threads},
        threads * sizeof(float),
        [=] { glimpse_rms_norm(x, weight, out, row_stride, width, eps); });
}
