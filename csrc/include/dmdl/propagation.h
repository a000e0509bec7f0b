// Label propagation step of MULT's label transfer (arXiv 2402.00672; algorithm.md §B3 step 4):
//
//   out[i, :] = a * sum_{p in [crow[i], crow[i+1])} val[p] * x[col[p], :] + b * z[i, :]
//
// i.e. out = a * A @ x + b * z with A a sparse CSR affinity (N_out x N_in) and x, z dense
// row-major float32 label matrices (N_in x K, N_out x K).
//
// Per-row building blocks shared by the CPU kernel (csrc/cpu/propagation_cpu.cpp, at::parallel_for
// over rows, tiles of kCpuTile columns) and the CUDA kernel (csrc/cuda/propagation_cuda.cu, a
// group of threads per row, one column per thread). Plain C++ on raw pointers, so that it compiles
// for the host and, under nvcc, for the device.
//
// Rounding: each output entry is accumulated in float32 in CSR order (p ascending), every product
// rounded before it is added (no FMA contraction: the host code is compiled without FMA, the device
// code uses __fmul_rn / __fadd_rn), then a * acc and b * z are rounded and added. The CPU and CUDA
// kernels therefore return the same bits.
//
// Invalid structure: a row whose pointers are not 0 <= crow[i] <= crow[i+1] <= nnz, or that holds
// a column outside [0, N_in), is written as NaN and nothing outside the arrays is read. The CPU
// kernel rejects such input before it runs (dmdl/propagation_host.h); the CUDA kernel, which checks
// only what it can without a device-to-host copy, relies on this.
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

// OpenMP simd over the columns of a tile on the host (no reduction: one accumulator per column).
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define DMDL_PROP_SIMD _Pragma("omp simd")
#else
#define DMDL_PROP_SIMD
#endif

namespace dmdl {
namespace propagation {

// Columns per tile of the CPU kernel: the tile's accumulators stay in vector registers (8 of the
// 16 SSE or AVX registers) while the row's non-zeros stream past.
constexpr int kCpuTileSse = 32;
constexpr int kCpuTileAvx = 64;

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

// Whether the pointers [p0, p1) of a row lie inside [0, nnz) and do not decrease.
DMDL_HOST_DEVICE DMDL_PROP_INLINE bool row_range_valid(int64_t p0, int64_t p1, int64_t nnz) {
  return 0 <= p0 && p0 <= p1 && p1 <= nnz;
}

// Columns [k0, k0 + width) of output row i, width <= W (W: a compile-time tile width, so that the
// full-width loop is unrolled and vectorised with the accumulators in registers).
//   crow [N_out + 1] int64, col [nnz] int32, val [nnz] float32: the CSR affinity;
//   x [N_in, k] and z [N_out, k] row-major float32; out [N_out, k].
// Reads the row's pointers, non-zeros and, for each non-zero p, x[col[p], k0 : k0 + width).
// A row with invalid pointers or columns (see the top of this file) gets NaN in the tile.
template <int W>
DMDL_HOST_DEVICE DMDL_PROP_INLINE void row_tile(const int64_t* crow, const int32_t* col, const float* val,
                                                const float* x, const float* z, float a, float b, int64_t nnz,
                                                int64_t n_in, int64_t k, int64_t i, int64_t k0, int width, float* out) {
  float acc[W];
  for (int c = 0; c < W; ++c) acc[c] = 0.f;
  const int64_t p0 = crow[i], p1 = crow[i + 1];
  bool valid = row_range_valid(p0, p1, nnz);
  if (valid) {
    for (int64_t p = p0; p < p1; ++p) {
      const int32_t j = col[p];
      if (j < 0 || j >= n_in) {
        valid = false;
        break;
      }
      const float v = val[p];
      const float* xr = x + static_cast<int64_t>(j) * k + k0;
      if (width == W) {
        DMDL_PROP_SIMD
        for (int c = 0; c < W; ++c) acc[c] = mul_add_rn(acc[c], v, xr[c]);
      } else {
        for (int c = 0; c < width; ++c) acc[c] = mul_add_rn(acc[c], v, xr[c]);
      }
    }
  }
  const float* zr = z + i * k + k0;
  float* orow = out + i * k + k0;
  if (!valid) {
    for (int c = 0; c < width; ++c) orow[c] = NAN;
    return;
  }
  for (int c = 0; c < width; ++c) orow[c] = combine_rn(a, acc[c], b, zr[c]);
}

}  // namespace propagation
}  // namespace dmdl
