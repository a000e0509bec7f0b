// k-reciprocal Jaccard distance (Zhong et al., CVPR 2017), as computed by the
// reference repositories' faiss_rerank.compute_jaccard_distance (docs/dmdl.md#A9).
//
// Per-row building blocks shared by the CPU kernel (csrc/cpu/jaccard_cpu.cpp,
// one OpenMP iteration per row) and the CUDA kernels (csrc/cuda/jaccard_cuda.cu,
// a warp or a block per row). Everything here is plain C++ on raw pointers
// so that it compiles for the host and, under nvcc, for the device. The per-row
// functions are built from per-item pieces (is_reciprocal, expansion_accepts,
// dot_partial_f, weight_logit, qe_next_col / qe_value, min_plus_term): the CPU
// runs the row function, the GPU runs the same pieces with the items spread
// over the lanes of a warp or the threads of a block.
//
// Host-side ATen helpers: CSR transpose and rank checks in dmdl/jaccard_host.h, feature checks in
// dmdl/knn_host.h.
//
// Data layout (all row-major, int32 indices, float32 values):
//   rank  [N, kcols]  the kcols nearest neighbours of each row, nearest first, self included.
//   padded lists      row r occupies [r * stride, r * stride + count[r]).
//   CSR / CSC         int64 pointers, int32 indices, float32 values.
#pragma once

#include <math.h>
#include <stdint.h>

#include <cstdint>
#include <tuple>

#include "dmdl/host_device.h"

namespace dmdl {
namespace jaccard {

// Python's round(k1 / 2) (half to even, like np.around): 25 -> 12, 27 -> 14, 1 -> 0.
DMDL_HOST_DEVICE inline int half_k(int k1) {
  int h = k1 / 2;
  if ((k1 & 1) && (h & 1)) h += 1;
  return h;
}

// Number of neighbours read for the half-size reciprocal sets: round(k1/2) + 1,
// limited to the k1 columns the kNN search returned (as slicing does in the reference).
DMDL_HOST_DEVICE inline int half_cols(int k1) {
  int h = half_k(k1) + 1;
  return h < k1 ? h : k1;
}

// Capacity of one expanded row: R(i,k1) plus at most one half-size set per member
// of R(i,k1), and never more than the n rows.
DMDL_HOST_DEVICE inline int64_t expansion_capacity(int k1, int64_t n) {
  const int64_t c = static_cast<int64_t>(k1) + static_cast<int64_t>(k1) * half_cols(k1);
  return c < n ? c : n;
}

// Whether i is among the first k neighbours of j (rank rows have kcols columns).
DMDL_HOST_DEVICE inline bool is_reciprocal(const int32_t* rank, int kcols, int32_t i, int32_t j, int k) {
  const int32_t* back = rank + static_cast<int64_t>(j) * kcols;
  for (int b = 0; b < k; ++b) {
    if (back[b] == i) return true;
  }
  return false;
}

// k-reciprocal neighbours of row i among the first k columns of rank:
// j in rank[i, :k] such that i in rank[j, :k]. Written to out in rank order; returns the count.
// (GPU: lane a tests rank[i, a] with is_reciprocal, a ballot keeps the order.)
DMDL_HOST_DEVICE inline int reciprocal_row(const int32_t* rank, int kcols, int32_t i, int k,
                                           int32_t* out) {
  int n = 0;
  const int32_t* fwd = rank + static_cast<int64_t>(i) * kcols;
  for (int a = 0; a < k; ++a) {
    const int32_t j = fwd[a];
    if (is_reciprocal(rank, kcols, i, j, k)) out[n++] = j;
  }
  return n;
}

// |a ∩ b| for two lists of distinct indices (small: O(na * nb)).
DMDL_HOST_DEVICE inline int intersect_count(const int32_t* a, int na, const int32_t* b, int nb) {
  int c = 0;
  for (int x = 0; x < na; ++x) {
    for (int y = 0; y < nb; ++y) {
      if (a[x] == b[y]) {
        ++c;
        break;
      }
    }
  }
  return c;
}

// Inserts v into the sorted, duplicate-free a[0:n] unless present; returns the new length.
// (np.unique of the concatenated sets, built incrementally so that storage never exceeds N.)
DMDL_HOST_DEVICE inline int insert_sorted_unique(int32_t* a, int n, int32_t v) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] < v) lo = mid + 1; else hi = mid;
  }
  if (lo < n && a[lo] == v) return n;
  for (int t = n; t > lo; --t) a[t] = a[t - 1];
  a[lo] = v;
  return n + 1;
}

// Inserts the ns values s[] into the sorted, duplicate-free a[0:n]; returns the new length.
DMDL_HOST_DEVICE inline int insert_set(int32_t* a, int n, const int32_t* s, int ns) {
  for (int b = 0; b < ns; ++b) n = insert_sorted_unique(a, n, s[b]);
  return n;
}

// Whether a member of R(i,k1) with half-size set rc[0:nc] = R(j, round(k1/2)) joins the
// expansion: |R(j,k1/2) ∩ R(i,k1)| > 2/3 |R(j,k1/2)|, evaluated in double exactly as the
// reference's `len(...) > 2/3*len(...)`. ri[0:ni] = R(i,k1).
DMDL_HOST_DEVICE inline bool expansion_accepts(const int32_t* ri, int ni, const int32_t* rc, int nc) {
  const int inter = intersect_count(rc, nc, ri, ni);
  return static_cast<double>(inter) > (2.0 / 3.0) * static_cast<double>(nc);
}

// Expanded k-reciprocal set of row i (sorted, unique), written to out (capacity
// expansion_capacity(k1, n)); returns its size.
//   r1/c1: R(j, k1) lists (stride s1) and sizes; rh/ch: R(j, round(k1/2)) lists (stride sh) and sizes.
// A member j of R(i,k1) adds R(j, round(k1/2)) when expansion_accepts. The result is a sorted
// set, so the order of the insertions does not matter (the GPU tests the members in parallel).
DMDL_HOST_DEVICE inline int expand_row(int32_t i, const int32_t* r1, const int32_t* c1, int s1,
                                       const int32_t* rh, const int32_t* ch, int sh, int32_t* out) {
  const int32_t* ri = r1 + static_cast<int64_t>(i) * s1;
  const int ni = c1[i];
  int n = insert_set(out, 0, ri, ni);
  for (int a = 0; a < ni; ++a) {
    const int32_t cand = ri[a];
    const int32_t* rc = rh + static_cast<int64_t>(cand) * sh;
    const int nc = ch[cand];
    if (expansion_accepts(ri, ni, rc, nc)) n = insert_set(out, n, rc, nc);
  }
  return n;
}

// Partial float dot product of two float32 rows over t = begin, begin + step, ... < d
// (step 1 on the CPU, vectorised; the lanes of a warp on the GPU, which then add their sums).
DMDL_HOST_DEVICE inline float dot_partial_f(const float* a, const float* b, int64_t d, int64_t begin, int64_t step) {
  float s = 0.f;
  if (step == 1) {
    DMDL_SIMD_SUM_S
    for (int64_t t = begin; t < d; ++t) s += a[t] * b[t];
  } else {
    for (int64_t t = begin; t < d; t += step) s += a[t] * b[t];
  }
  return s;
}

// Dot product of two float32 rows of length d (float accumulation).
DMDL_HOST_DEVICE inline float dot_row(const float* a, const float* b, int64_t d) { return dot_partial_f(a, b, d, 0, 1); }

// Softmax logit of one pair from its dot product: -(2 - 2 f_i . f_j).
DMDL_HOST_DEVICE inline float weight_logit(float dot) {
  const float dist = 2.f - 2.f * dot;
  return -dist;
}

// In-place softmax of w[0:n]: exp(w - max) / sum, as F.softmax does (n may be 0).
DMDL_HOST_DEVICE inline void softmax_inplace(float* w, int n) {
  float mx = -INFINITY;
  for (int a = 0; a < n; ++a) mx = w[a] > mx ? w[a] : mx;
  float sum = 0.f;
  for (int a = 0; a < n; ++a) {
    w[a] = expf(w[a] - mx);
    sum += w[a];
  }
  for (int a = 0; a < n; ++a) w[a] = w[a] / sum;
}

// V weights of row i: softmax over the expanded set idx[0:n] of -(2 - 2 f_i . f_j),
// i.e. exp(-d_j) / sum_k exp(-d_k) computed stably (max subtracted), as F.softmax does.
// x: [N, d] features. Writes w[0:n]. (GPU: the dots warp-parallel, the softmax in one lane.)
DMDL_HOST_DEVICE inline void softmax_weights_row(const float* x, int64_t d, int32_t i,
                                                 const int32_t* idx, int n, float* w) {
  const float* xi = x + static_cast<int64_t>(i) * d;
  for (int a = 0; a < n; ++a) w[a] = weight_logit(dot_row(xi, x + static_cast<int64_t>(idx[a]) * d, d));
  softmax_inplace(w, n);
}

// First position p in sorted a[0:n] with a[p] > v.
DMDL_HOST_DEVICE inline int upper_bound_i32(const int32_t* a, int n, int32_t v) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] <= v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// First position p in sorted a[0:n] with a[p] >= v.
DMDL_HOST_DEVICE inline int lower_bound_i32(const int32_t* a, int n, int32_t v) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] < v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Smallest column > cur of the sparse V row `row` (INT32_MAX when none).
// V rows: columns sorted ascending in vcol[row*stride ...], sizes in vcnt.
DMDL_HOST_DEVICE inline int32_t qe_next_col(int32_t row, int32_t cur, const int32_t* vcol, const int32_t* vcnt,
                                            int64_t stride) {
  const int32_t* cols = vcol + static_cast<int64_t>(row) * stride;
  const int cnt = vcnt[row];
  const int p = upper_bound_i32(cols, cnt, cur);
  return p < cnt ? cols[p] : INT32_MAX;
}

// V[row, c] of the sparse V row `row` (0 when absent; stored values are >= +0, and s + 0 == s,
// so adding an absent entry leaves a sum unchanged bit for bit).
DMDL_HOST_DEVICE inline float qe_value(int32_t row, int32_t c, const int32_t* vcol, const float* vval,
                                       const int32_t* vcnt, int64_t stride) {
  const int32_t* cols = vcol + static_cast<int64_t>(row) * stride;
  const int cnt = vcnt[row];
  const int p = lower_bound_i32(cols, cnt, c);
  return p < cnt && cols[p] == c ? vval[static_cast<int64_t>(row) * stride + p] : 0.f;
}

// Query expansion of one row: the mean of the sparse V rows nbrs[0:kq] (the kq
// nearest neighbours, self first). Each column is summed in neighbour order in
// float32 and divided by kq, as np.mean(V[rank[i,:k2]], axis=0) does; zero results are
// dropped (the reference's `V != 0`). V rows: columns sorted ascending in vcol[r*stride ...],
// values in vval, sizes in vcnt. Output columns are sorted. With out_col == nullptr only
// the number of non-zeros is returned (counting pass). (GPU: the kq neighbours over the
// lanes of a warp, next column by a warp minimum, the sum in neighbour order by shuffles.)
DMDL_HOST_DEVICE inline int64_t qe_merge_row(const int32_t* nbrs, int kq, const int32_t* vcol,
                                             const float* vval, const int32_t* vcnt, int64_t stride,
                                             int32_t* out_col, float* out_val) {
  int64_t n = 0;
  int32_t cur = -1;
  const float denom = static_cast<float>(kq);
  while (true) {
    int32_t next = INT32_MAX;
    for (int r = 0; r < kq; ++r) {
      const int32_t c = qe_next_col(nbrs[r], cur, vcol, vcnt, stride);
      next = c < next ? c : next;
    }
    if (next == INT32_MAX) break;
    float s = 0.f;
    for (int r = 0; r < kq; ++r) s += qe_value(nbrs[r], next, vcol, vval, vcnt, stride);
    const float v = s / denom;
    if (v != 0.f) {
      if (out_col != nullptr) {
        out_col[n] = next;
        out_val[n] = v;
      }
      ++n;
    }
    cur = next;
  }
  return n;
}

// One term of the min-plus product: min(V_ic, V_jc).
DMDL_HOST_DEVICE inline float min_plus_term(float vi, float vj) { return vi < vj ? vi : vj; }

// Adds min(vi, V[j, c]) to acc[j] for the rows j of one inverted-index column (entries
// begin .. end - 1) and sets bit j of the bitmap `touched` (N bits in 64-bit words).
DMDL_HOST_DEVICE inline void accumulate_column_bits(float vi, const int32_t* inv_row, const float* inv_val,
                                                    int64_t begin, int64_t end, float* acc, uint64_t* touched) {
  for (int64_t t = begin; t < end; ++t) {
    const int32_t j = inv_row[t];
    const float vj = inv_val[t];
    acc[j] += min_plus_term(vi, vj);
    touched[j >> 6] |= uint64_t(1) << (j & 63);
  }
}

// Jaccard distance from the overlap s = sum_k min(V_ik, V_jk): 1 - s / (2 - s), clipped at 0.
DMDL_HOST_DEVICE inline float jaccard_from_overlap(float s) {
  const float d = 1.f - s / (2.f - s);
  return d < 0.f ? 0.f : d;
}

// Whether a distance is stored in the CSR output (every absent pair has d = 1).
DMDL_HOST_DEVICE inline bool stored_distance(float d) { return d < 1.f; }

}  // namespace jaccard
}  // namespace dmdl
