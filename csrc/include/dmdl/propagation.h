// Label propagation step of MULT's label transfer (arXiv 2402.00672; docs/mult.md#B3.4):
//
//   out[i, :] = a * sum_{p in [crow[i], crow[i+1])} val[p] * x[col[p], :] + b * z[i, :]
//
// i.e. out = a * A @ x + b * z with A a sparse CSR affinity (N_out x N_in) and x, z dense
// row-major float32 label matrices (N_in x K, N_out x K).
//
// Per-row building blocks shared by the CPU kernel (csrc/cpu/propagation_cpu.cpp, at::parallel_for
// over rows, a row's columns in chunks of kCpuColumns accumulated in the output row itself) and the
// CUDA kernel (csrc/cuda/propagation_cuda.cu, a group of threads per row, one column per thread,
// the accumulator in a register). Plain C++ on raw pointers, so that it compiles for the host and,
// under nvcc, for the device.
//
// Rounding: each output entry is accumulated in float32 in CSR order (p ascending), every product
// rounded before it is added (no FMA contraction: the host code is compiled without FMA, the device
// code uses __fmul_rn / __fadd_rn), then a * acc and b * z are rounded and added. The CPU and CUDA
// kernels therefore return the same bits. Unrolling over the non-zeros (kUnroll at a time) keeps
// this order in every column: ((acc + v0 x0) + v1 x1) + ...
//
// Invalid structure: a row whose pointers are not 0 <= crow[i] <= crow[i+1] <= nnz, or that holds
// a column outside [0, N_in), is invalid (row_valid). The CPU kernel rejects such input before it
// runs (dmdl/propagation_host.h); the CUDA kernel, which checks only what it can without a
// device-to-host copy, writes such rows as NaN (nan_columns) and reads nothing outside the arrays.
#pragma once

#include <math.h>
#include <stdint.h>

#include "dmdl/host_device.h"

#if defined(__CUDACC__)
#define DMDL_PROP_INLINE __forceinline__
#elif defined(__GNUC__)
#define DMDL_PROP_INLINE inline __attribute__((always_inline))  // into callers compiled for AVX2
#else
#define DMDL_PROP_INLINE inline
#endif

// OpenMP simd over the columns of a row on the host (no reduction: one accumulator per column).
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define DMDL_PROP_SIMD _Pragma("omp simd")
#else
#define DMDL_PROP_SIMD
#endif

namespace dmdl {
namespace propagation {

// Non-zeros of a row handled together: kUnroll rows of x are read at once (memory-level
// parallelism), their products added to each accumulator one after the other, in CSR order.
constexpr int kUnroll = 4;

// Columns per chunk of the CPU kernel: the chunk's accumulators (4 KB) stay in L1 while the row's
// non-zeros stream past, each one reading a contiguous piece of one row of x.
constexpr int64_t kCpuColumns = 1024;

// acc + v * x, the product rounded first (the same bits on the host and the device).
DMDL_HOST_DEVICE DMDL_PROP_INLINE float mul_add_rn(float acc, float v, float x) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(acc, __fmul_rn(v, x));
#else
  return acc + v * x;
#endif
}

// a * acc + b * z, both products rounded before the sum.
DMDL_HOST_DEVICE DMDL_PROP_INLINE float combine_rn(float a, float acc, float b, float z) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(a, acc), __fmul_rn(b, z));
#else
  return a * acc + b * z;
#endif
}

// Host only: asks the cache for the `width` floats at xr (the next group's rows of x; the
// hardware prefetcher follows a row once it is being read, not the jump to the next one).
DMDL_HOST_DEVICE DMDL_PROP_INLINE void prefetch_floats(const float* xr, int64_t width) {
#if defined(__GNUC__) && !defined(__CUDA_ARCH__)
  for (int64_t c = 0; c < width; c += 16) __builtin_prefetch(xr + c);  // one 64-byte line per step
#else
  (void)xr;
  (void)width;
#endif
}

// Whether row i is valid: 0 <= crow[i] <= crow[i+1] <= nnz and every column in [0, n_in).
DMDL_HOST_DEVICE DMDL_PROP_INLINE bool row_valid(const int64_t* crow, const int32_t* col, int64_t nnz, int64_t n_in,
                                                 int64_t i) {
  const int64_t p0 = crow[i], p1 = crow[i + 1];
  if (!(0 <= p0 && p0 <= p1 && p1 <= nnz)) return false;
  for (int64_t p = p0; p < p1; ++p) {
    if (col[p] < 0 || col[p] >= n_in) return false;
  }
  return true;
}

// acc[c] += val[p] * x[col[p], k0 + c] for c < width and p = p0, ..., p1 - 1 in this order
// (x: [N_in, k] row-major; every col[p] valid). acc may be the output row itself.
DMDL_HOST_DEVICE DMDL_PROP_INLINE void accumulate_entries(const int32_t* col, const float* val, const float* x,
                                                          int64_t k, int64_t p0, int64_t p1, int64_t k0,
                                                          int64_t width, float* acc) {
  static_assert(kUnroll == 4, "the unrolled loop below is written for 4 non-zeros");
  int64_t p = p0;
  for (; p + kUnroll <= p1; p += kUnroll) {
    const float v0 = val[p], v1 = val[p + 1], v2 = val[p + 2], v3 = val[p + 3];
    const float* x0 = x + static_cast<int64_t>(col[p]) * k + k0;
    const float* x1 = x + static_cast<int64_t>(col[p + 1]) * k + k0;
    const float* x2 = x + static_cast<int64_t>(col[p + 2]) * k + k0;
    const float* x3 = x + static_cast<int64_t>(col[p + 3]) * k + k0;
    if (p + 2 * kUnroll <= p1) {
      for (int u = 0; u < kUnroll; ++u) prefetch_floats(x + static_cast<int64_t>(col[p + kUnroll + u]) * k + k0, width);
    }
    DMDL_PROP_SIMD
    for (int64_t c = 0; c < width; ++c) {
      acc[c] = mul_add_rn(mul_add_rn(mul_add_rn(mul_add_rn(acc[c], v0, x0[c]), v1, x1[c]), v2, x2[c]), v3, x3[c]);
    }
  }
  for (; p < p1; ++p) {
    const float v = val[p];
    const float* xr = x + static_cast<int64_t>(col[p]) * k + k0;
    DMDL_PROP_SIMD
    for (int64_t c = 0; c < width; ++c) acc[c] = mul_add_rn(acc[c], v, xr[c]);
  }
}

// Columns [k0, k0 + width) of output row i of a valid row (row_valid):
//   out[i, k0 + c] = a * sum_p val[p] * x[col[p], k0 + c] + b * z[i, k0 + c].
// crow [N_out + 1] int64, col [nnz] int32, val [nnz] float32: the CSR affinity; x [N_in, k],
// z [N_out, k], out [N_out, k] row-major float32. acc: width floats of scratch, or nullptr to
// accumulate in the output row itself.
DMDL_HOST_DEVICE DMDL_PROP_INLINE void row_columns(const int64_t* crow, const int32_t* col, const float* val,
                                                   const float* x, const float* z, float a, float b, int64_t k,
                                                   int64_t i, int64_t k0, int64_t width, float* acc, float* out) {
  float* orow = out + i * k + k0;
  const float* zr = z + i * k + k0;
  if (acc == nullptr) acc = orow;
  for (int64_t c = 0; c < width; ++c) acc[c] = 0.f;
  accumulate_entries(col, val, x, k, crow[i], crow[i + 1], k0, width, acc);
  DMDL_PROP_SIMD
  for (int64_t c = 0; c < width; ++c) orow[c] = combine_rn(a, acc[c], b, zr[c]);
}

// Columns [k0, k0 + width) of output row i set to NaN (an invalid row).
DMDL_HOST_DEVICE DMDL_PROP_INLINE void nan_columns(int64_t k, int64_t i, int64_t k0, int64_t width, float* out) {
  float* orow = out + i * k + k0;
  for (int64_t c = 0; c < width; ++c) orow[c] = NAN;
}

}  // namespace propagation
}  // namespace dmdl
