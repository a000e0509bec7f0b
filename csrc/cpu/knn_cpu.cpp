// CPU kernels of dmdl::knn and dmdl::knn_refine: exact k-nearest neighbours by squared L2
// distance (faiss IndexFlatL2's ranking, self included, ties by the smaller index), with the
// candidate GEMM in fp32 or bf16 and the exactness certificate of dmdl/knn.h.
//
// The candidate pass is the whole cost: X X^T is symmetric, so only the tiles (I, J >= I) are
// multiplied (at::mm, MKL), and each tile feeds the running top lists of its rows (I) and,
// transposed, of its columns (J). Half the FLOPs of the full GEMM, no N x N array.
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

// Running top-kc candidates of every row from the symmetric tiles of X X^T.
// xg: the GEMM input (float32 or bfloat16 copy of x). cd/cj: [n, kc], cc: [n] counts.
void candidates_symmetric(const at::Tensor& xg, const float* sqf, int64_t n, int kc, float* cd, int32_t* cj,
                          int32_t* cc) {
  std::fill(cc, cc + n, 0);
  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    const int64_t bi = std::min(kTile, n - i0);
    const at::Tensor xi = xg.narrow(0, i0, bi);
    for (int64_t j0 = i0; j0 < n; j0 += kTile) {
      const int64_t bj = std::min(kTile, n - j0);
      at::Tensor g = at::mm(xi, xg.narrow(0, j0, bj).t());
      if (g.scalar_type() != at::kFloat) g = g.to(at::kFloat);
      g = g.contiguous();
      const float* gp = g.data_ptr<float>();
      at::parallel_for(0, bi, 16, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t i = i0 + r;
          cc[i] = topk_scan(gp + r * bj, sqf + j0, bj, static_cast<int32_t>(j0), cd + i * kc, cj + i * kc, cc[i], kc);
        }
      });
      if (j0 != i0) {
        const at::Tensor gt = g.t().contiguous();
        const float* gtp = gt.data_ptr<float>();
        at::parallel_for(0, bj, 16, [&](int64_t b, int64_t e) {
          for (int64_t r = b; r < e; ++r) {
            const int64_t j = j0 + r;
            cc[j] = topk_scan(gtp + r * bi, sqf + i0, bi, static_cast<int32_t>(i0), cd + j * kc, cj + j * kc, cc[j], kc);
          }
        });
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

// Re-scores row i's kc candidates canonically, writes its k neighbours to out and returns
// whether the certificate holds. scratch: kc doubles + kc ints.
bool rescore_row(const float* x, int64_t d, int64_t n, const double* sqd, double sqmax, int precision, int64_t i,
                 const float* ad, const int32_t* aj, int kc, int k, double* sd, int32_t* sj, int32_t* out) {
  const float* xi = x + i * d;
  for (int a = 0; a < kc; ++a) {
    const int32_t j = aj[a];
    sj[a] = j;
    sd[a] = canonical(sqd[j], dot_partial_d(xi, x + static_cast<int64_t>(j) * d, d, 0, 1));
  }
  sort_pairs_d(sd, sj, kc);
  for (int a = 0; a < k; ++a) out[a] = sj[a];
  const double delta = knn_delta(d, sqd[i], sqmax, precision);
  return certified(sd, k, static_cast<double>(ad[kc - 1]), delta, kc >= n);
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

// Re-scores all rows; returns the rows whose certificate failed.
std::vector<int64_t> rescore_all(const float* x, int64_t d, int64_t n, const double* sqd, double sqmax, int precision,
                                 const float* cd, const int32_t* cj, int kc, int k, int32_t* out) {
  std::vector<uint8_t> ok(n);
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    std::vector<double> sd(kc);
    std::vector<int32_t> sj(kc);
    for (int64_t i = b; i < e; ++i) {
      ok[i] = rescore_row(x, d, n, sqd, sqmax, precision, i, cd + i * kc, cj + i * kc, kc, k, sd.data(), sj.data(),
                          out + i * k);
    }
  });
  std::vector<int64_t> failed;
  for (int64_t i = 0; i < n; ++i)
    if (!ok[i]) failed.push_back(i);
  return failed;
}

// Rows whose certificate failed: a wider fp32 pass (bf16 callers), then a canonical scan.
// Returns {rows redone by the fp32 pass, rows redone by the canonical scan}.
std::pair<int64_t, int64_t> redo_failed(const at::Tensor& features, const float* sqf, const double* sqd, double sqmax,
                                        std::vector<int64_t> failed, int precision, int k, int margin, int32_t* out) {
  const int64_t n = features.size(0), d = features.size(1);
  const float* x = features.data_ptr<float>();
  int64_t wide = 0;
  if (!failed.empty() && precision != kFP32) {
    wide = static_cast<int64_t>(failed.size());
    const int kc = static_cast<int>(std::min<int64_t>(n, k + 2 * static_cast<int64_t>(margin) + 8));
    const int64_t m = wide;
    std::vector<float> cd(m * kc);
    std::vector<int32_t> cj(m * kc), cc(m);
    candidates_rows(features, failed, sqf, n, kc, cd.data(), cj.data(), cc.data());
    std::vector<uint8_t> ok(m);
    at::parallel_for(0, m, 16, [&](int64_t b, int64_t e) {
      std::vector<double> sd(kc);
      std::vector<int32_t> sj(kc);
      for (int64_t q = b; q < e; ++q) {
        ok[q] = rescore_row(x, d, n, sqd, sqmax, kFP32, failed[q], cd.data() + q * kc, cj.data() + q * kc, kc, k,
                            sd.data(), sj.data(), out + failed[q] * k);
      }
    });
    std::vector<int64_t> still;
    for (int64_t q = 0; q < m; ++q)
      if (!ok[q]) still.push_back(failed[q]);
    failed.swap(still);
  }
  if (!failed.empty()) canonical_rows(x, d, n, sqd, failed, k, out);
  return {wide, static_cast<int64_t>(failed.size())};
}

// Non-finite features give a non-finite |x_j|^2 (double: no overflow for finite float input).
void check_finite(const at::Tensor& features, const std::vector<double>& sqd, const char* op) {
  for (size_t j = 0; j < sqd.size(); ++j) {
    TORCH_CHECK(std::isfinite(sqd[j]), op, ": `features` must be finite: row ", j, " holds NaN or Inf");
  }
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

  std::vector<float> sqf(n);
  std::vector<double> sqd(n);
  squared_norms(x, n, d, sqf.data(), sqd.data());
  const double sqmax = *std::max_element(sqd.begin(), sqd.end());
  check_finite(features, sqd, kOpKnn);

  std::vector<float> cd(n * kc);
  std::vector<int32_t> cj(n * kc), cc(n);
  const at::Tensor xg = prec == kBF16 ? features.to(at::kBFloat16) : features;
  candidates_symmetric(xg, sqf.data(), n, kc, cd.data(), cj.data(), cc.data());

  at::Tensor rank = at::empty({n, k}, features.options().dtype(at::kInt));
  int32_t* out = rank.data_ptr<int32_t>();
  std::vector<int64_t> failed = rescore_all(x, d, n, sqd.data(), sqmax, prec, cd.data(), cj.data(), kc,
                                            static_cast<int>(k), out);
  const auto redone = redo_failed(features, sqf.data(), sqd.data(), sqmax, std::move(failed), prec,
                                  static_cast<int>(k), static_cast<int>(margin), out);
  at::Tensor stats = at::empty({2}, features.options().dtype(at::kLong));
  stats[0] = redone.first;
  stats[1] = redone.second;
  return {rank, stats};
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
  const float* x = features.data_ptr<float>();
  std::vector<float> sqf(n);
  std::vector<double> sqd(n);
  squared_norms(x, n, d, sqf.data(), sqd.data());
  const double sqmax = *std::max_element(sqd.begin(), sqd.end());
  check_finite(features, sqd, kOpRefine);
  at::Tensor rank = at::empty({n, k}, features.options().dtype(at::kInt));
  int32_t* out = rank.data_ptr<int32_t>();
  std::vector<int64_t> failed = rescore_all(x, d, n, sqd.data(), sqmax, prec, approx.data_ptr<float>(), cj, kc,
                                            static_cast<int>(k), out);
  const auto redone = redo_failed(features, sqf.data(), sqd.data(), sqmax, std::move(failed), prec,
                                  static_cast<int>(k), kc - static_cast<int>(k), out);
  at::Tensor stats = at::empty({2}, features.options().dtype(at::kLong));
  stats[0] = redone.first;
  stats[1] = redone.second;
  return {rank, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmdl, CPU, m) {
  m.impl("knn", &knn_cpu);
  m.impl("knn_refine", &knn_refine_cpu);
}

}  // namespace knn
}  // namespace dmdl
