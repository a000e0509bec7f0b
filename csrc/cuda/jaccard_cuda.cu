// CUDA kernel of dmdl::jaccard_distance. The kNN GEMM and top-k run in ATen (fp32,
// TF32 disabled for the call); the k-reciprocal sets, expansion, weights, query
// expansion and the min-sum Jaccard are the per-row functions of dmdl/jaccard.h,
// one thread per row (one block per row for the min-sum).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "dmdl/jaccard.h"

namespace dmdl {
namespace jaccard {

// CUDA runtime version the kernels were compiled with (for _C.build_info()).
int cuda_runtime_version_compiled() { return CUDART_VERSION; }

namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

__global__ void reciprocal_kernel(const int32_t* __restrict__ rank, int n, int k1, int kh, int32_t* r1, int32_t* c1,
                                  int32_t* rh, int32_t* ch) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  c1[i] = reciprocal_row(rank, k1, static_cast<int32_t>(i), k1, r1 + i * k1);
  ch[i] = reciprocal_row(rank, k1, static_cast<int32_t>(i), kh, rh + i * kh);
}

__global__ void expand_weights_kernel(const float* __restrict__ x, int64_t d, int n, const int32_t* r1,
                                      const int32_t* c1, int k1, const int32_t* rh, const int32_t* ch, int kh,
                                      int64_t cap, int32_t* ecol, int32_t* ecnt, float* ewt) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int32_t* cols = ecol + i * cap;
  const int m = expand_row(static_cast<int32_t>(i), r1, c1, k1, rh, ch, kh, cols);
  ecnt[i] = m;
  softmax_weights_row(x, d, static_cast<int32_t>(i), cols, m, ewt + i * cap);
}

// Query expansion; counting pass when qcol == nullptr.
__global__ void qe_kernel(const int32_t* __restrict__ rank, int n, int k1, int kq, const int32_t* ecol,
                          const float* ewt, const int32_t* ecnt, int64_t cap, int64_t* qcnt, const int64_t* ptr,
                          int32_t* qcol, float* qval) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if (qcol == nullptr) {
    qcnt[i] = qe_merge_row(rank + i * k1, kq, ecol, ewt, ecnt, cap, nullptr, nullptr);
  } else {
    qe_merge_row(rank + i * k1, kq, ecol, ewt, ecnt, cap, qcol + ptr[i], qval + ptr[i]);
  }
}

// One block per row i: out[i, :] accumulates sum_c min(V_ic, V_jc) column by column
// (in ascending c, as the reference does; a barrier between columns keeps each
// accumulation ordered), then becomes 1 - s / (2 - s) clipped at 0.
__global__ void jaccard_rows_kernel(int n, const int64_t* __restrict__ ptr, const int32_t* __restrict__ qcol,
                                    const float* __restrict__ qval, const int64_t* __restrict__ cptr,
                                    const int32_t* __restrict__ irow, const float* __restrict__ ival, float* out) {
  const int64_t i = blockIdx.x;
  float* acc = out + i * n;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) acc[j] = 0.f;
  __syncthreads();
  for (int64_t p = ptr[i]; p < ptr[i + 1]; ++p) {
    const int32_t c = qcol[p];
    accumulate_column(qval[p], irow, ival, cptr[c] + threadIdx.x, cptr[c + 1], blockDim.x, acc);
    __syncthreads();
  }
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) acc[j] = jaccard_from_overlap(acc[j]);
}

// Runs the kNN GEMM in full fp32 even if the caller allowed TF32 (near-tied neighbours
// would otherwise swap); restores the setting afterwards.
struct NoTF32Guard {
  bool prev;
  NoTF32Guard() : prev(at::globalContext().allowTF32CuBLAS()) {
    if (prev) at::globalContext().setAllowTF32CuBLAS(false);
  }
  ~NoTF32Guard() {
    if (prev) at::globalContext().setAllowTF32CuBLAS(true);
  }
};

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "dmdl::jaccard_distance: CUDA kernel ", what, " failed: ", cudaGetErrorString(err));
}

at::Tensor jaccard_distance_cuda(const at::Tensor& features, int64_t k1, int64_t k2) {
  check_inputs(features, k1, k2, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(features.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int n = static_cast<int>(features.size(0));
  const int64_t d = features.size(1);
  const int K1 = static_cast<int>(k1);
  const int KH = half_cols(K1);
  const int KQ = static_cast<int>(std::min<int64_t>(k2, k1));
  const auto opt_i = features.options().dtype(at::kInt);
  const auto opt_l = features.options().dtype(at::kLong);

  at::Tensor rank;
  {
    NoTF32Guard no_tf32;
    rank = knn_rank(features, k1);
  }

  at::Tensor r1 = at::empty({n, K1}, opt_i), c1 = at::empty({n}, opt_i);
  at::Tensor rh = at::empty({n, KH}, opt_i), ch = at::empty({n}, opt_i);
  reciprocal_kernel<<<blocks_for(n), kThreads, 0, stream>>>(rank.data_ptr<int32_t>(), n, K1, KH,
                                                             r1.data_ptr<int32_t>(), c1.data_ptr<int32_t>(),
                                                             rh.data_ptr<int32_t>(), ch.data_ptr<int32_t>());
  check_launch("reciprocal_kernel");

  const int64_t cap = expansion_capacity(K1, n);
  at::Tensor ecol = at::empty({n, cap}, opt_i), ecnt = at::empty({n}, opt_i);
  at::Tensor ewt = at::empty({n, cap}, features.options());
  expand_weights_kernel<<<blocks_for(n), kThreads, 0, stream>>>(
      features.data_ptr<float>(), d, n, r1.data_ptr<int32_t>(), c1.data_ptr<int32_t>(), K1, rh.data_ptr<int32_t>(),
      ch.data_ptr<int32_t>(), KH, cap, ecol.data_ptr<int32_t>(), ecnt.data_ptr<int32_t>(), ewt.data_ptr<float>());
  check_launch("expand_weights_kernel");

  at::Tensor qcnt = at::empty({n}, opt_l);
  qe_kernel<<<blocks_for(n), kThreads, 0, stream>>>(rank.data_ptr<int32_t>(), n, K1, KQ, ecol.data_ptr<int32_t>(),
                                                     ewt.data_ptr<float>(), ecnt.data_ptr<int32_t>(), cap,
                                                     qcnt.data_ptr<int64_t>(), nullptr, nullptr, nullptr);
  check_launch("qe_kernel (count)");
  at::Tensor ptr = at::zeros({n + 1}, opt_l);
  ptr.narrow(0, 1, n).copy_(at::cumsum(qcnt, 0));
  const int64_t nnz = ptr[n].item<int64_t>();
  at::Tensor qcol = at::empty({nnz}, opt_i);
  at::Tensor qval = at::empty({nnz}, features.options());
  qe_kernel<<<blocks_for(n), kThreads, 0, stream>>>(rank.data_ptr<int32_t>(), n, K1, KQ, ecol.data_ptr<int32_t>(),
                                                     ewt.data_ptr<float>(), ecnt.data_ptr<int32_t>(), cap, nullptr,
                                                     ptr.data_ptr<int64_t>(), qcol.data_ptr<int32_t>(),
                                                     qval.data_ptr<float>());
  check_launch("qe_kernel (fill)");
  ecol.reset();
  ewt.reset();

  auto inv = csr_transpose(ptr, qcol, qval, n);
  at::Tensor out = at::empty({n, n}, features.options());
  jaccard_rows_kernel<<<static_cast<unsigned int>(n), kThreads, 0, stream>>>(
      n, ptr.data_ptr<int64_t>(), qcol.data_ptr<int32_t>(), qval.data_ptr<float>(),
      std::get<0>(inv).data_ptr<int64_t>(), std::get<1>(inv).data_ptr<int32_t>(), std::get<2>(inv).data_ptr<float>(),
      out.data_ptr<float>());
  check_launch("jaccard_rows_kernel");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dmdl, CUDA, m) { m.impl("jaccard_distance", &jaccard_distance_cuda); }

}  // namespace jaccard
}  // namespace dmdl
