// k-reciprocal Jaccard distance (Zhong et al., CVPR 2017), as computed by the
// reference repositories' faiss_rerank.compute_jaccard_distance (algorithm.md §A9).
//
// Per-row building blocks shared by the CPU kernel (csrc/cpu/jaccard_cpu.cpp,
// one OpenMP iteration per row) and the CUDA kernels (csrc/cuda/jaccard_cuda.cu,
// one thread or one block per row). Everything here is plain C++ on raw pointers
// so that it compiles for the host and, under nvcc, for the device.
//
// Host-side ATen helpers (input checks, CSR transpose) are in dmdl/jaccard_host.h.
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

#if defined(__CUDACC__)
#define DMDL_HOST_DEVICE __host__ __device__
#else
#define DMDL_HOST_DEVICE
#endif

// Vectorise the float reduction of dot_row on the host (OpenMP simd, no -ffast-math needed).
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define DMDL_SIMD_SUM_S _Pragma("omp simd reduction(+ : s)")
#else
#define DMDL_SIMD_SUM_S
#endif

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

// k-reciprocal neighbours of row i among the first k columns of rank:
// j in rank[i, :k] such that i in rank[j, :k]. Written to out in rank order; returns the count.
DMDL_HOST_DEVICE inline int reciprocal_row(const int32_t* rank, int kcols, int32_t i, int k,
                                           int32_t* out) {
  int n = 0;
  const int32_t* fwd = rank + static_cast<int64_t>(i) * kcols;
  for (int a = 0; a < k; ++a) {
    const int32_t j = fwd[a];
    const int32_t* back = rank + static_cast<int64_t>(j) * kcols;
    for (int b = 0; b < k; ++b) {
      if (back[b] == i) {
        out[n++] = j;
        break;
      }
    }
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

// Expanded k-reciprocal set of row i (sorted, unique), written to out (capacity
// expansion_capacity(k1, n)); returns its size.
//   r1/c1: R(j, k1) lists (stride s1) and sizes; rh/ch: R(j, round(k1/2)) lists (stride sh) and sizes.
// A member j of R(i,k1) adds R(j, round(k1/2)) when |R(j,k1/2) ∩ R(i,k1)| > 2/3 |R(j,k1/2)|,
// evaluated in double exactly as the reference's `len(...) > 2/3*len(...)`.
DMDL_HOST_DEVICE inline int expand_row(int32_t i, const int32_t* r1, const int32_t* c1, int s1,
                                       const int32_t* rh, const int32_t* ch, int sh, int32_t* out) {
  const int32_t* ri = r1 + static_cast<int64_t>(i) * s1;
  const int ni = c1[i];
  int n = 0;
  for (int a = 0; a < ni; ++a) n = insert_sorted_unique(out, n, ri[a]);
  for (int a = 0; a < ni; ++a) {
    const int32_t cand = ri[a];
    const int32_t* rc = rh + static_cast<int64_t>(cand) * sh;
    const int nc = ch[cand];
    const int inter = intersect_count(rc, nc, ri, ni);
    if (static_cast<double>(inter) > (2.0 / 3.0) * static_cast<double>(nc)) {
      for (int b = 0; b < nc; ++b) n = insert_sorted_unique(out, n, rc[b]);
    }
  }
  return n;
}

// Dot product of two float32 rows of length d (float accumulation).
DMDL_HOST_DEVICE inline float dot_row(const float* a, const float* b, int64_t d) {
  float s = 0.f;
  DMDL_SIMD_SUM_S
  for (int64_t t = 0; t < d; ++t) s += a[t] * b[t];
  return s;
}

// V weights of row i: softmax over the expanded set idx[0:n] of -(2 - 2 f_i . f_j),
// i.e. exp(-d_j) / sum_k exp(-d_k) computed stably (max subtracted), as F.softmax does.
// x: [N, d] features. Writes w[0:n].
DMDL_HOST_DEVICE inline void softmax_weights_row(const float* x, int64_t d, int32_t i,
                                                 const int32_t* idx, int n, float* w) {
  const float* xi = x + static_cast<int64_t>(i) * d;
  float mx = -INFINITY;
  for (int a = 0; a < n; ++a) {
    const float dist = 2.f - 2.f * dot_row(xi, x + static_cast<int64_t>(idx[a]) * d, d);
    w[a] = -dist;
    mx = w[a] > mx ? w[a] : mx;
  }
  float sum = 0.f;
  for (int a = 0; a < n; ++a) {
    w[a] = expf(w[a] - mx);
    sum += w[a];
  }
  for (int a = 0; a < n; ++a) w[a] = w[a] / sum;
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

// Query expansion of one row: the mean of the sparse V rows nbrs[0:kq] (the kq
// nearest neighbours, self first). Each column is summed in neighbour order in
// float32 and divided by kq, as np.mean(V[rank[i,:k2]], axis=0) does; zero results are
// dropped (the reference's `V != 0`). V rows: columns sorted ascending in vcol[r*stride ...],
// values in vval, sizes in vcnt. Output columns are sorted. With out_col == nullptr only
// the number of non-zeros is returned (counting pass).
DMDL_HOST_DEVICE inline int64_t qe_merge_row(const int32_t* nbrs, int kq, const int32_t* vcol,
                                             const float* vval, const int32_t* vcnt, int64_t stride,
                                             int32_t* out_col, float* out_val) {
  int64_t n = 0;
  int32_t cur = -1;
  const float denom = static_cast<float>(kq);
  while (true) {
    int32_t next = INT32_MAX;
    for (int r = 0; r < kq; ++r) {
      const int32_t row = nbrs[r];
      const int32_t* cols = vcol + static_cast<int64_t>(row) * stride;
      const int cnt = vcnt[row];
      const int p = upper_bound_i32(cols, cnt, cur);
      if (p < cnt && cols[p] < next) next = cols[p];
    }
    if (next == INT32_MAX) break;
    float s = 0.f;
    for (int r = 0; r < kq; ++r) {
      const int32_t row = nbrs[r];
      const int32_t* cols = vcol + static_cast<int64_t>(row) * stride;
      const int cnt = vcnt[row];
      const int p = lower_bound_i32(cols, cnt, next);
      if (p < cnt && cols[p] == next) s += vval[static_cast<int64_t>(row) * stride + p];
    }
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

// Adds min(vi, V[j, c]) to acc[j] for the rows j of one inverted-index column (entries
// begin .. end - 1 of inv_row/inv_val), and appends to touched[*ntouched] every j whose
// accumulator was still 0. All stored V values are > 0, so acc[j] > 0 marks a touched row;
// touched needs room for the row's sum of column lengths. The caller resets acc[touched] to 0.
DMDL_HOST_DEVICE inline void accumulate_column_touch(float vi, const int32_t* inv_row, const float* inv_val,
                                                     int64_t begin, int64_t end, float* acc, int32_t* touched,
                                                     int64_t* ntouched) {
  for (int64_t t = begin; t < end; ++t) {
    const int32_t j = inv_row[t];
    const float vj = inv_val[t];
    if (acc[j] == 0.f) touched[(*ntouched)++] = j;
    acc[j] += vi < vj ? vi : vj;
  }
}

// Adds min(vi, V[j, c]) to acc[j] for the rows j of one inverted-index column (entries
// begin .. end - 1) and sets bit j of the bitmap `touched` (N bits in 64-bit words).
DMDL_HOST_DEVICE inline void accumulate_column_bits(float vi, const int32_t* inv_row, const float* inv_val,
                                                    int64_t begin, int64_t end, float* acc, uint64_t* touched) {
  for (int64_t t = begin; t < end; ++t) {
    const int32_t j = inv_row[t];
    const float vj = inv_val[t];
    acc[j] += vi < vj ? vi : vj;
    touched[j >> 6] |= uint64_t(1) << (j & 63);
  }
}

// Jaccard distance from the overlap s = sum_k min(V_ik, V_jk): 1 - s / (2 - s), clipped at 0.
DMDL_HOST_DEVICE inline float jaccard_from_overlap(float s) {
  const float d = 1.f - s / (2.f - s);
  return d < 0.f ? 0.f : d;
}

}  // namespace jaccard
}  // namespace dmdl
