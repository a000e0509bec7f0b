// Exact k-nearest-neighbour search by squared L2 distance, as the Jaccard re-ranking needs it
// (the ranking of faiss IndexFlatL2, self included, ties broken by the smaller index).
//
// How "exact" is kept while the big GEMM runs in whatever precision is fastest:
//   1. candidates: a GEMM in precision P (fp32, TF32 or bf16) gives approximate values
//      a_ij = |x_j|^2 - 2 x_i.x_j for every pair; a running top-kc keeps the kc = k + margin
//      smallest per row (|x_i|^2 is constant along a row and left out);
//   2. re-scoring: the candidates get the canonical value c_ij = |x_j|^2 - 2 x_i.x_j accumulated
//      in double from the float32 features, and are ordered by (c_ij, j);
//   3. certificate: |a_ij - c_ij| <= delta_i for every j (a rigorous bound for precision P,
//      knn_delta below). Every non-candidate j has a_ij >= t_i, the largest kept approximate
//      value, so c_ij >= t_i - delta_i. When the k-th re-scored candidate is < t_i - delta_i,
//      the k nearest by c are among the candidates and the row is exact; otherwise the row is
//      redone (a wider fp32 pass, then a canonical scan of every column).
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
// approximate value of column col0 + t is sqcol[t] - 2 g[t]. Returns the new count.
DMDL_HOST_DEVICE inline int topk_scan(const float* g, const float* sqcol, int64_t m, int32_t col0, float* kd,
                                      int32_t* kj, int cnt, int k) {
  float thr = cnt == k ? kd[k - 1] : INFINITY;
  for (int64_t t = 0; t < m; ++t) {
    const float v = sqcol[t] - 2.f * g[t];
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

// Rigorous bound on |a_ij - c_ij| for row i (see the top of this file).
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

// Certificate of one row after re-scoring: cd/cj sorted canonical values of the kc candidates,
// amax the largest approximate value kept (every non-candidate has a >= amax), k the neighbours
// wanted, complete = the candidates are all the columns. True when the first k are exact.
DMDL_HOST_DEVICE inline bool certified(const double* cd, int k, double amax, double delta, bool complete) {
  if (complete) return true;
  return cd[k - 1] < amax - delta;
}

}  // namespace knn
}  // namespace dmdl
