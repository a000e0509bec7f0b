// CUDA kernel of dmdl::propagate, the label-propagation step of MULT (arXiv 2402.00672;
// docs/mult.md#B3.4; docs/benchmarks.md#propagation): out = a * A @ x + b * z with A a CSR affinity,
// the same bits as the CPU kernel (csrc/cpu/propagation_cpu.cpp) through the same per-row code
// (row_valid and row_columns of dmdl/propagation.h, one column per thread).
//
// A group of G threads per row (G = K rounded up to a warp, at most kThreads, a power of two so
// that kThreads / G rows share a block; blocks grid-stride over rows). Thread t of a group computes
// the columns t, t + G, ...: for each non-zero of the row, the group reads a contiguous piece of one
// row of x (coalesced; kUnroll rows in flight), the row's indices and values being the same address
// for every thread.
//
// Checks: only what needs no device-to-host copy (dtypes, devices, shapes, crow's length, K, a and
// b; dmdl/propagation_host.h). The values of crow and col are not read on the host: a row whose
// pointers fall outside [0, nnz] or decrease, or that holds a column outside [0, N_in), comes out
// as NaN (nothing outside the arrays is read); crow[0] != 0 or crow[N_out] != nnz go unnoticed
// as long as the rows stay inside [0, nnz].
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "dmdl/gpu.cuh"
#include "dmdl/propagation.h"
#include "dmdl/propagation_host.h"

namespace dmdl {
namespace propagation {
namespace {

constexpr const char* kOp = "dmdl::propagate";
constexpr int kThreads = 256;
constexpr int kBlocksPerSM = 8;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

// Threads per row: K rounded up to a power of two >= 32, at most kThreads.
int group_size(int64_t k) {
  int g = gpu::kWarpSize;
  while (g < kThreads && g < k) g <<= 1;
  return g;
}

__global__ void __launch_bounds__(kThreads)
    propagate_kernel(const int64_t* __restrict__ crow, const int32_t* __restrict__ col, const float* __restrict__ val,
                     const float* __restrict__ x, const float* __restrict__ z, float a, float b, int64_t n_out,
                     int64_t n_in, int64_t k, int64_t nnz, int group, float* __restrict__ out) {
  const int rows_per_block = kThreads / group;
  const int t = threadIdx.x % group;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * rows_per_block;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * rows_per_block + threadIdx.x / group; i < n_out; i += stride) {
    const bool valid = row_valid(crow, col, nnz, n_in, i);
    for (int64_t c = t; c < k; c += group) {
      if (valid) {
        float acc;  // a register
        row_columns(crow, col, val, x, z, a, b, k, i, c, 1, &acc, out);
      } else {
        nan_columns(k, i, c, 1, out);
      }
    }
  }
}

// Returns out [N_out, K] float32: out[i] = a * sum_p val[p] * x[col[p]] + b * z[i], accumulated in
// float32 in CSR order.
at::Tensor propagate_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x,
                          const at::Tensor& z, double a, double b) {
  host::check_propagate_meta(crow, col, val, x, z, a, b, kOp, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n_out = z.size(0), n_in = x.size(0), k = x.size(1), nnz = col.size(0);
  at::Tensor out = at::empty({n_out, k}, x.options());
  if (n_out == 0 || k == 0) return out;
  const at::Tensor cr = crow.contiguous(), cl = col.contiguous(), vl = val.contiguous(), zc = z.contiguous();
  const int group = group_size(k);
  const int rows_per_block = kThreads / group;
  const int64_t sms = gpu::multiprocessors(x.device().index(), kOp);
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>({(n_out + rows_per_block - 1) / rows_per_block, sms * kBlocksPerSM, kMaxBlocks}));
  propagate_kernel<<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
      cr.data_ptr<int64_t>(), cl.data_ptr<int32_t>(), vl.data_ptr<float>(), x.data_ptr<float>(), zc.data_ptr<float>(),
      static_cast<float>(a), static_cast<float>(b), n_out, n_in, k, nnz, group, out.data_ptr<float>());
  gpu::check_launch(kOp, "propagate_kernel");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dmdl, CUDA, m) { m.impl("propagate", &propagate_cuda); }

}  // namespace propagation
}  // namespace dmdl
