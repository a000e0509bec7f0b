// CPU kernels of dmdl::knn and dmdl::knn_refine: exact k-nearest neighbours by squared L2
// distance (faiss IndexFlatL2's ranking, self included, ties by the smaller index), with the
// candidate GEMM in fp32 or bf16 and the exactness certificate of dmdl/knn.h.
//
// The candidate pass is the whole cost: X X^T is symmetric, so only the tiles (I, J >= I) are
// multiplied (at::mm: MKL in fp32, oneDNN in bf16 with a bf16 output), and each tile feeds the
// running top lists of its rows (I) and, transposed, of its columns (J). Half the FLOPs of the
// full GEMM, no N x N array. The bf16 certificate uses the measured rounding residuals of the
// rows (dmdl/knn.h row_bound); when more than half the rows fail it anyway, one symmetric fp32
// pass redoes them all (cheaper than per-row passes over full rows).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "dmdl/knn_host.h"
#include "dmdl/knn.h"

namespace dmdl {
namespace knn {
namespace {

constexpr const char* kOpKnn = "dmdl::knn";
constexpr const char* kOpRefine = "dmdl::knn_refine";
constexpr int64_t kTile = 1024;

// |x_j|^2 in float32 (the values the approximate pass uses) and in double (the canonical ones).
void squared_norms(const float* x, int64_t n, int64_t d, float* sqf, double* sqd) {
  at::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      const float* r = x + j * d;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t t = 0; t < d; ++t) s += r[t] * r[t];
      sqf[j] = s;
      sqd[j] = dot_partial_d(r, r, d, 0, 1);
    }
  });
}

// |h_j| and |x_j - h_j| in double, h = the bfloat16 copy of x (the residual is exact in double).
void bf16_norms(const float* x, const at::BFloat16* h, int64_t n, int64_t d, double* hn, double* rn) {
  at::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      double sh = 0.0, sr = 0.0;
      for (int64_t t = 0; t < d; ++t) {
        const double hv = static_cast<double>(static_cast<float>(h[j * d + t]));
        const double rv = static_cast<double>(x[j * d + t]) - hv;
        sh += hv * hv;
        sr += rv * rv;
      }
      hn[j] = std::sqrt(sh);
      rn[j] = std::sqrt(sr);
    }
  });
}

// Norms the certificate needs (dmdl/knn.h ErrorModel): float32 and double |x_j|^2 and, for the
// bf16 GEMM input h, |h_j| and |x_j - h_j|.
struct Norms {
  std::vector<float> sqf;
  std::vector<double> sqd, hn, rn;
};

ErrorModel error_model(const Norms& nm, int precision, int64_t d) {
  ErrorModel m{};
  m.precision = precision;
  m.d = d;
  m.sqmax = *std::max_element(nm.sqd.begin(), nm.sqd.end());
  const auto mm = std::minmax_element(nm.sqf.begin(), nm.sqf.end());
  m.sqfmin = *mm.first;
  m.sqfmax = *mm.second;
  if (precision == kBF16 && !nm.hn.empty()) {
    m.residuals = 1;
    m.out_rounded = 1;  // at::mm of bfloat16 tensors returns bfloat16 on the CPU
    m.hmax = *std::max_element(nm.hn.begin(), nm.hn.end());
    m.rmax = *std::max_element(nm.rn.begin(), nm.rn.end());
  }
  return m;
}

Bound bound_of(const ErrorModel& m, const Norms& nm, int64_t i) {
  return m.residuals ? row_bound(m, nm.sqd[i], nm.hn[i], nm.rn[i]) : row_bound(m, nm.sqd[i], 0.0, 0.0);
}

// Scans the tile g [bi, bj] (rows i0.., columns j0..) into the running top lists of its rows
// and, when it is off the diagonal, of its columns (g transposed). G: float or at::BFloat16.
template <typename G>
void scan_tile(const at::Tensor& g, int64_t i0, int64_t j0, const float* sqf, int kc, float* cd, int32_t* cj,
               int32_t* cc) {
  const int64_t bi = g.size(0), bj = g.size(1);
  const G* gp = g.data_ptr<G>();
  at::parallel_for(0, bi, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t i = i0 + r;
      cc[i] = topk_scan(gp + r * bj, sqf + j0, bj, static_cast<int32_t>(j0), cd + i * kc, cj + i * kc, cc[i], kc);
    }
  });
  if (j0 == i0) return;
  const at::Tensor gt = g.t().contiguous();
  const G* gtp = gt.data_ptr<G>();
  at::parallel_for(0, bj, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t j = j0 + r;
      cc[j] = topk_scan(gtp + r * bi, sqf + i0, bi, static_cast<int32_t>(i0), cd + j * kc, cj + j * kc, cc[j], kc);
    }
  });
}

// Running top-kc candidates of every row from the symmetric tiles of X X^T.
// xg: the GEMM input (float32 or bfloat16 copy of x; at::mm returns the tile in that type).
// cd/cj: [n, kc], cc: [n] counts.
void candidates_symmetric(const at::Tensor& xg, const float* sqf, int64_t n, int kc, float* cd, int32_t* cj,
                          int32_t* cc) {
  std::fill(cc, cc + n, 0);
  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    const at::Tensor xi = xg.narrow(0, i0, std::min(kTile, n - i0));
    for (int64_t j0 = i0; j0 < n; j0 += kTile) {
      const at::Tensor g = at::mm(xi, xg.narrow(0, j0, std::min(kTile, n - j0)).t()).contiguous();
      if (g.scalar_type() == at::kBFloat16) {
        scan_tile<at::BFloat16>(g, i0, j0, sqf, kc, cd, cj, cc);
      } else {
        scan_tile<float>(g.to(at::kFloat), i0, j0, sqf, kc, cd, cj, cc);
      }
    }
  }
}

// Running top-kc candidates of the rows `rows` (m of them) against every column, fp32 GEMM.
// cd/cj: [m, kc], cc: [m].
void candidates_rows(const at::Tensor& x, const std::vector<int64_t>& rows, const float* sqf, int64_t n, int kc,
                     float* cd, int32_t* cj, int32_t* cc) {
  const int64_t m = static_cast<int64_t>(rows.size());
  std::fill(cc, cc + m, 0);
  const at::Tensor idx = at::tensor(rows, x.options().dtype(at::kLong));
  const at::Tensor xr = x.index_select(0, idx);
  for (int64_t r0 = 0; r0 < m; r0 += kTile) {
    const int64_t br = std::min(kTile, m - r0);
    const at::Tensor xb = xr.narrow(0, r0, br);
    for (int64_t j0 = 0; j0 < n; j0 += kTile) {
      const int64_t bj = std::min(kTile, n - j0);
      const at::Tensor g = at::mm(xb, x.narrow(0, j0, bj).t()).contiguous();
      const float* gp = g.data_ptr<float>();
      at::parallel_for(0, br, 16, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t q = r0 + r;
          cc[q] = topk_scan(gp + r * bj, sqf + j0, bj, static_cast<int32_t>(j0), cd + q * kc, cj + q * kc, cc[q], kc);
        }
      });
    }
  }
}

// Re-scores row i's kc candidates (ad ascending, their columns aj) canonically, in ascending
// approximate value, into a running top-k (kd, kj: scratch of k); stops once the bound of the next
// approximate value exceeds the k-th canonical value so far (then no later candidate nor any
// non-candidate can enter: certified). Writes the k neighbours to out; returns the certificate.
bool rescore_row(const float* x, int64_t d, int64_t n, const double* sqd, const Bound& b, int64_t i,
                 const float* ad, const int32_t* aj, int kc, int k, double* kd, int32_t* kj, int32_t* out) {
  const float* xi = x + i * d;
  int cnt = 0;
  bool stopped = false;
  for (int a = 0; a < kc; ++a) {
    if (cnt == k && lower_bound(b, static_cast<double>(ad[a])) > kd[k - 1]) {
      stopped = true;
      break;
    }
    const int32_t j = aj[a];
    cnt = topk_push(kd, kj, cnt, k, canonical(sqd[j], dot_partial_d(xi, x + static_cast<int64_t>(j) * d, d, 0, 1)), j);
  }
  std::copy(kj, kj + k, out);
  return stopped || certified(kd, k, lower_bound(b, static_cast<double>(ad[kc - 1])), kc >= n);
}

// Canonical scan of every column for the rows `rows`: their exact k nearest, written to out.
// Blocked so that each column row x_j is read once per group of rows.
void canonical_rows(const float* x, int64_t d, int64_t n, const double* sqd, const std::vector<int64_t>& rows, int k,
                    int32_t* out) {
  constexpr int64_t kGroup = 16;
  const int64_t m = static_cast<int64_t>(rows.size());
  const int64_t groups = (m + kGroup - 1) / kGroup;
  at::parallel_for(0, groups, 1, [&](int64_t gb, int64_t ge) {
    std::vector<double> kd(kGroup * k);
    std::vector<int32_t> kj(kGroup * k);
    std::vector<int> cnt(kGroup);
    for (int64_t g = gb; g < ge; ++g) {
      const int64_t q0 = g * kGroup, q1 = std::min(m, q0 + kGroup);
      std::fill(cnt.begin(), cnt.end(), 0);
      for (int64_t j = 0; j < n; ++j) {
        const float* xj = x + j * d;
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t s = q - q0;
          const double c = canonical(sqd[j], dot_partial_d(x + rows[q] * d, xj, d, 0, 1));
          cnt[s] = topk_push(kd.data() + s * k, kj.data() + s * k, cnt[s], k, c, static_cast<int32_t>(j));
        }
      }
      for (int64_t q = q0; q < q1; ++q) {
        std::copy(kj.begin() + (q - q0) * k, kj.begin() + (q - q0 + 1) * k, out + rows[q] * k);
      }
    }
  });
}

// The rows in ascending order of the smallest column among their first min(k, 16) candidates
// (stable): rows of one cluster come together, so the candidate rows they share are still in
// cache when the next one is re-scored. The re-scoring reads a random feature row per candidate
// and is memory-bound; this order cut its time by ~40% at N = 12k, D = 2048. Rows are
// independent, so the order does not change any result.
std::vector<int64_t> locality_order(const int32_t* cj, int64_t n, int kc, int k) {
  const int look = std::min(k, 16);
  std::vector<int32_t> key(n);
  for (int64_t i = 0; i < n; ++i) key[i] = *std::min_element(cj + i * kc, cj + i * kc + look);
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t p, int64_t q) { return key[p] < key[q]; });
  return order;
}

// Re-scores all rows (in locality_order); returns the rows whose certificate failed, ascending.
std::vector<int64_t> rescore_all(const float* x, int64_t d, int64_t n, const Norms& nm, const ErrorModel& m,
                                 const float* cd, const int32_t* cj, int kc, int k, int32_t* out) {
  std::vector<uint8_t> ok(n);
  const std::vector<int64_t> order = locality_order(cj, n, kc, k);
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    std::vector<double> kd(k);
    std::vector<int32_t> kj(k);
    for (int64_t o = b; o < e; ++o) {
      const int64_t i = order[o];
      ok[i] = rescore_row(x, d, n, nm.sqd.data(), bound_of(m, nm, i), i, cd + i * kc, cj + i * kc, kc, k, kd.data(),
                          kj.data(), out + i * k);
    }
  });
  std::vector<int64_t> failed;
  for (int64_t i = 0; i < n; ++i)
    if (!ok[i]) failed.push_back(i);
  return failed;
}

// Rows whose certificate failed: a wider fp32 pass (reduced-precision callers), then a canonical
// scan. Returns {rows redone by the fp32 pass, rows redone by the canonical scan}.
std::pair<int64_t, int64_t> redo_failed(const at::Tensor& features, const Norms& nm, std::vector<int64_t> failed,
                                        int precision, int k, int margin, int32_t* out) {
  const int64_t n = features.size(0), d = features.size(1);
  const float* x = features.data_ptr<float>();
  int64_t wide = 0;
  if (!failed.empty() && precision != kFP32) {
    wide = static_cast<int64_t>(failed.size());
    const ErrorModel m = error_model(nm, kFP32, d);
    const int kc = static_cast<int>(std::min<int64_t>(n, k + 2 * static_cast<int64_t>(margin) + 8));
    const int64_t rows = wide;
    std::vector<float> cd(rows * kc);
    std::vector<int32_t> cj(rows * kc), cc(rows);
    candidates_rows(features, failed, nm.sqf.data(), n, kc, cd.data(), cj.data(), cc.data());
    std::vector<uint8_t> ok(rows);
    at::parallel_for(0, rows, 16, [&](int64_t b, int64_t e) {
      std::vector<double> kd(k);
      std::vector<int32_t> kj(k);
      for (int64_t q = b; q < e; ++q) {
        const int64_t i = failed[q];
        ok[q] = rescore_row(x, d, n, nm.sqd.data(), bound_of(m, nm, i), i, cd.data() + q * kc, cj.data() + q * kc, kc,
                            k, kd.data(), kj.data(), out + i * k);
      }
    });
    std::vector<int64_t> still;
    for (int64_t q = 0; q < rows; ++q)
      if (!ok[q]) still.push_back(failed[q]);
    failed.swap(still);
  }
  if (!failed.empty()) canonical_rows(x, d, n, nm.sqd.data(), failed, k, out);
  return {wide, static_cast<int64_t>(failed.size())};
}

// Non-finite features give a non-finite |x_j|^2 (double: no overflow for finite float input).
void check_finite(const at::Tensor& features, const std::vector<double>& sqd, const char* op) {
  for (size_t j = 0; j < sqd.size(); ++j) {
    TORCH_CHECK(std::isfinite(sqd[j]), op, ": `features` must be finite: row ", j, " holds NaN or Inf");
  }
}

Norms norms_of(const at::Tensor& features, const char* op) {
  const int64_t n = features.size(0), d = features.size(1);
  Norms nm;
  nm.sqf.resize(n);
  nm.sqd.resize(n);
  squared_norms(features.data_ptr<float>(), n, d, nm.sqf.data(), nm.sqd.data());
  check_finite(features, nm.sqd, op);
  return nm;
}

at::Tensor stats_tensor(const at::Tensor& features, std::pair<int64_t, int64_t> redone) {
  at::Tensor stats = at::empty({2}, features.options().dtype(at::kLong));
  stats[0] = redone.first;
  stats[1] = redone.second;
  return stats;
}

// Returns (rank int32 [N, k], stats int64 [2] = rows redone by a fp32 pass, rows redone canonically).
std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& features, int64_t k, std::string precision,
                                           int64_t margin) {
  host::check_features(features, kOpKnn, c10::DeviceType::CPU);
  const int64_t n = features.size(0), d = features.size(1);
  host::check_k(k, margin, n, kOpKnn);
  const int prec = host::parse_precision(precision, kOpKnn);
  TORCH_CHECK(prec != kTF32, kOpKnn, ": precision 'tf32' exists on CUDA only");
  const int kc = static_cast<int>(std::min<int64_t>(n, k + margin));
  const float* x = features.data_ptr<float>();
  Norms nm = norms_of(features, kOpKnn);

  std::vector<float> cd(n * kc);
  std::vector<int32_t> cj(n * kc), cc(n);
  const at::Tensor xg = prec == kBF16 ? features.to(at::kBFloat16) : features;
  if (prec == kBF16) {
    nm.hn.resize(n);
    nm.rn.resize(n);
    bf16_norms(x, xg.data_ptr<at::BFloat16>(), n, d, nm.hn.data(), nm.rn.data());
  }
  candidates_symmetric(xg, nm.sqf.data(), n, kc, cd.data(), cj.data(), cc.data());

  at::Tensor rank = at::empty({n, k}, features.options().dtype(at::kInt));
  int32_t* out = rank.data_ptr<int32_t>();
  std::vector<int64_t> failed =
      rescore_all(x, d, n, nm, error_model(nm, prec, d), cd.data(), cj.data(), kc, static_cast<int>(k), out);
  int64_t symmetric_redo = 0;
  if (prec != kFP32 && 2 * static_cast<int64_t>(failed.size()) > n) {
    // Most rows failed: one symmetric fp32 pass (N^2 D / 2) beats per-row passes over full rows.
    symmetric_redo = n;
    candidates_symmetric(features, nm.sqf.data(), n, kc, cd.data(), cj.data(), cc.data());
    failed = rescore_all(x, d, n, nm, error_model(nm, kFP32, d), cd.data(), cj.data(), kc, static_cast<int>(k), out);
  }
  auto redone = redo_failed(features, nm, std::move(failed), symmetric_redo ? kFP32 : prec, static_cast<int>(k),
                            static_cast<int>(margin), out);
  if (symmetric_redo) redone.first = symmetric_redo;
  return {rank, stats_tensor(features, redone)};
}

// Exact k nearest from externally computed candidates (faiss): candidates int32 [N, kc] and their
// approximate values approx float32 [N, kc] = |x_j|^2 - 2 x_i.x_j as computed by the backend,
// sorted ascending per row, kc >= k; every non-candidate must have a value >= the row's last one.
std::tuple<at::Tensor, at::Tensor> knn_refine_cpu(const at::Tensor& features, const at::Tensor& candidates,
                                                  const at::Tensor& approx, int64_t k, std::string precision) {
  host::check_features(features, kOpRefine, c10::DeviceType::CPU);
  const int64_t n = features.size(0), d = features.size(1);
  const int prec = precision == "faiss" ? kFAISS : host::parse_precision(precision, kOpRefine);
  TORCH_CHECK(candidates.device() == features.device() && approx.device() == features.device(), kOpRefine,
              ": `candidates` and `approx` must be on the device of `features`");
  TORCH_CHECK(candidates.dim() == 2 && candidates.size(0) == n && candidates.scalar_type() == at::kInt &&
                  candidates.is_contiguous(),
              kOpRefine, ": `candidates` must be a contiguous int32 [N, kc] tensor with N = ", n, ", got ",
              candidates.scalar_type(), " ", candidates.sizes());
  TORCH_CHECK(approx.sizes() == candidates.sizes() && approx.scalar_type() == at::kFloat && approx.is_contiguous(),
              kOpRefine, ": `approx` must be a contiguous float32 tensor shaped like `candidates` ", candidates.sizes(),
              ", got ", approx.scalar_type(), " ", approx.sizes());
  const int kc = static_cast<int>(candidates.size(1));
  TORCH_CHECK(k >= 1 && k <= kc, kOpRefine, ": `k` must be in [1, kc] = [1, ", kc, "], got ", k);
  const int32_t* cj = candidates.data_ptr<int32_t>();
  host::check_index_range(candidates, n, kOpRefine, "candidates");
  TORCH_CHECK(at::isfinite(approx).all().item<bool>(), kOpRefine, ": `approx` must be finite");
  TORCH_CHECK(kc < 2 || (approx.narrow(1, 1, kc - 1) >= approx.narrow(1, 0, kc - 1)).all().item<bool>(), kOpRefine,
              ": `approx` must be sorted ascending in each row");
  const Norms nm = norms_of(features, kOpRefine);
  at::Tensor rank = at::empty({n, k}, features.options().dtype(at::kInt));
  int32_t* out = rank.data_ptr<int32_t>();
  std::vector<int64_t> failed = rescore_all(features.data_ptr<float>(), d, n, nm, error_model(nm, prec, d),
                                            approx.data_ptr<float>(), cj, kc, static_cast<int>(k), out);
  const auto redone =
      redo_failed(features, nm, std::move(failed), prec, static_cast<int>(k), kc - static_cast<int>(k), out);
  return {rank, stats_tensor(features, redone)};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmdl, CPU, m) {
  m.impl("knn", &knn_cpu);
  m.impl("knn_refine", &knn_refine_cpu);
}

}  // namespace knn
}  // namespace dmdl
