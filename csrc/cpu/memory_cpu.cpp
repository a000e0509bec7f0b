// CPU kernels of the cluster-memory step (Cluster-Contrast, ACCV 2022; docs/dmdl.md#A4.1, #A5.5
// ; docs/benchmarks.md#memory-step):
//
//   dmdl::memory_loss_forward  loss and d loss / d features in one call: the two GEMMs
//                              (logits, feature gradient) run in ATen (MKL); the feature
//                              norms, softmax cross-entropy and its gradient are one fused
//                              pass per row (dmdl/memory.h), parallel over rows.
//   dmdl::momentum_update_     the sequential momentum update, in place: samples grouped by
//                              memory row (counting sort, batch order kept inside a row),
//                              at::parallel_for over the distinct rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "dmdl/memory.h"

// 32-byte vector types inside always-inlined helpers (dmdl/memory.h): no ABI boundary is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace dmdl {
namespace memory {
namespace {

// Arguments of the fused per-row pass of memory_loss_forward.
template <typename T>
struct RowArgs {
  const T* x;       // [B, D] features
  T* s;             // [B, K] raw dot products in, logit gradient out
  T* grad;          // [B, D] out: the normalisation term coef_i * x_i of dL/dx_i (G M is added later)
  double* losses;   // [B] out: per-row loss
  const int64_t* y; // [B] hard labels, or nullptr
  const T* t;       // [B, K] soft targets, or nullptr
  int64_t b, d, k;
  double temperature;
};

// Row function of the fused pass: the generic one of dmdl/memory.h (libm exp) or its vectorised
// float version. DMDL_INLINE forces inlining: compiled into the caller, whose target may be AVX2.
struct RowGeneric {
  template <typename T>
  DMDL_INLINE void operator()(T* s, int64_t k, double c, int64_t label, const T* t, double gscale,
                                     double* loss, double* r) const {
    softmax_ce_row<T, double>(s, k, c, label, t, gscale, loss, r, ExpLibm());
  }
};
struct RowSimd {
  DMDL_INLINE void operator()(float* s, int64_t k, double c, int64_t label, const float* t, double gscale,
                                     double* loss, double* r) const {
    softmax_ce_row_simd(s, k, c, label, t, gscale, loss, r);
  }
};

template <typename T, typename Row>
DMDL_INLINE void loss_rows_impl(const RowArgs<T>& a, int64_t i0, int64_t i1, Row row) {
  for (int64_t i = i0; i < i1; ++i) {
    const double xn = row_norm<T, double>(a.x + i * a.d, a.d);
    const double inv = 1.0 / max_(xn, kNormEps);
    const double c = inv / a.temperature;
    double loss = 0.0, r = 0.0;
    row(a.s + i * a.k, a.k, c, a.y ? a.y[i] : 0, a.t ? a.t + i * a.k : nullptr, c / static_cast<double>(a.b), &loss,
        &r);
    a.losses[i] = loss;
    // d/dx of 1/max(||x||, eps): zero where the clamp is active (as autograd of F.normalize).
    const T coef = static_cast<T>(xn > kNormEps ? -inv * inv * r : 0.0);
    const T* xi = a.x + i * a.d;
    T* gi = a.grad + i * a.d;
    DMDL_SIMD
    for (int64_t t = 0; t < a.d; ++t) gi[t] = coef * xi[t];
  }
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
// float: the vectorised row compiled for AVX2 + FMA when the CPU has them; else the generic row
// (libm exp; faster than 8-lane vectors split into SSE halves).
__attribute__((target("avx2,fma"))) void loss_rows_float_avx2(const RowArgs<float>& a, int64_t i0, int64_t i1) {
  loss_rows_impl(a, i0, i1, RowSimd());
}

void loss_rows(const RowArgs<float>& a, int64_t i0, int64_t i1) {
  static const bool avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2_fma) {
    loss_rows_float_avx2(a, i0, i1);
  } else {
    loss_rows_impl(a, i0, i1, RowGeneric());
  }
}
#else
// float on other targets: the generic vector extensions, compiled for the baseline ISA.
void loss_rows(const RowArgs<float>& a, int64_t i0, int64_t i1) { loss_rows_impl(a, i0, i1, RowSimd()); }
#endif

// double (gradcheck, references): libm exp.
void loss_rows(const RowArgs<double>& a, int64_t i0, int64_t i1) { loss_rows_impl(a, i0, i1, RowGeneric()); }

// Arguments of the parallel update: rows distinct[q0:q1], row r's samples order[start[r]:start[r+1]].
template <typename T>
struct UpdateArgs {
  T* m;             // [K, D] memory, updated in place
  const T* x;       // [B, D] features
  const double* mu; // [B] momentum
  const int64_t* order;
  const int64_t* start;
  const int64_t* distinct;
  int64_t d;
  bool hard;
};

template <typename T>
DMDL_INLINE void update_rows_impl(const UpdateArgs<T>& a, int64_t q0, int64_t q1) {
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t r = a.distinct[q];
    update_row<T, double>(a.m + r * a.d, a.x, a.d, a.mu, a.order + a.start[r], a.start[r + 1] - a.start[r], a.hard);
  }
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
template <typename T>
__attribute__((target("avx2,fma"))) void update_rows_avx2(const UpdateArgs<T>& a, int64_t q0, int64_t q1) {
  update_rows_impl(a, q0, q1);
}

template <typename T>
void update_rows(const UpdateArgs<T>& a, int64_t q0, int64_t q1) {
  static const bool avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2_fma) {
    update_rows_avx2(a, q0, q1);
  } else {
    update_rows_impl(a, q0, q1);
  }
}
#else
template <typename T>
void update_rows(const UpdateArgs<T>& a, int64_t q0, int64_t q1) { update_rows_impl(a, q0, q1); }
#endif

void check_features_memory(const char* op, const at::Tensor& features, const at::Tensor& memory) {
  TORCH_CHECK(memory.device().is_cpu(), op, ": this kernel expects memory on the CPU, got ", memory.device());
  TORCH_CHECK(features.device().is_cpu(), op, ": features must be on the device of memory (cpu), got ",
              features.device());
  TORCH_CHECK(memory.dim() == 2, op, ": memory must be 2-D [K, D], got shape ", memory.sizes());
  TORCH_CHECK(features.dim() == 2, op, ": features must be 2-D [B, D], got shape ", features.sizes());
  TORCH_CHECK(memory.scalar_type() == at::kFloat || memory.scalar_type() == at::kDouble, op,
              ": memory must be float32 or float64, got ", memory.scalar_type());
  TORCH_CHECK(features.scalar_type() == memory.scalar_type(), op, ": features must have the dtype of memory (",
              memory.scalar_type(), "), got ", features.scalar_type());
  TORCH_CHECK(memory.size(0) >= 1, op, ": memory must have K >= 1 rows, got shape ", memory.sizes());
  TORCH_CHECK(features.size(1) == memory.size(1), op, ": features [B, D] and memory [K, D] must have the same D, got ",
              features.sizes(), " and ", memory.sizes());
}

std::tuple<at::Tensor, at::Tensor> memory_loss_forward_cpu(const at::Tensor& features, const at::Tensor& memory,
                                                           const at::Tensor& targets, double temperature) {
  const char* op = "dmdl::memory_loss_forward";
  check_features_memory(op, features, memory);
  TORCH_CHECK(temperature > 0, op, ": temperature must be > 0, got ", temperature);
  const int64_t b = features.size(0), d = features.size(1), k = memory.size(0);
  TORCH_CHECK(b >= 1, op, ": features must have B >= 1 rows, got shape ", features.sizes());
  TORCH_CHECK(targets.device().is_cpu(), op, ": targets must be on the device of memory (cpu), got ",
              targets.device());
  const bool soft = targets.dim() == 2;
  if (soft) {
    TORCH_CHECK(targets.scalar_type() == features.scalar_type(), op,
                ": soft targets [B, K] must have the dtype of features (", features.scalar_type(), "), got ",
                targets.scalar_type());
    TORCH_CHECK(targets.size(0) == b && targets.size(1) == k, op, ": soft targets must have shape [B, K] = [", b,
                ", ", k, "], got ", targets.sizes());
  } else {
    TORCH_CHECK(targets.dim() == 1 && targets.size(0) == b, op,
                ": targets must be int64 labels [B] or soft targets [B, K] with B = ", b, ", got shape ",
                targets.sizes());
    TORCH_CHECK(targets.scalar_type() == at::kLong, op, ": hard targets must be int64, got ", targets.scalar_type());
  }
  const at::Tensor x = features.contiguous();
  const at::Tensor m = memory.contiguous();
  const at::Tensor tgt = targets.contiguous();
  if (!soft) {
    const int64_t* y = tgt.data_ptr<int64_t>();
    for (int64_t i = 0; i < b; ++i) {
      TORCH_CHECK(y[i] >= 0 && y[i] < k, op, ": targets must lie in [0, K) = [0, ", k, "), got ", y[i],
                  " at position ", i);
    }
  }

  at::Tensor s = at::mm(x, m.t());  // [B, K] raw dot products; becomes the logit gradient in place
  at::Tensor grad = at::empty({b, d}, x.options());
  std::vector<double> losses(static_cast<size_t>(b));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "memory_loss_forward_cpu", [&] {
    RowArgs<scalar_t> a{x.data_ptr<scalar_t>(),
                        s.data_ptr<scalar_t>(),
                        grad.data_ptr<scalar_t>(),
                        losses.data(),
                        soft ? nullptr : tgt.data_ptr<int64_t>(),
                        soft ? tgt.data_ptr<scalar_t>() : nullptr,
                        b,
                        d,
                        k,
                        temperature};
    const int64_t grain = std::max<int64_t>(1, 32768 / k);
    at::parallel_for(0, b, grain, [&](int64_t i0, int64_t i1) { loss_rows(a, i0, i1); });
  });
  grad.addmm_(s, m);  // + G M: dL/dx = G M + coef x
  double total = 0.0;
  for (int64_t i = 0; i < b; ++i) total += losses[static_cast<size_t>(i)];
  at::Tensor loss = at::scalar_tensor(total / static_cast<double>(b), x.options());
  return {loss, grad};
}

void momentum_update_cpu(at::Tensor& memory, const at::Tensor& features, const at::Tensor& labels,
                         const at::Tensor& momentum, const std::optional<at::Tensor>& row_ids, bool hard) {
  const char* op = "dmdl::momentum_update_";
  check_features_memory(op, features, memory);
  TORCH_CHECK(memory.is_contiguous(), op, ": memory must be contiguous (it is updated in place)");
  const int64_t b = features.size(0), d = features.size(1), k = memory.size(0);
  TORCH_CHECK(labels.device().is_cpu(), op, ": labels must be on the device of memory (cpu), got ", labels.device());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == b, op, ": labels must have shape [B] = [", b, "], got ",
              labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, op, ": labels must be int64, got ", labels.scalar_type());
  TORCH_CHECK(momentum.device().is_cpu(), op, ": momentum must be on the device of memory (cpu), got ",
              momentum.device());
  TORCH_CHECK(at::isFloatingType(momentum.scalar_type()), op, ": momentum must be a floating tensor, got ",
              momentum.scalar_type());
  TORCH_CHECK(momentum.dim() == 0 || (momentum.dim() == 1 && momentum.size(0) == b), op,
              ": momentum must be a scalar tensor or have shape [B] = [", b, "], got ", momentum.sizes());
  if (b == 0) return;

  // Sample -> memory row (-1: skipped).
  const at::Tensor lab = labels.contiguous();
  const int64_t* lp = lab.data_ptr<int64_t>();
  std::vector<int64_t> rows(static_cast<size_t>(b));
  if (row_ids.has_value()) {
    const at::Tensor& ids = *row_ids;
    TORCH_CHECK(ids.device().is_cpu(), op, ": row_ids must be on the device of memory (cpu), got ", ids.device());
    TORCH_CHECK(ids.dim() == 1 && ids.size(0) == k, op, ": row_ids must have shape [K] = [", k, "], got ",
                ids.sizes());
    TORCH_CHECK(ids.scalar_type() == at::kLong, op, ": row_ids must be int64, got ", ids.scalar_type());
    const at::Tensor idc = ids.contiguous();
    const int64_t* ip = idc.data_ptr<int64_t>();
    std::vector<std::pair<int64_t, int64_t>> table(static_cast<size_t>(k));
    for (int64_t r = 0; r < k; ++r) {
      TORCH_CHECK(ip[r] >= 0, op, ": row_ids must be >= 0, got ", ip[r], " at row ", r);
      table[static_cast<size_t>(r)] = {ip[r], r};
    }
    std::sort(table.begin(), table.end());
    for (int64_t r = 1; r < k; ++r) {
      TORCH_CHECK(table[r].first != table[r - 1].first, op, ": row_ids must be distinct, label ", table[r].first,
                  " is held by rows ", table[r - 1].second, " and ", table[r].second);
    }
    for (int64_t i = 0; i < b; ++i) {
      TORCH_CHECK(lp[i] >= 0, op, ": labels must be >= 0, got ", lp[i], " at position ", i);
      auto it = std::lower_bound(table.begin(), table.end(), std::make_pair(lp[i], int64_t(-1)));
      rows[static_cast<size_t>(i)] = (it != table.end() && it->first == lp[i]) ? it->second : -1;
    }
  } else {
    for (int64_t i = 0; i < b; ++i) {
      TORCH_CHECK(lp[i] >= 0 && lp[i] < k, op, ": labels must lie in [0, K) = [0, ", k, "), got ", lp[i],
                  " at position ", i, " (pass row_ids for memories that cover only some labels)");
      rows[static_cast<size_t>(i)] = lp[i];
    }
  }

  // Counting sort by row, stable: order[start[r] : start[r + 1]] are row r's samples in batch order.
  std::vector<int64_t> start(static_cast<size_t>(k + 1), 0);
  for (int64_t i = 0; i < b; ++i) {
    if (rows[i] >= 0) ++start[static_cast<size_t>(rows[i] + 1)];
  }
  for (int64_t r = 0; r < k; ++r) start[r + 1] += start[r];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  std::vector<int64_t> order(static_cast<size_t>(start[k]));
  for (int64_t i = 0; i < b; ++i) {
    if (rows[i] >= 0) order[static_cast<size_t>(fill[rows[i]]++)] = i;
  }
  std::vector<int64_t> distinct;
  for (int64_t r = 0; r < k; ++r) {
    if (start[r + 1] > start[r]) distinct.push_back(r);
  }
  if (distinct.empty()) return;

  // Per-sample momentum (double); the rows run in parallel, each row's samples in batch order.
  const at::Tensor mu_t = momentum.to(at::kDouble).expand({b}).contiguous();
  const at::Tensor x = features.contiguous();
  AT_DISPATCH_FLOATING_TYPES(memory.scalar_type(), "momentum_update_cpu", [&] {
    UpdateArgs<scalar_t> a{memory.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mu_t.data_ptr<double>(),
                           order.data(), start.data(), distinct.data(), d, hard};
    const int64_t n_rows = static_cast<int64_t>(distinct.size());
    const int64_t per_row = std::max<int64_t>(1, 4 * d * (static_cast<int64_t>(order.size()) / n_rows));
    at::parallel_for(0, n_rows, std::max<int64_t>(1, 65536 / per_row),
                     [&](int64_t q0, int64_t q1) { update_rows(a, q0, q1); });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dmdl, CPU, m) {
  m.impl("memory_loss_forward", &memory_loss_forward_cpu);
  m.impl("momentum_update_", &momentum_update_cpu);
}

}  // namespace memory
}  // namespace dmdl
