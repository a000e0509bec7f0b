// Small CUDA helpers of the dmdl kernels (csrc/cuda/*.cu): warp reductions, a block scan and
// the launch check. Header-only, CUDA translation units only.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace dmdl {
namespace gpu {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;

// Sum over the 32 lanes (butterfly): every lane returns the same value, bit for bit (each step
// adds the same two numbers in both partner lanes, and a + b == b + a).
__device__ __forceinline__ double warp_sum_d(double s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(kFullMask, s, o);
  return s;
}

__device__ __forceinline__ float warp_sum_f(float s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(kFullMask, s, o);
  return s;
}

// Minimum over the 32 lanes; every lane returns it.
__device__ __forceinline__ int32_t warp_min_i32(int32_t v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const int32_t u = __shfl_xor_sync(kFullMask, v, o);
    v = u < v ? u : v;
  }
  return v;
}

// Bits of the lanes below `lane` (for order-preserving compaction with __ballot_sync).
__device__ __forceinline__ unsigned lanemask_lt(int lane) { return (1u << lane) - 1u; }

// Exclusive prefix sum of v over the kWarps * 32 threads of a block (blockDim.x must be exactly
// that); *total receives the block's sum. warp_sums: __shared__ int[kWarps]. Contains barriers:
// every thread of the block must call it.
template <int kWarps>
__device__ __forceinline__ int block_exclusive_scan(int v, int* total, int* warp_sums) {
  const int lane = threadIdx.x & (kWarpSize - 1);
  const int warp = threadIdx.x / kWarpSize;
  int incl = v;
#pragma unroll
  for (int o = 1; o < kWarpSize; o <<= 1) {
    const int u = __shfl_up_sync(kFullMask, incl, o);
    if (lane >= o) incl += u;
  }
  if (lane == kWarpSize - 1) warp_sums[warp] = incl;
  __syncthreads();
  int before = 0, all = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const int s = warp_sums[w];
    before += w < warp ? s : 0;
    all += s;
  }
  __syncthreads();  // warp_sums is rewritten by the next call
  *total = all;
  return before + incl - v;
}

// Blocks for `items` warps of work at `warps_per_block` warps per block (kernels grid-stride).
inline unsigned int blocks_for_warps(int64_t items, int warps_per_block) {
  const int64_t b = (items + warps_per_block - 1) / warps_per_block;
  return static_cast<unsigned int>(b < 1 ? 1 : (b > (int64_t{1} << 20) ? (int64_t{1} << 20) : b));
}

// Raises a c10::Error naming the op and the kernel when the last launch failed.
inline void check_launch(const char* op, const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel ", kernel, " failed: ", cudaGetErrorString(err));
}

// Streaming multiprocessors of the current device.
inline int multiprocessors(int device, const char* op) {
  int sms = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  TORCH_CHECK(err == cudaSuccess, op, ": cudaDeviceGetAttribute failed: ", cudaGetErrorString(err));
  return sms > 0 ? sms : 1;
}

}  // namespace gpu
}  // namespace dmdl
