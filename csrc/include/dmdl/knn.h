// Exact k-nearest-neighbour search by squared L2 distance, as the Jaccard re-ranking needs it
// (the ranking of faiss IndexFlatL2, self included, ties broken by the smaller index).
//
// How "exact" is kept while the big GEMM runs in whatever precision is fastest:
//   1. candidates: a GEMM in precision P (fp32, TF32 or bf16) gives approximate values
//      a_ij = |x_j|^2 - 2 x_i.x_j for every pair; a running top-kc keeps the kc = k + margin
//      smallest per row (|x_i|^2 is constant along a row and left out);
//   2. re-scoring: the candidates get the canonical value c_ij = |x_j|^2 - 2 x_i.x_j accumulated
//      in double from the float32 features, and are ordered by (c_ij, j);
//   3. certificate: a rigorous lower bound c_ij >= L_i(a_ij) holds for every column j, with L_i
//      increasing in a (row_bound / lower_bound below). Every non-candidate j has a_ij >= t_i,
//      the largest kept approximate value, so c_ij >= L_i(t_i). When the k-th re-scored
//      candidate is < L_i(t_i), the k nearest by c are among the candidates and the row is
//      exact; otherwise the row is redone (a wider fp32 pass, then a canonical scan of every
//      column). Candidates are re-scored in ascending a, and the scan stops early once L_i(a)
//      exceeds the k-th canonical value found so far (no later candidate can enter the list;
//      L_i(a) <= L_i(t_i), so the row is certified).
// Every path therefore returns the same neighbour lists: the k smallest (c_ij, j).
//
// On CUDA, "fp32" candidates come from at::mm in float32, which cuBLAS may run on TF32 tensor
// cores depending on the user's global settings (never read or changed here): they are certified
// with the kTF32 bound, which holds for both.
//
// Per-row building blocks shared by the CPU kernel (csrc/cpu/knn_cpu.cpp) and the CUDA
// kernel (csrc/cuda/knn_cuda.cu: a warp per row, lanes strided over D in dot_partial_d);
// plain C++ on raw pointers, host and device. Host-side ATen checks: dmdl/knn_host.h.
#pragma once

#include <math.h>
#include <stdint.h>

#include "dmdl/host_device.h"

namespace dmdl {
namespace knn {

// Precision of the candidate GEMM.
// kFAISS: faiss IndexFlatL2 distances |x_i|^2 + |x_j|^2 - 2 x_i.x_j (fp32, possibly clamped at 0)
// from which |x_i|^2 was subtracted in float32: two more roundings than kFP32.
enum Precision : int { kFP32 = 0, kTF32 = 1, kBF16 = 2, kFAISS = 3 };

// (d, j) < (e, l) lexicographically: the order of the neighbour lists.
template <typename T>
DMDL_HOST_DEVICE inline bool before(T d, int32_t j, T e, int32_t l) {
  return d < e || (d == e && j < l);
}

// Inserts (d, j) into the sorted list kd/kj of cnt <= k entries, keeping the k smallest;
// returns the new count. T: float (approximate values) or double (canonical ones).
template <typename T>
DMDL_HOST_DEVICE inline int topk_push(T* kd, int32_t* kj, int cnt, int k, T d, int32_t j) {
  int pos;
  if (cnt == k) {
    if (!before(d, j, kd[k - 1], kj[k - 1])) return cnt;
    pos = k - 1;
  } else {
    pos = cnt++;
  }
  while (pos > 0 && before(d, j, kd[pos - 1], kj[pos - 1])) {
    kd[pos] = kd[pos - 1];
    kj[pos] = kj[pos - 1];
    --pos;
  }
  kd[pos] = d;
  kj[pos] = j;
  return cnt;
}

// Scans one row of a GEMM tile into the running top list (kd, kj, cnt of at most k): the
// approximate value of column col0 + t is sqcol[t] - 2 g[t] in float32. G: float, or a 16-bit
// float type (the CPU's bfloat16 GEMM output) converted exactly. Returns the new count.
template <typename G>
DMDL_HOST_DEVICE inline int topk_scan(const G* g, const float* sqcol, int64_t m, int32_t col0, float* kd,
                                      int32_t* kj, int cnt, int k) {
  float thr = cnt == k ? kd[k - 1] : INFINITY;
  for (int64_t t = 0; t < m; ++t) {
    const float v = sqcol[t] - 2.f * static_cast<float>(g[t]);
    if (v <= thr) {
      cnt = topk_push(kd, kj, cnt, k, v, col0 + static_cast<int32_t>(t));
      if (cnt == k) thr = kd[k - 1];
    }
  }
  return cnt;
}

// Partial double dot product of two float rows over t = begin, begin + step, ... < d
// (step 1 on the CPU; the lanes of a warp on the GPU, which then add their partial sums).
DMDL_HOST_DEVICE inline double dot_partial_d(const float* a, const float* b, int64_t d, int64_t begin, int64_t step) {
  double s = 0.0;
  if (step == 1) {
    DMDL_SIMD_SUM_S
    for (int64_t t = begin; t < d; ++t) s += static_cast<double>(a[t]) * static_cast<double>(b[t]);
  } else {
    for (int64_t t = begin; t < d; t += step) s += static_cast<double>(a[t]) * static_cast<double>(b[t]);
  }
  return s;
}

// Canonical value of a pair from its double dot product: |x_j|^2 - 2 x_i.x_j.
DMDL_HOST_DEVICE inline double canonical(double sqj, double dot) { return sqj - 2.0 * dot; }

// Rigorous bound on |a_ij - c_ij| for row i, the same for every a (row_bound refines kBF16).
//   d: feature length; sqi: |x_i|^2; sqmax: max_j |x_j|^2 (both in double); precision: of the GEMM.
// Terms: float32 accumulation of |x_j|^2 (gamma_d |x_j|^2), the GEMM's error on x_i.x_j
// (e_P |x_i| |x_j|, doubled), the float32 subtraction (u |a|), with a 25% safety factor and
// an absolute floor for the double rounding of c.
// kTF32 assumes the worst tensor-core behaviour: inputs truncated (not rounded) to TF32's 11
// significant bits (2^-10) and an accumulation that may truncate too (2 gamma).
DMDL_HOST_DEVICE inline double knn_delta(int64_t d, double sqi, double sqmax, int precision) {
  const double u32 = 5.9604644775390625e-08;  // 2^-24
  const double dd = static_cast<double>(d) + 2.0;
  const double gamma = dd * u32 / (1.0 - dd * u32);
  double uin = 0.0, uout = 0.0, gacc = gamma;
  if (precision == kTF32) { uin = 9.765625e-04; gacc = 2.0 * gamma; }  // 2^-10 (truncation)
  if (precision == kBF16) { uin = 3.90625e-03; uout = 3.90625e-03; }  // 2^-8, output rounded to bf16
  const double e = (2.0 * uin + uin * uin + gacc * (1.0 + uin) * (1.0 + uin)) * (1.0 + uout) + uout;
  const double ri = sqrt(sqi), rmax = sqrt(sqmax);
  const double dotmax = ri * rmax;
  double delta = gamma * sqmax + 2.0 * e * dotmax + 2.0 * u32 * (sqmax + 2.0 * dotmax) * (1.0 + e);
  if (precision == kFAISS) delta += gamma * sqi + 4.0 * u32 * (sqi + sqmax + 2.0 * dotmax) * (1.0 + e);
  return 1.25 * delta + 1e-12 * (sqmax + 2.0 * dotmax) + 1e-30;
}

// What the bound of the candidate GEMM needs besides the row itself: maxima over the columns j.
struct ErrorModel {
  int precision;          // of the candidate GEMM (Precision)
  int residuals;          // kBF16: hmax/rmax and the rows' |h_i|, |r_i| are known (else knn_delta's
                          // worst case: inputs and output rounded to bf16, for knn_refine)
  int out_rounded;        // kBF16 with residuals: the GEMM output was rounded to bfloat16 (CPU at::mm)
  int64_t d;              // feature length
  double sqmax;           // max_j |x_j|^2 (double)
  double sqfmin, sqfmax;  // range of the float32 |x_j|^2 the approximate values use
  double hmax, rmax;      // kBF16: max_j |h_j| and max_j |x_j - h_j|, h_j = bf16(x_j) (double)
};

// c_ij >= lower_bound(b, a_ij) for every column j of the row (see the top of this file).
struct Bound {
  double fixed, usub, uout, sqfmin, sqfmax;
};

// Row i's bound: sqi = |x_i|^2; kBF16 also hni = |h_i|, rni = |x_i - h_i| (double).
// fp32/tf32/faiss (and kBF16 without residuals): the constant knn_delta. kBF16: with
// P = h_i.h_j (exact in the products; G the GEMM's value of it),
//   c - a = (|x_j|^2 - sqf_j) - 2 (x_i.x_j - P) - 2 (G - P) + (the float32 rounding of a),
//   |x_i.x_j - P| = |r_i.x_j + h_i.r_j| <= |r_i| max|x_j| + |h_i| max|r_j|      (Cauchy-Schwarz;
//                  the measured residuals, not the worst-case 2^-8 |x_i| |x_j|),
//   float32 accumulation of P: 2 gamma |h_i| max|h_j| (any order, fused or truncating adds)
//                  plus D 2^-126 (2 + max|h_j|) for flushed subnormals,
//   output rounding to bf16 (out_rounded): u_bf16 |G|, and 2|G| = |sqf_j - a| (1 + u) for the
//                  approximate value a itself, hence the uout * max(sqfmax - a, a - sqfmin) term,
//   float32 subtraction: u |a|;
// each with the 25% safety factor and the absolute floor of knn_delta.
DMDL_HOST_DEVICE inline Bound row_bound(const ErrorModel& m, double sqi, double hni, double rni) {
  Bound b{knn_delta(m.d, sqi, m.sqmax, m.precision), 0.0, 0.0, m.sqfmin, m.sqfmax};
  if (m.precision != kBF16 || !m.residuals) return b;
  const double u32 = 5.9604644775390625e-08;  // 2^-24
  const double dd = static_cast<double>(m.d) + 2.0;
  const double gamma = dd * u32 / (1.0 - dd * u32);
  const double xmax = sqrt(m.sqmax);
  const double input = rni * xmax + hni * m.rmax;
  const double accumulation = 2.0 * gamma * hni * m.hmax + dd * 1.1754943508222875e-38 * (2.0 + m.hmax);
  const double uo = m.out_rounded ? 3.90625e-03 / (1.0 - 3.90625e-03) : 0.0;  // 2^-8, rounded to nearest
  b.fixed = 1.25 * (gamma * m.sqmax + 2.0 * (input + accumulation)) + 1e-12 * (m.sqmax + 2.0 * sqrt(sqi) * xmax) +
            1e-30;
  b.usub = 1.25 * u32 / (1.0 - u32) * (1.0 + uo);
  b.uout = 1.25 * uo;
  return b;
}

// The lower bound on c_ij for a column whose approximate value is a; increasing in a.
DMDL_HOST_DEVICE inline double lower_bound(const Bound& b, double a) {
  const double spread = fmax(0.0, fmax(b.sqfmax - a, a - b.sqfmin));
  return a - b.fixed - b.usub * fabs(a) - b.uout * spread;
}

// Sorts the n candidates (cd, cj) by (cd, cj) ascending (insertion sort: n is k + margin).
DMDL_HOST_DEVICE inline void sort_pairs_d(double* cd, int32_t* cj, int n) {
  for (int a = 1; a < n; ++a) {
    const double d = cd[a];
    const int32_t j = cj[a];
    int p = a;
    while (p > 0 && before(d, j, cd[p - 1], cj[p - 1])) {
      cd[p] = cd[p - 1];
      cj[p] = cj[p - 1];
      --p;
    }
    cd[p] = d;
    cj[p] = j;
  }
}

// Certificate of one row after re-scoring: cd sorted canonical values of the candidates, lower_t
// the bound L_i(t_i) of the largest approximate value kept (every non-candidate has c >= it), k the
// neighbours wanted, complete = the candidates are all the columns. True when the first k are exact.
DMDL_HOST_DEVICE inline bool certified(const double* cd, int k, double lower_t, bool complete) {
  if (complete) return true;
  return cd[k - 1] < lower_t;
}

}  // namespace knn
}  // namespace dmdl
