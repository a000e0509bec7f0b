// CUDA kernel of dmdl::jaccard_sparse: the k-reciprocal Jaccard distance (docs/dmdl.md#A9) from
// exact neighbour lists (dmdl::knn) as a CSR matrix of every pair with d < 1, the result of the
// CPU kernel (csrc/cpu/jaccard_cpu.cpp) up to float rounding order. Each step runs the per-item
// functions of dmdl/jaccard.h that the CPU's per-row functions are made of:
//
//   1. reciprocal sets R(i, k1), R(i, round(k1/2)): a warp per row; lane a tests rank[i, a]
//      (is_reciprocal), a ballot compacts the hits in rank order.
//   2. expansion and V weights: a warp per row; the lanes test the members of R(i, k1)
//      (expansion_accepts), lane 0 builds the sorted union (insert_set); the dot products are
//      warp-parallel (dot_partial_f over strided D, shuffle sum), lane 0 runs softmax_inplace.
//   3. query expansion (count pass, then fill): a warp per row; the neighbours over the lanes,
//      next column by a warp minimum of qe_next_col, the sum in neighbour order by shuffles.
//   4. inverted index (host::csr_transpose), then the min-plus product: a block per row (blocks
//      grid-stride over rows) over the row's flattened (entry, inverted entry) pairs, atomicAdd of
//      min_plus_term into a per-block accumulator of N floats in global memory, touched columns
//      marked in a per-block bitmap (shared memory when N <= kSharedBitmapWords * 32). The
//      bitmap is then read in column order with a block scan: ascending columns, no sort. Rows are
//      written to a temporary of min(sum of their columns' lengths, N) slots per row and compacted.
// Memory: the accumulators are capped at kAccFloats floats in all (gridDim <= kAccFloats / N).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "dmdl/gpu.cuh"
#include "dmdl/jaccard.h"
#include "dmdl/jaccard_host.h"

namespace dmdl {
namespace jaccard {

// CUDA runtime version the kernels were compiled with (for _C.build_info()).
int cuda_runtime_version_compiled() { return CUDART_VERSION; }

namespace {

constexpr const char* kOp = "dmdl::jaccard_sparse";
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / gpu::kWarpSize;
constexpr int64_t kAccFloats = int64_t{1} << 28;      // per-block accumulators: 1 GiB at most
constexpr int64_t kSharedBitmapWords = 10240;         // 40 KiB of dynamic shared memory
constexpr int kBlocksPerSM = 8;

__device__ __forceinline__ int64_t warp_id() {
  return static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / gpu::kWarpSize;
}
__device__ __forceinline__ int64_t warp_stride() { return static_cast<int64_t>(gridDim.x) * kWarps; }

// reciprocal_row by a warp: lane a tests rank[i, a]; returns the count (in every lane).
__device__ __forceinline__ int warp_reciprocal_row(const int32_t* rank, int kcols, int32_t i, int k, int32_t* out,
                                                   int lane) {
  const int32_t* fwd = rank + static_cast<int64_t>(i) * kcols;
  int n = 0;
  for (int a0 = 0; a0 < k; a0 += gpu::kWarpSize) {
    const int a = a0 + lane;
    int32_t j = 0;
    bool hit = false;
    if (a < k) {
      j = fwd[a];
      hit = is_reciprocal(rank, kcols, i, j, k);
    }
    const unsigned mask = __ballot_sync(gpu::kFullMask, hit);
    if (hit) out[n + __popc(mask & gpu::lanemask_lt(lane))] = j;
    n += __popc(mask);
  }
  return n;
}

__global__ void __launch_bounds__(kThreads)
    reciprocal_kernel(const int32_t* __restrict__ rank, int64_t n, int k1, int kh, int32_t* __restrict__ r1,
                      int32_t* __restrict__ c1, int32_t* __restrict__ rh, int32_t* __restrict__ ch) {
  const int lane = threadIdx.x % gpu::kWarpSize;
  for (int64_t i = warp_id(); i < n; i += warp_stride()) {
    const int a = warp_reciprocal_row(rank, k1, static_cast<int32_t>(i), k1, r1 + i * k1, lane);
    const int b = warp_reciprocal_row(rank, k1, static_cast<int32_t>(i), kh, rh + i * kh, lane);
    if (lane == 0) {
      c1[i] = a;
      ch[i] = b;
    }
  }
}

// expand_row + softmax_weights_row by a warp: ecol/ewt rows of capacity cap, sizes in ecnt.
__global__ void __launch_bounds__(kThreads)
    expand_weights_kernel(const float* __restrict__ x, int64_t n, int64_t d, const int32_t* __restrict__ r1,
                          const int32_t* __restrict__ c1, int s1, const int32_t* __restrict__ rh,
                          const int32_t* __restrict__ ch, int sh, int64_t cap, int32_t* ecol, int32_t* __restrict__ ecnt,
                          float* ewt) {
  const int lane = threadIdx.x % gpu::kWarpSize;
  for (int64_t i = warp_id(); i < n; i += warp_stride()) {
    const int32_t* ri = r1 + i * s1;
    const int ni = c1[i];
    int32_t* cols = ecol + i * cap;
    int m = 0;
    if (lane == 0) m = insert_set(cols, 0, ri, ni);
    for (int a0 = 0; a0 < ni; a0 += gpu::kWarpSize) {
      const int a = a0 + lane;
      bool take = false;
      if (a < ni) {
        const int32_t cand = ri[a];
        take = expansion_accepts(ri, ni, rh + static_cast<int64_t>(cand) * sh, ch[cand]);
      }
      unsigned mask = __ballot_sync(gpu::kFullMask, take);
      if (lane == 0) {
        while (mask != 0u) {
          const int b = __ffs(mask) - 1;
          mask &= mask - 1u;
          const int32_t cand = ri[a0 + b];
          m = insert_set(cols, m, rh + static_cast<int64_t>(cand) * sh, ch[cand]);
        }
      }
    }
    m = __shfl_sync(gpu::kFullMask, m, 0);
    __syncwarp();  // lane 0's writes to cols are read by every lane below
    const float* xi = x + i * d;
    float* w = ewt + i * cap;
    for (int a = 0; a < m; ++a) {
      const float* xj = x + static_cast<int64_t>(cols[a]) * d;
      const float dot = gpu::warp_sum_f(dot_partial_f(xi, xj, d, lane, gpu::kWarpSize));
      if (lane == 0) w[a] = weight_logit(dot);
    }
    if (lane == 0) {
      softmax_inplace(w, m);
      ecnt[i] = m;
    }
    __syncwarp();
  }
}

// qe_merge_row by a warp: counting pass (qcol == nullptr: qcnt[i] = non-zeros) or fill pass
// (columns and values at ptr[i]). The column sum runs in neighbour order, as on the CPU.
__global__ void __launch_bounds__(kThreads)
    qe_kernel(const int32_t* __restrict__ rank, int64_t n, int k1, int kq, const int32_t* __restrict__ ecol,
              const float* __restrict__ ewt, const int32_t* __restrict__ ecnt, int64_t cap, int64_t* __restrict__ qcnt,
              const int64_t* __restrict__ ptr, int32_t* __restrict__ qcol, float* __restrict__ qval) {
  const int lane = threadIdx.x % gpu::kWarpSize;
  const float denom = static_cast<float>(kq);
  for (int64_t i = warp_id(); i < n; i += warp_stride()) {
    const int32_t* nbrs = rank + i * k1;
    int32_t* oc = qcol != nullptr ? qcol + ptr[i] : nullptr;
    float* ov = qcol != nullptr ? qval + ptr[i] : nullptr;
    int64_t cnt = 0;
    int32_t cur = -1;
    while (true) {
      int32_t next = INT32_MAX;
      for (int r = lane; r < kq; r += gpu::kWarpSize) {
        const int32_t c = qe_next_col(nbrs[r], cur, ecol, ecnt, cap);
        next = c < next ? c : next;
      }
      next = gpu::warp_min_i32(next);
      if (next == INT32_MAX) break;
      float s = 0.f;
      for (int r0 = 0; r0 < kq; r0 += gpu::kWarpSize) {
        const int r = r0 + lane;
        const float v = r < kq ? qe_value(nbrs[r], next, ecol, ewt, ecnt, cap) : 0.f;
        const int nb = kq - r0 < gpu::kWarpSize ? kq - r0 : gpu::kWarpSize;
        for (int b = 0; b < nb; ++b) s += __shfl_sync(gpu::kFullMask, v, b);
      }
      const float v = s / denom;
      if (v != 0.f) {
        if (oc != nullptr && lane == 0) {
          oc[cnt] = next;
          ov[cnt] = v;
        }
        ++cnt;
      }
      cur = next;
    }
    if (qcol == nullptr && lane == 0) qcnt[i] = cnt;
  }
}

// The min-plus product of V_qe with its transpose, a block per row (grid-stride). Row i's
// flattened pairs f in [pairoff[ptr[i]], pairoff[ptr[i+1]]) map to its entry p (pairoff[p] <= f <
// pairoff[p+1]) and the inverted entry t = cptr[qcol[p]] + f - pairoff[p]. Writes the row's
// stored distances, columns ascending, to tcol/tval at toff[i] and their number to kept[i].
// acc_all: gridDim x n floats, all 0; bm_all: gridDim x nwords zero words, unless the bitmap
// lives in dynamic shared memory (shared_bm). acc and the bitmap are left at 0 after each row.
__global__ void __launch_bounds__(kThreads)
    minplus_kernel(int64_t n, const int64_t* __restrict__ ptr, const int32_t* __restrict__ qcol,
                   const float* __restrict__ qval, const int64_t* __restrict__ pairoff, const int64_t* __restrict__ cptr,
                   const int32_t* __restrict__ irow, const float* __restrict__ ival, float* acc_all, uint32_t* bm_all,
                   int shared_bm, int64_t nwords, const int64_t* __restrict__ toff, int32_t* __restrict__ tcol,
                   float* __restrict__ tval, int64_t* __restrict__ kept) {
  extern __shared__ uint32_t bm_shared[];
  __shared__ int warp_sums[kWarps];
  float* acc = acc_all + static_cast<int64_t>(blockIdx.x) * n;
  uint32_t* bm = shared_bm ? bm_shared : bm_all + static_cast<int64_t>(blockIdx.x) * nwords;
  if (shared_bm) {
    for (int64_t w = threadIdx.x; w < nwords; w += kThreads) bm[w] = 0u;
  }
  __syncthreads();
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t p0 = ptr[i], p1 = ptr[i + 1];
    const int64_t f1 = pairoff[p1];
    for (int64_t f = pairoff[p0] + threadIdx.x; f < f1; f += kThreads) {
      int64_t lo = p0, hi = p1 - 1;  // the last p in [p0, p1) with pairoff[p] <= f
      while (lo < hi) {
        const int64_t mid = (lo + hi + 1) >> 1;
        if (pairoff[mid] <= f) lo = mid; else hi = mid - 1;
      }
      const int64_t t = cptr[qcol[lo]] + (f - pairoff[lo]);
      const int32_t j = irow[t];
      atomicAdd(acc + j, min_plus_term(qval[lo], ival[t]));
      atomicOr(bm + (j >> 5), 1u << (j & 31));
    }
    __syncthreads();
    // Read back in column order: a chunk of kThreads bitmap words at a time, a block scan of the
    // number of stored distances per word gives each thread its output position.
    const int64_t base = toff[i];
    int64_t written = 0;
    for (int64_t w0 = 0; w0 < nwords; w0 += kThreads) {
      const int64_t w = w0 + threadIdx.x;
      const uint32_t word = w < nwords ? *reinterpret_cast<volatile uint32_t*>(bm + w) : 0u;
      int cnt = 0;
      for (uint32_t b = word; b != 0u; b &= b - 1u) {
        const int64_t j = (w << 5) + (__ffs(b) - 1);
        cnt += stored_distance(jaccard_from_overlap(__ldcg(acc + j))) ? 1 : 0;
      }
      int total = 0;
      const int excl = gpu::block_exclusive_scan<kWarps>(cnt, &total, warp_sums);
      int64_t pos = base + written + excl;
      for (uint32_t b = word; b != 0u; b &= b - 1u) {
        const int64_t j = (w << 5) + (__ffs(b) - 1);
        const float dist = jaccard_from_overlap(__ldcg(acc + j));
        acc[j] = 0.f;
        if (stored_distance(dist)) {
          tcol[pos] = static_cast<int32_t>(j);
          tval[pos] = dist;
          ++pos;
        }
      }
      if (word != 0u) bm[w] = 0u;
      written += total;
    }
    if (threadIdx.x == 0) kept[i] = written;
    __syncthreads();  // acc and the bitmap are clean before the next row
  }
}

// Copies each row's kept entries from the temporary (at toff[i]) to the CSR (at crow[i]); a warp per row.
__global__ void __launch_bounds__(kThreads)
    compact_kernel(int64_t n, const int64_t* __restrict__ toff, const int64_t* __restrict__ crow,
                   const int32_t* __restrict__ tcol, const float* __restrict__ tval, int32_t* __restrict__ col,
                   float* __restrict__ val) {
  const int lane = threadIdx.x % gpu::kWarpSize;
  for (int64_t i = warp_id(); i < n; i += warp_stride()) {
    const int64_t src = toff[i], dst = crow[i], cnt = crow[i + 1] - crow[i];
    for (int64_t t = lane; t < cnt; t += gpu::kWarpSize) {
      col[dst + t] = tcol[src + t];
      val[dst + t] = tval[src + t];
    }
  }
}

// Returns (crow int64 [N+1], col int32 [nnz], val float32 [nnz]): row i holds the columns j,
// ascending, with d_ij < 1 (d_ij = 0 stored as an explicit 0). Every absent pair has d_ij = 1.
std::tuple<at::Tensor, at::Tensor, at::Tensor> jaccard_sparse_cuda(const at::Tensor& features, const at::Tensor& rank,
                                                                   int64_t k2) {
  host::check_features(features, kOp, c10::DeviceType::CUDA);
  host::check_rank(rank, features, kOp);
  TORCH_CHECK(k2 >= 1, kOp, ": `k2` must be >= 1, got ", k2);
  const c10::cuda::CUDAGuard guard(features.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = features.size(0);
  const int64_t d = features.size(1);
  const int K1 = static_cast<int>(rank.size(1));
  const int KH = half_cols(K1);
  const int KQ = static_cast<int>(std::min<int64_t>(k2, K1));  // reference: initial_rank[i, :k2] has k1 columns
  const auto opt_i = features.options().dtype(at::kInt);
  const auto opt_l = features.options().dtype(at::kLong);
  const float* x = features.data_ptr<float>();
  const int32_t* rk = rank.data_ptr<int32_t>();
  const unsigned int row_blocks = gpu::blocks_for_warps(n, kWarps);

  // 1. k-reciprocal sets R(i, k1) and R(i, round(k1/2)).
  at::Tensor r1 = at::empty({n, K1}, opt_i), c1 = at::empty({n}, opt_i);
  at::Tensor rh = at::empty({n, KH}, opt_i), ch = at::empty({n}, opt_i);
  reciprocal_kernel<<<row_blocks, kThreads, 0, stream>>>(rk, n, K1, KH, r1.data_ptr<int32_t>(), c1.data_ptr<int32_t>(),
                                                         rh.data_ptr<int32_t>(), ch.data_ptr<int32_t>());
  gpu::check_launch(kOp, "reciprocal_kernel");

  // 2. expanded sets and their softmax weights: the sparse rows of V.
  const int64_t cap = expansion_capacity(K1, n);
  at::Tensor ecol = at::empty({n, cap}, opt_i), ecnt = at::empty({n}, opt_i);
  at::Tensor ewt = at::empty({n, cap}, features.options());
  expand_weights_kernel<<<row_blocks, kThreads, 0, stream>>>(
      x, n, d, r1.data_ptr<int32_t>(), c1.data_ptr<int32_t>(), K1, rh.data_ptr<int32_t>(), ch.data_ptr<int32_t>(), KH,
      cap, ecol.data_ptr<int32_t>(), ecnt.data_ptr<int32_t>(), ewt.data_ptr<float>());
  gpu::check_launch(kOp, "expand_weights_kernel");

  // 3. query expansion (CSR): count, then fill.
  at::Tensor qcnt = at::empty({n}, opt_l);
  qe_kernel<<<row_blocks, kThreads, 0, stream>>>(rk, n, K1, KQ, ecol.data_ptr<int32_t>(), ewt.data_ptr<float>(),
                                                 ecnt.data_ptr<int32_t>(), cap, qcnt.data_ptr<int64_t>(), nullptr,
                                                 nullptr, nullptr);
  gpu::check_launch(kOp, "qe_kernel (count)");
  at::Tensor ptr = at::zeros({n + 1}, opt_l);
  ptr.narrow(0, 1, n).copy_(at::cumsum(qcnt, 0));
  const int64_t nnz_v = ptr[n].item<int64_t>();
  at::Tensor qcol = at::empty({nnz_v}, opt_i);
  at::Tensor qval = at::empty({nnz_v}, features.options());
  qe_kernel<<<row_blocks, kThreads, 0, stream>>>(rk, n, K1, KQ, ecol.data_ptr<int32_t>(), ewt.data_ptr<float>(),
                                                 ecnt.data_ptr<int32_t>(), cap, nullptr, ptr.data_ptr<int64_t>(),
                                                 qcol.data_ptr<int32_t>(), qval.data_ptr<float>());
  gpu::check_launch(kOp, "qe_kernel (fill)");
  ecol.reset();
  ewt.reset();

  // 4. inverted index, the row pair offsets and the temporary of min(pairs, N) slots per row.
  const auto inv = host::csr_transpose(ptr, qcol, qval, n);
  const at::Tensor& cptr = std::get<0>(inv);
  const at::Tensor collen = cptr.narrow(0, 1, n) - cptr.narrow(0, 0, n);
  at::Tensor pairoff = at::zeros({nnz_v + 1}, opt_l);
  if (nnz_v > 0) pairoff.narrow(0, 1, nnz_v).copy_(at::cumsum(collen.index_select(0, qcol.to(at::kLong)), 0));
  const at::Tensor rowpairs = pairoff.index_select(0, ptr);
  const at::Tensor bound = (rowpairs.narrow(0, 1, n) - rowpairs.narrow(0, 0, n)).clamp_max(n);
  at::Tensor toff = at::zeros({n + 1}, opt_l);
  toff.narrow(0, 1, n).copy_(at::cumsum(bound, 0));
  const int64_t slots = toff[n].item<int64_t>();
  at::Tensor tcol = at::empty({slots}, opt_i);
  at::Tensor tval = at::empty({slots}, features.options());
  at::Tensor kept = at::empty({n}, opt_l);

  const int64_t nwords = (n + 31) / 32;
  const bool shared_bm = nwords <= kSharedBitmapWords;
  const int64_t sms = gpu::multiprocessors(features.device().index(), kOp);
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>({n, sms * kBlocksPerSM, kAccFloats / n}));
  at::Tensor acc = at::zeros({blocks * n}, features.options());
  at::Tensor bm = at::zeros({shared_bm ? 0 : blocks * nwords}, opt_i);
  const size_t smem = shared_bm ? static_cast<size_t>(nwords) * sizeof(uint32_t) : 0;
  minplus_kernel<<<static_cast<unsigned int>(blocks), kThreads, smem, stream>>>(
      n, ptr.data_ptr<int64_t>(), qcol.data_ptr<int32_t>(), qval.data_ptr<float>(), pairoff.data_ptr<int64_t>(),
      cptr.data_ptr<int64_t>(), std::get<1>(inv).data_ptr<int32_t>(), std::get<2>(inv).data_ptr<float>(),
      acc.data_ptr<float>(), shared_bm ? nullptr : reinterpret_cast<uint32_t*>(bm.data_ptr<int32_t>()),
      shared_bm ? 1 : 0, nwords, toff.data_ptr<int64_t>(), tcol.data_ptr<int32_t>(), tval.data_ptr<float>(),
      kept.data_ptr<int64_t>());
  gpu::check_launch(kOp, "minplus_kernel");
  acc.reset();
  bm.reset();

  // 5. the CSR.
  at::Tensor crow = at::zeros({n + 1}, opt_l);
  crow.narrow(0, 1, n).copy_(at::cumsum(kept, 0));
  const int64_t nnz = crow[n].item<int64_t>();
  at::Tensor col = at::empty({nnz}, opt_i);
  at::Tensor val = at::empty({nnz}, features.options());
  compact_kernel<<<row_blocks, kThreads, 0, stream>>>(n, toff.data_ptr<int64_t>(), crow.data_ptr<int64_t>(),
                                                      tcol.data_ptr<int32_t>(), tval.data_ptr<float>(),
                                                      col.data_ptr<int32_t>(), val.data_ptr<float>());
  gpu::check_launch(kOp, "compact_kernel");
  return {crow, col, val};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmdl, CUDA, m) { m.impl("jaccard_sparse", &jaccard_sparse_cuda); }

}  // namespace jaccard
}  // namespace dmdl
