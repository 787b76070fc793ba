// RMSNorm with its `__syncthreads` removed: the tests show that the shim catches the bug.
#define GLIMPSE_TEST_DROP_SYNC
#define GLIMPSE_SHIM_RMS_NORM glimpse_shim_rms_norm_without_sync
#include "rms_norm.cpp"
