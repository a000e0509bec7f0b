// Cluster memory step (Cluster-Contrast, Dai et al., ACCV 2022; docs/dmdl.md#A4.1, #A5.5;
// docs/benchmarks.md#memory-step): the per-row pieces of
//
//   loss = mean_i CE(normalize(x_i) M^T / T, target_i)       (hard label or soft target row)
//   m_r <- normalize(mu m_r + (1 - mu) normalize(x))          (per sample, in batch order)
//
// Everything here is plain C++ on raw pointers (templates over the storage type T and the
// accumulation type A), so that the CPU kernel (csrc/cpu/memory_cpu.cpp, at::parallel_for over
// rows) and a later CUDA kernel (one thread block per row) share it. No ATen.
//
// Conventions:
//   - normalize(v) = v / max(||v||, eps), eps = 1e-12, as torch.nn.functional.normalize.
//   - mu is the weight of the OLD memory row; mu >= 1 leaves the row unchanged.
//   - the loss gradient is written for z_ik = (x_i . m_k) * c_i with c_i = 1 / (max(||x_i||, eps) T).
#pragma once

#include <math.h>
#include <stdint.h>

#include "dmdl/host_device.h"

#if defined(__CUDACC__)
#define DMDL_INLINE __forceinline__
#elif defined(__GNUC__)
#define DMDL_INLINE inline __attribute__((always_inline))  // into callers compiled for AVX2
#else
#define DMDL_INLINE inline
#endif

// Loop pragmas: OpenMP SIMD reductions on the host (no -ffast-math needed), nothing on the device.
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define DMDL_SIMD_MAX_MX _Pragma("omp simd reduction(max : mx)")
#define DMDL_SIMD_SUM_SUM_ES _Pragma("omp simd reduction(+ : sum, es)")
#define DMDL_SIMD_SUM_ACC _Pragma("omp simd reduction(+ : acc)")
#define DMDL_SIMD _Pragma("omp simd")
#else
#define DMDL_SIMD_MAX_MX
#define DMDL_SIMD_SUM_SUM_ES
#define DMDL_SIMD_SUM_ACC
#define DMDL_SIMD
#endif

namespace dmdl {
namespace memory {

constexpr double kNormEps = 1e-12;  // F.normalize's default eps

template <typename A>
DMDL_HOST_DEVICE DMDL_INLINE A max_(A a, A b) { return a > b ? a : b; }

// exp / log / sqrt in the precision of the argument, on the host and the device.
DMDL_HOST_DEVICE DMDL_INLINE float exp_(float v) { return expf(v); }
DMDL_HOST_DEVICE DMDL_INLINE double exp_(double v) { return exp(v); }
DMDL_HOST_DEVICE DMDL_INLINE float log_(float v) { return logf(v); }
DMDL_HOST_DEVICE DMDL_INLINE double log_(double v) { return log(v); }
DMDL_HOST_DEVICE DMDL_INLINE float sqrt_(float v) { return sqrtf(v); }
DMDL_HOST_DEVICE DMDL_INLINE double sqrt_(double v) { return sqrt(v); }

// ||x|| of a row of length d, accumulated in A.
template <typename T, typename A>
DMDL_HOST_DEVICE DMDL_INLINE A row_norm(const T* x, int64_t d) {
  A acc = A(0);
  DMDL_SIMD_SUM_ACC
  for (int64_t t = 0; t < d; ++t) acc += static_cast<A>(x[t]) * static_cast<A>(x[t]);
  return sqrt_(acc);
}

// x . m / xn (the cosine of x and the row m when xn = max(||x||, eps) and m is unit), in A.
template <typename T, typename A>
DMDL_HOST_DEVICE DMDL_INLINE A normalized_dot(const T* x, A xn, const T* m, int64_t d) {
  A acc = A(0);
  DMDL_SIMD_SUM_ACC
  for (int64_t t = 0; t < d; ++t) acc += static_cast<A>(x[t]) * static_cast<A>(m[t]);
  return acc / xn;
}

// One sequential momentum step on memory row m (length d), in place:
//   v = mu * m + ((1 - mu) / xn) * x;   m = v * (1 / max(||v||, eps))
// with xn = max(||x||, eps), i.e. m <- normalize(mu m + (1 - mu) normalize(x)). Elementwise in T
// (the reference divides by the norms; here multiplies by reciprocals: <= 1 ulp apart), the
// norm accumulated in A. mu >= 1 (or NaN): no change (the reference skips such samples).
template <typename T, typename A>
DMDL_HOST_DEVICE DMDL_INLINE void momentum_step(T* m, const T* x, A xn, A mu, int64_t d) {
  if (!(mu < A(1))) return;
  const T a = static_cast<T>(mu);
  const T b = static_cast<T>((A(1) - mu) / xn);
  A acc = A(0);
  DMDL_SIMD_SUM_ACC
  for (int64_t t = 0; t < d; ++t) {
    const T v = a * m[t] + b * x[t];
    m[t] = v;
    acc += static_cast<A>(v) * static_cast<A>(v);
  }
  const T inv = static_cast<T>(A(1) / max_(sqrt_(acc), static_cast<A>(kNormEps)));
  DMDL_SIMD
  for (int64_t t = 0; t < d; ++t) m[t] = m[t] * inv;
}

// All updates of one memory row. The samples that hit this row are order[0:n] (indices
// into the batch, ascending = batch order); x: [B, d] features, mu[B] per-sample momentum.
//   hard == false: one momentum_step per sample, in batch order (the reference's loop).
//   hard == true:  one momentum_step with the sample of LOWEST cosine similarity to the
//                  current row (first one on ties, as np.argmin), with its own momentum.
template <typename T, typename A>
DMDL_HOST_DEVICE DMDL_INLINE void update_row(T* m, const T* x, int64_t d, const A* mu, const int64_t* order,
                                             int64_t n, bool hard) {
  if (n <= 0) return;
  if (!hard) {
    for (int64_t q = 0; q < n; ++q) {
      const T* xi = x + order[q] * d;
      momentum_step<T, A>(m, xi, max_(row_norm<T, A>(xi, d), static_cast<A>(kNormEps)), mu[order[q]], d);
    }
    return;
  }
  int64_t best = -1;
  A best_sim = A(0), best_norm = A(1);
  for (int64_t q = 0; q < n; ++q) {
    const T* xi = x + order[q] * d;
    const A xn = max_(row_norm<T, A>(xi, d), static_cast<A>(kNormEps));
    const A sim = normalized_dot<T, A>(xi, xn, m, d);
    if (best < 0 || sim < best_sim) {
      best = order[q];
      best_sim = sim;
      best_norm = xn;
    }
  }
  momentum_step<T, A>(m, x + best * d, best_norm, mu[best], d);
}

// exp(v) for float in plain arithmetic (Cephes expf: v = n ln2 + r, |r| <= ln2 / 2, degree-6
// polynomial, 2^n from the exponent bits) and without branches, so that a loop of it
// vectorises. Relative error <= 1e-7 against exp over [-87, 0]; arguments below -87 are
// clamped to -87 (result 1.6e-38 instead of a smaller number or 0). Use for arguments <= 88.
DMDL_HOST_DEVICE DMDL_INLINE float exp_poly(float v) {
  const float x = v > -87.0f ? v : -87.0f;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: (t + shifter) - shifter rounds t to an integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// The exponentials of softmax_ce_row: libm (exact) or exp_poly (vectorisable, float).
struct ExpLibm {
  template <typename T>
  DMDL_HOST_DEVICE DMDL_INLINE T operator()(T v) const { return exp_(v); }
};
struct ExpPoly {
  DMDL_HOST_DEVICE DMDL_INLINE float operator()(float v) const { return exp_poly(v); }
};

// Fused softmax cross-entropy of one row and its gradient with respect to the logits.
//
//   s[0:k]  in: raw dot products x_i . m_j;  out: g_j = (p_j * tsum - t_j) * gscale
//   c       logit scale: z_j = s_j * c  (c = 1 / (max(||x_i||, eps) * T)), z_j rounded to T
//   label   hard target in [0, k) when t == nullptr (then t_j = [j == label], tsum = 1)
//   t       soft target row (not renormalised: tsum = sum_j t_j), or nullptr
//   gscale  factor of the gradient row (c / B for dL/d(x_i . m_j) of the batch mean)
//   loss    out: -sum_j t_j log p_j = tsum * lse - sum_j t_j z_j   (hard: lse - z_label)
//   r       out: sum_j g_j s_j (s before it is overwritten), which gives the
//           normalisation term of dL/dx_i
//
// Three passes over the row: max; exp (stored in s), its sum and sum_j e_j s_j; gradient.
// Soft targets add one pass (sums of t_j and t_j s_j in A). Sums over the row run in T
// (SIMD lanes), the rest in A.
template <typename T, typename A, typename Exp>
DMDL_HOST_DEVICE DMDL_INLINE void softmax_ce_row(T* s, int64_t k, A c, int64_t label, const T* t, A gscale, A* loss,
                                            A* r, Exp expf_) {
  const T cs = static_cast<T>(c);
  T mx = s[0] * cs;
  DMDL_SIMD_MAX_MX
  for (int64_t j = 0; j < k; ++j) {
    const T z = s[j] * cs;
    mx = z > mx ? z : mx;
  }
  A tsum = A(1), tz = A(0), ts = A(0);
  if (t == nullptr) {
    ts = static_cast<A>(s[label]);
    tz = static_cast<A>(s[label] * cs);
  } else {
    tsum = A(0);
    for (int64_t j = 0; j < k; ++j) {
      const A tj = static_cast<A>(t[j]);
      tsum += tj;
      ts += tj * static_cast<A>(s[j]);
      tz += tj * static_cast<A>(s[j] * cs);
    }
  }
  T sum = T(0), es = T(0);
  DMDL_SIMD_SUM_SUM_ES
  for (int64_t j = 0; j < k; ++j) {
    const T e = expf_(s[j] * cs - mx);
    sum += e;
    es += e * s[j];
    s[j] = e;
  }
  const A lse = static_cast<A>(mx) + log_(static_cast<A>(sum));
  const A pscale = tsum * gscale / static_cast<A>(sum);
  const T ps = static_cast<T>(pscale);
  const T gs = static_cast<T>(gscale);
  if (t == nullptr) {
    DMDL_SIMD
    for (int64_t j = 0; j < k; ++j) s[j] = s[j] * ps;
    s[label] -= gs;
  } else {
    DMDL_SIMD
    for (int64_t j = 0; j < k; ++j) s[j] = s[j] * ps - t[j] * gs;
  }
  *loss = tsum * lse - tz;
  *r = pscale * static_cast<A>(es) - gscale * ts;
}

#if defined(__GNUC__) && !defined(__CUDACC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors in always-inlined helpers: no ABI crossing
// Host-only float version of softmax_ce_row written with GCC/Clang vector extensions (8 lanes;
// AVX2 when the caller is compiled for it, two SSE halves otherwise): the same passes and
// formulas, exp by exp_poly. The compilers do not vectorise the scalar loops reliably
// (exp_poly's clamp becomes a branch), hence the explicit vectors.
namespace simd {
typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));

DMDL_INLINE f8 load(const float* p) {
  f8 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
DMDL_INLINE void store(float* p, f8 v) { __builtin_memcpy(p, &v, sizeof(v)); }
DMDL_INLINE f8 splat(float v) { return f8{v, v, v, v, v, v, v, v}; }
DMDL_INLINE float hsum(f8 v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}
DMDL_INLINE float hmax(f8 v) {
  float m = v[0];
  for (int l = 1; l < 8; ++l) m = v[l] > m ? v[l] : m;
  return m;
}
DMDL_INLINE f8 exp_poly(f8 v) {
  const f8 lo = splat(-87.0f);
  const f8 x = v > lo ? v : lo;
  const f8 shifter = splat(12582912.0f);
  const f8 n = (x * 1.44269504088896341f + shifter) - shifter;
  const f8 r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  f8 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const i8 bits = (__builtin_convertvector(n, i8) + 127) << 23;
  return p * (f8)bits;  // same-size vector cast: reinterprets the bits
}
}  // namespace simd

DMDL_INLINE void softmax_ce_row_simd(float* s, int64_t k, double c, int64_t label, const float* t, double gscale,
                                double* loss, double* r) {
  using simd::f8;
  const float cs = static_cast<float>(c);
  const int64_t k8 = k - k % 8;
  float mx = s[0] * cs;
  if (k8 > 0) {
    f8 vm = simd::splat(mx);
    for (int64_t j = 0; j < k8; j += 8) {
      const f8 z = simd::load(s + j) * cs;
      vm = z > vm ? z : vm;
    }
    mx = simd::hmax(vm);
  }
  for (int64_t j = k8; j < k; ++j) {
    const float z = s[j] * cs;
    mx = z > mx ? z : mx;
  }
  double tsum = 1.0, tz = 0.0, ts = 0.0;
  if (t == nullptr) {
    ts = static_cast<double>(s[label]);
    tz = static_cast<double>(s[label] * cs);
  } else {
    tsum = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      const double tj = static_cast<double>(t[j]);
      tsum += tj;
      ts += tj * static_cast<double>(s[j]);
      tz += tj * static_cast<double>(s[j] * cs);
    }
  }
  f8 vsum = simd::splat(0.0f), ves = simd::splat(0.0f);
  for (int64_t j = 0; j < k8; j += 8) {
    const f8 sj = simd::load(s + j);
    const f8 e = simd::exp_poly(sj * cs - mx);
    vsum += e;
    ves += e * sj;
    simd::store(s + j, e);
  }
  float sum = simd::hsum(vsum), es = simd::hsum(ves);
  for (int64_t j = k8; j < k; ++j) {
    const float e = exp_poly(s[j] * cs - mx);
    sum += e;
    es += e * s[j];
    s[j] = e;
  }
  const double lse = static_cast<double>(mx) + log(static_cast<double>(sum));
  const double pscale = tsum * gscale / static_cast<double>(sum);
  const float ps = static_cast<float>(pscale);
  const float gs = static_cast<float>(gscale);
  if (t == nullptr) {
    for (int64_t j = 0; j < k8; j += 8) simd::store(s + j, simd::load(s + j) * ps);
    for (int64_t j = k8; j < k; ++j) s[j] = s[j] * ps;
    s[label] -= gs;
  } else {
    for (int64_t j = 0; j < k8; j += 8) simd::store(s + j, simd::load(s + j) * ps - simd::load(t + j) * gs);
    for (int64_t j = k8; j < k; ++j) s[j] = s[j] * ps - t[j] * gs;
  }
  *loss = tsum * lse - tz;
  *r = pscale * static_cast<double>(es) - gscale * ts;
}
#pragma GCC diagnostic pop
#endif

}  // namespace memory
}  // namespace dmdl
