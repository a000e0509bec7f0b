// CUDA kernel of dmdl::knn: exact k-nearest neighbours by squared L2 distance (faiss
// IndexFlatL2's ranking, self included, ties by the smaller index), the same lists as the CPU
// kernel (csrc/cpu/knn_cpu.cpp) through the same per-row code and certificate (dmdl/knn.h).
//
//   1. norms: a warp per row, |x_j|^2 in float32 (approximate values) and double (canonical).
//   2. candidates: row tiles of at::mm (fp32, or bf16 with a float32 output), the approximate
//      values |x_j|^2 - 2 x_i.x_j in place, at::topk(k + margin, smallest). A tile holds at most
//      kTileFloats floats. The GEMM runs with whatever precision the user's global settings give
//      cuBLAS (never read or changed here): "fp32" and "tf32" are certified with the kTF32 bound;
//      bf16 with the residuals |h_i|, |x_i - h_i| of its bfloat16 input h (row_bound).
//   3. re-scoring: a warp per row; for each candidate the lanes stride over D (coalesced) in
//      dot_partial_d and add their double partial sums by shuffles; one lane sorts (sort_pairs_d)
//      and checks certified(lower_bound(row_bound(...), t)). Failed rows go to a device list
//      (atomic counter).
//   4. failed rows (one synchronisation to read their count): a wider candidate pass
//      (k + 2 margin + 8, fp32 GEMM, kTF32 bound), then a canonical scan of every column (a block
//      per group of failed rows, a warp per column, double dots, running top-k by topk_push).
// stats = (rows redone by the wider pass, rows redone canonically).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>

#include "dmdl/gpu.cuh"
#include "dmdl/knn_host.h"
#include "dmdl/knn.h"

namespace dmdl {
namespace knn {
namespace {

constexpr const char* kOpKnn = "dmdl::knn";
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / gpu::kWarpSize;
constexpr int64_t kTileFloats = int64_t{1} << 27;     // one GEMM tile: 512 MiB of float32
constexpr int kScanRows = 8;                          // failed rows per block of the canonical scan
constexpr int64_t kScanScratchBytes = int64_t{1} << 28;  // its per-warp top lists: 256 MiB at most
static_assert(kScanRows <= kWarps, "the canonical scan merges row r in warp r");

// Canonical double dot product of two float32 rows by the 32 lanes of a warp: lane l adds
// t = l, l + 32, ... (coalesced loads), then the partial sums are added by shuffles. Every lane
// returns the same value, and every kernel here computes a pair's dot the same way.
__device__ __forceinline__ double warp_dot_d(const float* a, const float* b, int64_t d, int lane) {
  return gpu::warp_sum_d(dot_partial_d(a, b, d, lane, gpu::kWarpSize));
}

// |x_i|^2 in float32 (sqf) and double (sqd); a warp per row.
__global__ void __launch_bounds__(kThreads) norms_kernel(const float* __restrict__ x, int64_t n, int64_t d,
                                                         float* __restrict__ sqf, double* __restrict__ sqd) {
  const int lane = threadIdx.x % gpu::kWarpSize;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / gpu::kWarpSize; i < n; i += stride) {
    const float* r = x + i * d;
    float s = 0.f;
    for (int64_t t = lane; t < d; t += gpu::kWarpSize) s += r[t] * r[t];
    s = gpu::warp_sum_f(s);
    const double sd = warp_dot_d(r, r, d, lane);
    if (lane == 0) {
      sqf[i] = s;
      sqd[i] = sd;
    }
  }
}

// The error model of the candidate GEMM with its maxima still on the device: maxima =
// {max |x_j|^2, min and max of the float32 |x_j|^2, max |h_j|, max |x_j - h_j|} (double [5]);
// hn/rn: the rows' |h_i|, |x_i - h_i| (bf16 with residuals), else null.
struct DeviceModel {
  int precision, residuals, out_rounded;
  const double* maxima;
  const double* hn;
  const double* rn;
};

__device__ inline Bound device_row_bound(const DeviceModel& dm, int64_t d, const double* sqd, int64_t i) {
  ErrorModel m{};
  m.precision = dm.precision;
  m.residuals = dm.residuals;
  m.out_rounded = dm.out_rounded;
  m.d = d;
  m.sqmax = dm.maxima[0];
  m.sqfmin = dm.maxima[1];
  m.sqfmax = dm.maxima[2];
  m.hmax = dm.maxima[3];
  m.rmax = dm.maxima[4];
  return dm.residuals ? row_bound(m, sqd[i], dm.hn[i], dm.rn[i]) : row_bound(m, sqd[i], 0.0, 0.0);
}

// Re-scores the kc candidates of the rows q < m (row i = rows[q], or q when rows is null): a warp
// per row. cand/approx: [m, kc] candidate columns (from at::topk, any order) and their
// approximate values; sd/sj: [m, kc] scratch. Writes the k first of the sorted candidates to
// out[i, :], and appends i to failed (counter *nfailed) when the certificate does not hold.
__global__ void __launch_bounds__(kThreads)
    rescore_kernel(const float* __restrict__ x, int64_t n, int64_t d, const double* __restrict__ sqd,
                   DeviceModel model, const int32_t* __restrict__ rows, int64_t m,
                   const int64_t* __restrict__ cand, const float* __restrict__ approx, int kc, int k, double* sd,
                   int32_t* sj, int32_t* __restrict__ out, int32_t* __restrict__ failed, int32_t* __restrict__ nfailed) {
  const int lane = threadIdx.x % gpu::kWarpSize;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / gpu::kWarpSize; q < m; q += stride) {
    const int64_t i = rows != nullptr ? static_cast<int64_t>(rows[q]) : q;
    const float* xi = x + i * d;
    const int64_t* cq = cand + q * kc;
    const float* aq = approx + q * kc;
    double* dq = sd + q * kc;
    int32_t* jq = sj + q * kc;
    float amax = -INFINITY;  // the largest approximate value kept (lane 0 uses it)
    for (int a = 0; a < kc; ++a) {
      const int32_t j = static_cast<int32_t>(cq[a]);
      const double dot = warp_dot_d(xi, x + static_cast<int64_t>(j) * d, d, lane);
      if (lane == 0) {
        dq[a] = canonical(sqd[j], dot);
        jq[a] = j;
        const float av = aq[a];
        amax = av > amax ? av : amax;
      }
    }
    if (lane == 0) {
      sort_pairs_d(dq, jq, kc);
      const double lower_t = lower_bound(device_row_bound(model, d, sqd, i), static_cast<double>(amax));
      if (!certified(dq, k, lower_t, kc >= n)) failed[atomicAdd(nfailed, 1)] = static_cast<int32_t>(i);
    }
    __syncwarp();
    for (int a = lane; a < k; a += gpu::kWarpSize) out[i * k + a] = jq[a];
    __syncwarp();
  }
}

// Exact k nearest of the failed rows rows[0:m] by a canonical scan of every column. A block per
// group of kScanRows rows; warp w takes the columns j = w, w + kWarps, ... and keeps, in lane 0,
// a running top-k per row (topk_push; (value, index) is a strict order, so the split over warps
// does not change the result); warp r then merges row r's kWarps lists. Scratch kd/kj: per block,
// kScanRows x (kWarps + 1) lists of k.
__global__ void __launch_bounds__(kThreads)
    canonical_kernel(const float* __restrict__ x, int64_t n, int64_t d, const double* __restrict__ sqd,
                     const int32_t* __restrict__ rows, int64_t m, int k, double* kd, int32_t* kj,
                     int32_t* __restrict__ out) {
  __shared__ int counts[kScanRows][kWarps];
  const int lane = threadIdx.x % gpu::kWarpSize;
  const int warp = threadIdx.x / gpu::kWarpSize;
  const int64_t list = k;
  double* bkd = kd + static_cast<int64_t>(blockIdx.x) * kScanRows * (kWarps + 1) * list;
  int32_t* bkj = kj + static_cast<int64_t>(blockIdx.x) * kScanRows * (kWarps + 1) * list;
  const int64_t groups = (m + kScanRows - 1) / kScanRows;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const int64_t q0 = g * kScanRows;
    const int nr = static_cast<int>(m - q0 < kScanRows ? m - q0 : kScanRows);
    int cnt[kScanRows];
#pragma unroll
    for (int r = 0; r < kScanRows; ++r) cnt[r] = 0;
    for (int64_t j = warp; j < n; j += kWarps) {
      const float* xj = x + j * d;
      const double sqj = sqd[j];
#pragma unroll
      for (int r = 0; r < kScanRows; ++r) {
        if (r < nr) {  // uniform over the block
          const float* xi = x + static_cast<int64_t>(rows[q0 + r]) * d;
          const double dot = warp_dot_d(xi, xj, d, lane);
          if (lane == 0) {
            const int64_t off = (static_cast<int64_t>(r) * (kWarps + 1) + warp) * list;
            cnt[r] = topk_push(bkd + off, bkj + off, cnt[r], k, canonical(sqj, dot), static_cast<int32_t>(j));
          }
        }
      }
    }
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < kScanRows; ++r) counts[r][warp] = cnt[r];
    }
    __syncthreads();
    if (lane == 0 && warp < nr) {
      const int r = warp;
      const int64_t fin = (static_cast<int64_t>(r) * (kWarps + 1) + kWarps) * list;
      int c = 0;
      for (int w = 0; w < kWarps; ++w) {
        const int64_t off = (static_cast<int64_t>(r) * (kWarps + 1) + w) * list;
        for (int e = 0; e < counts[r][w]; ++e) c = topk_push(bkd + fin, bkj + fin, c, k, bkd[off + e], bkj[off + e]);
      }
    }
    __syncthreads();
    for (int r = 0; r < nr; ++r) {
      const int64_t i = rows[q0 + r];
      const int64_t fin = (static_cast<int64_t>(r) * (kWarps + 1) + kWarps) * list;
      for (int a = threadIdx.x; a < k; a += kThreads) out[i * k + a] = bkj[fin + a];
    }
    __syncthreads();  // the scratch and counts are reused by the next group
  }
}

// G = xa @ xb^T as float32: fp32 at::mm, or bf16 inputs with a float32 output (no bf16 rounding
// of G); a torch without mm.dtype falls back to a bf16 output, and *out_rounded records it.
at::Tensor gemm_float(const at::Tensor& xa, const at::Tensor& xb, bool* out_rounded) {
  if (xa.scalar_type() == at::kFloat) return at::mm(xa, xb.t());
  try {
    return at::mm(xa, xb.t(), at::kFloat);
  } catch (const c10::Error&) {
    *out_rounded = true;
    return at::mm(xa, xb.t()).to(at::kFloat);
  }
}

// Candidates of the rows of xa against every row of xb (the columns): cand/approx [m, kc] get the
// kc smallest approximate values sqf[j] - 2 G[q, j] (the CPU's float formula) and their columns.
// Returns whether the GEMM output was rounded to bfloat16.
bool candidates(const at::Tensor& xa, const at::Tensor& xb, const at::Tensor& sqf, int64_t kc, at::Tensor& cand,
                at::Tensor& approx) {
  const int64_t m = xa.size(0), n = xb.size(0);
  const int64_t tile = std::max<int64_t>(1, std::min<int64_t>(m, kTileFloats / n));
  bool out_rounded = false;
  for (int64_t r0 = 0; r0 < m; r0 += tile) {
    const int64_t b = std::min(tile, m - r0);
    at::Tensor g = gemm_float(xa.narrow(0, r0, b), xb, &out_rounded);
    g.mul_(-2.0).add_(sqf);  // -2 g is exact, then one rounding: bit for bit sqf - 2.f * g
    const auto top = at::topk(g, kc, /*dim=*/1, /*largest=*/false, /*sorted=*/false);
    approx.narrow(0, r0, b).copy_(std::get<0>(top));
    cand.narrow(0, r0, b).copy_(std::get<1>(top));
  }
  return out_rounded;
}

// Re-scores the candidates of m rows (rows: int32 device list, or undefined for all rows);
// returns the failed rows (int32 device tensor of their count; one synchronisation).
at::Tensor rescore(const at::Tensor& x, const at::Tensor& sqd, const DeviceModel& model, const at::Tensor& rows,
                   int64_t m, const at::Tensor& cand, const at::Tensor& approx, int64_t k, at::Tensor& rank,
                   cudaStream_t stream) {
  const int64_t n = x.size(0), d = x.size(1);
  const int64_t kc = cand.size(1);
  const auto opt_i = x.options().dtype(at::kInt);
  at::Tensor sd = at::empty({m, kc}, x.options().dtype(at::kDouble));
  at::Tensor sj = at::empty({m, kc}, opt_i);
  at::Tensor failed = at::empty({m}, opt_i);
  at::Tensor nfailed = at::zeros({1}, opt_i);
  rescore_kernel<<<gpu::blocks_for_warps(m, kWarps), kThreads, 0, stream>>>(
      x.data_ptr<float>(), n, d, sqd.data_ptr<double>(), model, rows.defined() ? rows.data_ptr<int32_t>() : nullptr, m,
      cand.data_ptr<int64_t>(), approx.data_ptr<float>(), static_cast<int>(kc), static_cast<int>(k),
      sd.data_ptr<double>(), sj.data_ptr<int32_t>(), rank.data_ptr<int32_t>(), failed.data_ptr<int32_t>(),
      nfailed.data_ptr<int32_t>());
  gpu::check_launch(kOpKnn, "rescore_kernel");
  const int64_t nf = nfailed.item<int32_t>();
  return failed.narrow(0, 0, nf);
}

// Canonical scan of the rows `rows` (int32 device list), in launches whose scratch stays bounded.
void canonical_rows(const at::Tensor& x, const at::Tensor& sqd, const at::Tensor& rows, int64_t k, at::Tensor& rank,
                    cudaStream_t stream) {
  const int64_t n = x.size(0), d = x.size(1), m = rows.size(0);
  const int64_t per_block = int64_t{kScanRows} * (kWarps + 1) * k;
  const int64_t max_blocks = std::max<int64_t>(1, kScanScratchBytes / (per_block * 12));
  const int64_t groups = (m + kScanRows - 1) / kScanRows;
  const int64_t blocks = std::min<int64_t>({groups, max_blocks, int64_t{65535}});
  at::Tensor kd = at::empty({blocks * per_block}, x.options().dtype(at::kDouble));
  at::Tensor kj = at::empty({blocks * per_block}, x.options().dtype(at::kInt));
  canonical_kernel<<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
      x.data_ptr<float>(), n, d, sqd.data_ptr<double>(), rows.data_ptr<int32_t>(), m, static_cast<int>(k),
      kd.data_ptr<double>(), kj.data_ptr<int32_t>(), rank.data_ptr<int32_t>());
  gpu::check_launch(kOpKnn, "canonical_kernel");
}

// Returns (rank int32 [N, k], stats int64 [2] = rows redone by a wider pass, rows redone canonically).
std::tuple<at::Tensor, at::Tensor> knn_cuda(const at::Tensor& features, int64_t k, std::string precision,
                                            int64_t margin) {
  host::check_features(features, kOpKnn, c10::DeviceType::CUDA);
  const int64_t n = features.size(0), d = features.size(1);
  host::check_k(k, margin, n, kOpKnn);
  const int prec = host::parse_precision(precision, kOpKnn);
  // cuBLAS may run a float32 GEMM on TF32 tensor cores (the user's setting): certify as TF32.
  const int bound = prec == kBF16 ? kBF16 : kTF32;
  const c10::cuda::CUDAGuard guard(features.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor& x = features;
  const int64_t kc = std::min<int64_t>(n, k + margin);

  at::Tensor sqf = at::empty({n}, x.options());
  at::Tensor sqd = at::empty({n}, x.options().dtype(at::kDouble));
  norms_kernel<<<gpu::blocks_for_warps(n, kWarps), kThreads, 0, stream>>>(x.data_ptr<float>(), n, d,
                                                                          sqf.data_ptr<float>(), sqd.data_ptr<double>());
  gpu::check_launch(kOpKnn, "norms_kernel");

  at::Tensor rank = at::empty({n, k}, x.options().dtype(at::kInt));
  at::Tensor failed;
  // Maxima of the error model (DeviceModel), kept on the device: no synchronisation.
  const at::Tensor sqf_d = sqf.to(at::kDouble);
  at::Tensor zero = at::zeros({}, sqd.options());
  at::Tensor maxima = at::stack({sqd.max(), sqf_d.min(), sqf_d.max(), zero, zero});
  {
    const at::Tensor xg = prec == kBF16 ? x.to(at::kBFloat16) : x;
    DeviceModel model{bound, 0, 0, nullptr, nullptr, nullptr};
    at::Tensor hn, rn;
    if (prec == kBF16) {
      // |h_i| and |x_i - h_i| in double (x - h is exact in float32: h is x rounded to 8 bits).
      hn = at::linalg_vector_norm(xg, 2, {1}, false, at::kDouble);
      rn = at::linalg_vector_norm(x - xg.to(at::kFloat), 2, {1}, false, at::kDouble);
      maxima = at::stack({sqd.max(), sqf_d.min(), sqf_d.max(), hn.max(), rn.max()});
      model.residuals = 1;
      model.hn = hn.data_ptr<double>();
      model.rn = rn.data_ptr<double>();
    }
    at::Tensor cand = at::empty({n, kc}, x.options().dtype(at::kLong));
    at::Tensor approx = at::empty({n, kc}, x.options());
    model.out_rounded = candidates(xg, xg, sqf, kc, cand, approx) ? 1 : 0;
    model.maxima = maxima.data_ptr<double>();
    failed = rescore(x, sqd, model, at::Tensor(), n, cand, approx, k, rank, stream);
  }
  int64_t wide = 0;
  if (failed.size(0) > 0) {
    // Every CUDA precision is certified with a reduced-precision bound: a wider fp32 pass first.
    wide = failed.size(0);
    const int64_t kc2 = std::min<int64_t>(n, k + 2 * margin + 8);
    at::Tensor cand = at::empty({wide, kc2}, x.options().dtype(at::kLong));
    at::Tensor approx = at::empty({wide, kc2}, x.options());
    candidates(x.index_select(0, failed.to(at::kLong)), x, sqf, kc2, cand, approx);
    const DeviceModel model{kTF32, 0, 0, maxima.data_ptr<double>(), nullptr, nullptr};
    failed = rescore(x, sqd, model, failed, wide, cand, approx, k, rank, stream);
  }
  const int64_t canon = failed.size(0);
  if (canon > 0) canonical_rows(x, sqd, failed, k, rank, stream);

  at::Tensor stats = at::empty({2}, at::TensorOptions().dtype(at::kLong));
  stats[0] = wide;
  stats[1] = canon;
  return {rank, stats.to(x.device())};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmdl, CUDA, m) { m.impl("knn", &knn_cuda); }

}  // namespace knn
}  // namespace dmdl
