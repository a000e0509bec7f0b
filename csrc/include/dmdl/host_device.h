// Macros shared by the per-row headers that compile both for the host (C++ CPU kernels) and,
// under nvcc, for the device (CUDA kernels).
#pragma once

#if defined(__CUDACC__)
#define DMDL_HOST_DEVICE __host__ __device__
#else
#define DMDL_HOST_DEVICE
#endif

// OpenMP simd sum reduction into the variable `s` (vectorises float/double dot products on the
// host without -ffast-math; nothing on the device).
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define DMDL_SIMD_SUM_S _Pragma("omp simd reduction(+ : s)")
#else
#define DMDL_SIMD_SUM_S
#endif
