// Portability header of Glimpse's CUDA kernels: every kernel file includes it first, and then
// builds unchanged under NVRTC (the GPU, compiled at run time), nvcc, and g++ through the host
// shim of the `glimpse-cuda-kernels` crate (kernel logic tested on the CPU).
//
// No host headers: NVRTC has none. bf16 travels as its raw bits (`glimpse_bf16`, an unsigned
// 16-bit integer) with explicit conversions, so no `cuda_bf16.h` is needed either.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// The GPU: kernels keep C names so the host finds them by name after NVRTC.
#define GLIMPSE_KERNEL extern "C" __global__
#define GLIMPSE_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#elif defined(GLIMPSE_CUDA_SHIM)
// The host shim has defined `__global__`, `__device__`, `__shared__`, `__syncthreads` and the
// intrinsics; a kernel is local to its launcher's translation unit.
#define GLIMPSE_KERNEL static
#define GLIMPSE_DYNAMIC_SHARED(type, name) type *name = glimpse_shim_dynamic_shared<type>()
#else
#error "compile Glimpse kernels with NVRTC, nvcc, or the host shim (GLIMPSE_CUDA_SHIM)"
#endif

// A bf16 value as its raw bits (the high half of an f32).
typedef unsigned short glimpse_bf16;

// −∞ as f32 (NVRTC has no `INFINITY`).
static __device__ __forceinline__ float glimpse_neg_inf() { return __uint_as_float(0xff800000u); }

// Widens bf16 to f32 exactly.
static __device__ __forceinline__ float glimpse_bf16_to_f32(glimpse_bf16 bits) {
    return __uint_as_float(((unsigned int)bits) << 16);
}

// Rounds f32 to bf16, to nearest with ties to even; NaN stays a (quiet) NaN.
static __device__ __forceinline__ glimpse_bf16 glimpse_f32_to_bf16(float value) {
    unsigned int bits = __float_as_uint(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return (glimpse_bf16)((bits >> 16) | 0x0040u);
    }
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (glimpse_bf16)(bits >> 16);
}
