// CPU kernel of dmdl::jaccard_distance (OpenMP over rows) and the device-agnostic
// ATen helpers (input checks, exact kNN, CSR transpose) that the CUDA kernel reuses.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "dmdl/jaccard.h"

namespace dmdl {
namespace jaccard {

void check_inputs(const at::Tensor& features, int64_t k1, int64_t k2, c10::DeviceType device) {
  TORCH_CHECK(features.device().type() == device, "dmdl::jaccard_distance: this kernel expects features on ",
              c10::DeviceTypeName(device), ", got a tensor on ", features.device());
  TORCH_CHECK(features.dim() == 2, "dmdl::jaccard_distance: features must be 2-D [N, D], got shape ",
              features.sizes());
  TORCH_CHECK(features.scalar_type() == at::kFloat, "dmdl::jaccard_distance: features must be float32, got ",
              features.scalar_type());
  TORCH_CHECK(features.is_contiguous(), "dmdl::jaccard_distance: features must be contiguous (call .contiguous())");
  const int64_t n = features.size(0);
  TORCH_CHECK(n >= 2, "dmdl::jaccard_distance: features must have N >= 2 rows, got shape ", features.sizes());
  TORCH_CHECK(features.size(1) >= 1, "dmdl::jaccard_distance: features must have D >= 1 columns, got shape ",
              features.sizes());
  TORCH_CHECK(n < std::numeric_limits<int32_t>::max(), "dmdl::jaccard_distance: N = ", n, " rows is too many");
  TORCH_CHECK(k1 >= 1 && k1 <= n, "dmdl::jaccard_distance: k1 must be in [1, N] = [1, ", n, "], got ", k1);
  TORCH_CHECK(k2 >= 1, "dmdl::jaccard_distance: k2 must be >= 1, got ", k2);
}

at::Tensor knn_rank(const at::Tensor& x, int64_t k) {
  const int64_t n = x.size(0);
  const at::Tensor sq = (x * x).sum(1);
  const at::Tensor xt = x.t();
  // Row blocks of at most 2^25 distances (128 MiB); small problems run as one block,
  // which is exactly the computation of the Python reference.
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(n, (int64_t(1) << 25) / n));
  at::Tensor out = at::empty({n, k}, x.options().dtype(at::kInt));
  for (int64_t s = 0; s < n; s += rows) {
    const int64_t b = std::min(rows, n - s);
    const at::Tensor xb = (b == n) ? x : x.narrow(0, s, b);
    at::Tensor d = sq.narrow(0, s, b).unsqueeze(1) + sq.unsqueeze(0) - at::mm(xb, xt) * 2;
    auto top = at::topk(d, k, /*dim=*/1, /*largest=*/false, /*sorted=*/true);
    // topk does not order equal distances: sort by index, then stably by distance.
    auto by_index = at::sort(std::get<1>(top), /*stable=*/false, /*dim=*/1, /*descending=*/false);
    const at::Tensor vals = std::get<0>(top).gather(1, std::get<1>(by_index));
    auto by_dist = at::sort(vals, /*stable=*/true, /*dim=*/1, /*descending=*/false);
    at::Tensor idx = std::get<0>(by_index).gather(1, std::get<1>(by_dist));
    // Rows where equal distances straddle the k-th place: topk may have kept larger
    // indices; redo them with a full stable sort (rare).
    const at::Tensor kth = std::get<0>(by_dist).narrow(1, k - 1, 1);
    const at::Tensor bad = (d == kth).sum(1) != (std::get<0>(by_dist) == kth).sum(1);
    if (bad.any().item<bool>()) {
      const at::Tensor r = bad.nonzero().squeeze(1);
      auto full = at::sort(d.index_select(0, r), /*stable=*/true, /*dim=*/1, /*descending=*/false);
      idx.index_copy_(0, r, std::get<1>(full).narrow(1, 0, k));
    }
    out.narrow(0, s, b).copy_(idx);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_transpose(const at::Tensor& ptr, const at::Tensor& col,
                                                             const at::Tensor& val, int64_t n) {
  const at::Tensor counts = ptr.narrow(0, 1, n) - ptr.narrow(0, 0, n);
  const at::Tensor rows = at::repeat_interleave(at::arange(n, ptr.options()), counts);
  const at::Tensor col64 = col.to(at::kLong);
  const at::Tensor perm = std::get<1>(at::sort(col64, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  at::Tensor col_ptr = at::zeros({n + 1}, ptr.options());
  col_ptr.narrow(0, 1, n).copy_(at::cumsum(at::bincount(col64, {}, n), 0));
  return {col_ptr, rows.index_select(0, perm).to(at::kInt), val.index_select(0, perm)};
}

namespace {

at::Tensor jaccard_distance_cpu(const at::Tensor& features, int64_t k1, int64_t k2) {
  check_inputs(features, k1, k2, c10::DeviceType::CPU);
  const int64_t n = features.size(0);
  const int64_t d = features.size(1);
  const int K1 = static_cast<int>(k1);
  const int KH = half_cols(K1);
  const int KQ = static_cast<int>(std::min<int64_t>(k2, k1));  // reference: initial_rank[i, :k2] has k1 columns
  const int nthreads = at::get_num_threads();
  const auto opt_i = features.options().dtype(at::kInt);
  const auto opt_l = features.options().dtype(at::kLong);
  const float* x = features.data_ptr<float>();

  // 1. exact kNN, self included.
  const at::Tensor rank = knn_rank(features, k1);
  const int32_t* rk = rank.data_ptr<int32_t>();

  // 2. k-reciprocal sets R(i, k1) and R(i, round(k1/2)).
  at::Tensor r1 = at::empty({n, K1}, opt_i), c1 = at::empty({n}, opt_i);
  at::Tensor rh = at::empty({n, KH}, opt_i), ch = at::empty({n}, opt_i);
  int32_t *r1p = r1.data_ptr<int32_t>(), *c1p = c1.data_ptr<int32_t>();
  int32_t *rhp = rh.data_ptr<int32_t>(), *chp = ch.data_ptr<int32_t>();
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t i = 0; i < n; ++i) {
    c1p[i] = reciprocal_row(rk, K1, static_cast<int32_t>(i), K1, r1p + i * K1);
    chp[i] = reciprocal_row(rk, K1, static_cast<int32_t>(i), KH, rhp + i * KH);
  }

  // 3. expanded sets and their softmax weights: the sparse rows of V.
  const int64_t cap = expansion_capacity(K1, n);
  at::Tensor ecol = at::empty({n, cap}, opt_i), ecnt = at::empty({n}, opt_i);
  at::Tensor ewt = at::empty({n, cap}, features.options());
  int32_t *ecolp = ecol.data_ptr<int32_t>(), *ecntp = ecnt.data_ptr<int32_t>();
  float* ewtp = ewt.data_ptr<float>();
#pragma omp parallel for schedule(dynamic, 64) num_threads(nthreads)
  for (int64_t i = 0; i < n; ++i) {
    int32_t* cols = ecolp + i * cap;
    const int m = expand_row(static_cast<int32_t>(i), r1p, c1p, K1, rhp, chp, KH, cols);
    ecntp[i] = m;
    softmax_weights_row(x, d, static_cast<int32_t>(i), cols, m, ewtp + i * cap);
  }

  // 4. query expansion (CSR): count, then fill.
  at::Tensor qcnt = at::empty({n}, opt_l);
  int64_t* qcntp = qcnt.data_ptr<int64_t>();
#pragma omp parallel for schedule(dynamic, 64) num_threads(nthreads)
  for (int64_t i = 0; i < n; ++i) {
    qcntp[i] = qe_merge_row(rk + i * K1, KQ, ecolp, ewtp, ecntp, cap, nullptr, nullptr);
  }
  at::Tensor ptr = at::zeros({n + 1}, opt_l);
  ptr.narrow(0, 1, n).copy_(at::cumsum(qcnt, 0));
  const int64_t* ptrp = ptr.data_ptr<int64_t>();
  const int64_t nnz = ptrp[n];
  at::Tensor qcol = at::empty({nnz}, opt_i);
  at::Tensor qval = at::empty({nnz}, features.options());
  int32_t* qcolp = qcol.data_ptr<int32_t>();
  float* qvalp = qval.data_ptr<float>();
#pragma omp parallel for schedule(dynamic, 64) num_threads(nthreads)
  for (int64_t i = 0; i < n; ++i) {
    qe_merge_row(rk + i * K1, KQ, ecolp, ewtp, ecntp, cap, qcolp + ptrp[i], qvalp + ptrp[i]);
  }
  ecol.reset();
  ewt.reset();

  // 5. inverted index (column -> rows) and the min-sum per row.
  auto inv = csr_transpose(ptr, qcol, qval, n);
  const int64_t* cptr = std::get<0>(inv).data_ptr<int64_t>();
  const int32_t* irow = std::get<1>(inv).data_ptr<int32_t>();
  const float* ival = std::get<2>(inv).data_ptr<float>();
  at::Tensor out = at::empty({n, n}, features.options());
  float* outp = out.data_ptr<float>();
#pragma omp parallel for schedule(dynamic, 16) num_threads(nthreads)
  for (int64_t i = 0; i < n; ++i) {
    float* acc = outp + i * n;
    std::fill(acc, acc + n, 0.f);
    for (int64_t p = ptrp[i]; p < ptrp[i + 1]; ++p) {
      const int32_t c = qcolp[p];
      accumulate_column(qvalp[p], irow, ival, cptr[c], cptr[c + 1], 1, acc);
    }
    for (int64_t j = 0; j < n; ++j) acc[j] = jaccard_from_overlap(acc[j]);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dmdl, CPU, m) { m.impl("jaccard_distance", &jaccard_distance_cpu); }

}  // namespace jaccard
}  // namespace dmdl
