// CPU kernel of dmdl::jaccard_sparse: the k-reciprocal Jaccard distance (docs/dmdl.md#A9) from
// exact neighbour lists (dmdl::knn), as a CSR matrix of every pair whose distance is < 1.
// Rows run through at::parallel_for; each step is a per-row function of dmdl/jaccard.h, the same
// code the CUDA kernel runs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "dmdl/jaccard.h"
#include "dmdl/jaccard_host.h"

namespace dmdl {
namespace jaccard {
namespace {

constexpr const char* kOp = "dmdl::jaccard_sparse";

// Returns (crow int64 [N+1], col int32 [nnz], val float32 [nnz]): row i holds the columns j,
// ascending, with d_ij < 1 (d_ij = 0 stored as an explicit 0). Every absent pair has d_ij = 1.
std::tuple<at::Tensor, at::Tensor, at::Tensor> jaccard_sparse_cpu(const at::Tensor& features, const at::Tensor& rank,
                                                                  int64_t k2) {
  host::check_features(features, kOp, c10::DeviceType::CPU);
  host::check_rank(rank, features, kOp);
  TORCH_CHECK(k2 >= 1, kOp, ": `k2` must be >= 1, got ", k2);
  const int64_t n = features.size(0);
  const int64_t d = features.size(1);
  const int K1 = static_cast<int>(rank.size(1));
  const int KH = half_cols(K1);
  const int KQ = static_cast<int>(std::min<int64_t>(k2, K1));  // reference: initial_rank[i, :k2] has k1 columns
  const auto opt_i = features.options().dtype(at::kInt);
  const auto opt_l = features.options().dtype(at::kLong);
  const float* x = features.data_ptr<float>();
  const int32_t* rk = rank.data_ptr<int32_t>();

  // 1. k-reciprocal sets R(i, k1) and R(i, round(k1/2)).
  at::Tensor r1 = at::empty({n, K1}, opt_i), c1 = at::empty({n}, opt_i);
  at::Tensor rh = at::empty({n, KH}, opt_i), ch = at::empty({n}, opt_i);
  int32_t *r1p = r1.data_ptr<int32_t>(), *c1p = c1.data_ptr<int32_t>();
  int32_t *rhp = rh.data_ptr<int32_t>(), *chp = ch.data_ptr<int32_t>();
  at::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      c1p[i] = reciprocal_row(rk, K1, static_cast<int32_t>(i), K1, r1p + i * K1);
      chp[i] = reciprocal_row(rk, K1, static_cast<int32_t>(i), KH, rhp + i * KH);
    }
  });

  // 2. expanded sets and their softmax weights: the sparse rows of V.
  const int64_t cap = expansion_capacity(K1, n);
  at::Tensor ecol = at::empty({n, cap}, opt_i), ecnt = at::empty({n}, opt_i);
  at::Tensor ewt = at::empty({n, cap}, features.options());
  int32_t *ecolp = ecol.data_ptr<int32_t>(), *ecntp = ecnt.data_ptr<int32_t>();
  float* ewtp = ewt.data_ptr<float>();
  // Rows in breadth-first order of the kNN graph: consecutive rows share most of their expanded
  // sets, so the feature rows their weights read stay in cache (the step is memory-bound).
  std::vector<int32_t> order;
  order.reserve(n);
  {
    std::vector<uint8_t> seen(n, 0);
    for (int64_t s = 0; s < n; ++s) {
      if (seen[s]) continue;
      seen[s] = 1;
      size_t head = order.size();
      order.push_back(static_cast<int32_t>(s));
      while (head < order.size()) {
        const int32_t* nb = rk + static_cast<int64_t>(order[head++]) * K1;
        for (int a = 0; a < K1; ++a) {
          if (!seen[nb[a]]) {
            seen[nb[a]] = 1;
            order.push_back(nb[a]);
          }
        }
      }
    }
  }
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      const int64_t i = order[o];
      int32_t* cols = ecolp + i * cap;
      const int m = expand_row(static_cast<int32_t>(i), r1p, c1p, K1, rhp, chp, KH, cols);
      ecntp[i] = m;
      softmax_weights_row(x, d, static_cast<int32_t>(i), cols, m, ewtp + i * cap);
    }
  });

  // 3. query expansion (CSR): count, then fill.
  at::Tensor qcnt = at::empty({n}, opt_l);
  int64_t* qcntp = qcnt.data_ptr<int64_t>();
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      const int64_t i = order[o];
      qcntp[i] = qe_merge_row(rk + i * K1, KQ, ecolp, ewtp, ecntp, cap, nullptr, nullptr);
    }
  });
  at::Tensor ptr = at::zeros({n + 1}, opt_l);
  ptr.narrow(0, 1, n).copy_(at::cumsum(qcnt, 0));
  const int64_t* ptrp = ptr.data_ptr<int64_t>();
  const int64_t nnz_v = ptrp[n];
  at::Tensor qcol = at::empty({nnz_v}, opt_i);
  at::Tensor qval = at::empty({nnz_v}, features.options());
  int32_t* qcolp = qcol.data_ptr<int32_t>();
  float* qvalp = qval.data_ptr<float>();
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      const int64_t i = order[o];
      qe_merge_row(rk + i * K1, KQ, ecolp, ewtp, ecntp, cap, qcolp + ptrp[i], qvalp + ptrp[i]);
    }
  });
  ecol.reset();
  ewt.reset();

  // 4. inverted index (column -> rows) and the sparse min-plus product. Two passes over the rows
  //    (count, then fill the exactly sized CSR): the product is cheap next to the kNN, and the
  //    output is never held twice. Per task, a dense accumulator of N floats and a bitmap of the
  //    touched columns, both reset as they are read.
  auto inv = host::csr_transpose(ptr, qcol, qval, n);
  const int64_t* cptr = std::get<0>(inv).data_ptr<int64_t>();
  const int32_t* irow = std::get<1>(inv).data_ptr<int32_t>();
  const float* ival = std::get<2>(inv).data_ptr<float>();
  const int64_t words = (n + 63) / 64;
  // Row i's stored pairs, columns ascending; with out_col == nullptr only counted.
  auto min_plus_row = [&](int64_t i, float* acc, uint64_t* touched, int32_t* out_col, float* out_val) -> int64_t {
    for (int64_t p = ptrp[i]; p < ptrp[i + 1]; ++p) {
      accumulate_column_bits(qvalp[p], irow, ival, cptr[qcolp[p]], cptr[qcolp[p] + 1], acc, touched);
    }
    int64_t kept = 0;
    for (int64_t w = 0; w < words; ++w) {  // touched columns in ascending order, word by word
      uint64_t bits = touched[w];
      if (bits == 0) continue;
      touched[w] = 0;
      while (bits) {
        const int32_t j = static_cast<int32_t>(w * 64 + __builtin_ctzll(bits));
        bits &= bits - 1;
        const float dist = jaccard_from_overlap(acc[j]);
        acc[j] = 0.f;
        if (stored_distance(dist)) {
          if (out_col != nullptr) {
            out_col[kept] = j;
            out_val[kept] = dist;
          }
          ++kept;
        }
      }
    }
    return kept;
  };
  at::Tensor rcnt = at::empty({n}, opt_l);
  int64_t* rcntp = rcnt.data_ptr<int64_t>();
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    std::vector<float> acc(n, 0.f);
    std::vector<uint64_t> touched(words, 0);
    for (int64_t i = b; i < e; ++i) rcntp[i] = min_plus_row(i, acc.data(), touched.data(), nullptr, nullptr);
  });
  at::Tensor crow = at::zeros({n + 1}, opt_l);
  crow.narrow(0, 1, n).copy_(at::cumsum(rcnt, 0));
  const int64_t* crowp = crow.data_ptr<int64_t>();
  at::Tensor col = at::empty({crowp[n]}, opt_i);
  at::Tensor val = at::empty({crowp[n]}, features.options());
  int32_t* colp = col.data_ptr<int32_t>();
  float* valp = val.data_ptr<float>();
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    std::vector<float> acc(n, 0.f);
    std::vector<uint64_t> touched(words, 0);
    for (int64_t i = b; i < e; ++i) min_plus_row(i, acc.data(), touched.data(), colp + crowp[i], valp + crowp[i]);
  });
  return {crow, col, val};
}

}  // namespace

TORCH_LIBRARY_IMPL(dmdl, CPU, m) { m.impl("jaccard_sparse", &jaccard_sparse_cpu); }

}  // namespace jaccard
}  // namespace dmdl
