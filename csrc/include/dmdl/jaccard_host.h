// Host-side helpers of the Jaccard op (dmdl::jaccard_sparse), written with ATen and device-agnostic,
// inline so that the CPU (csrc/cpu/*.cpp) and CUDA (csrc/cuda/*.cu) translation units each stand
// alone. The checks of the features are the kNN family's (dmdl/knn_host.h).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>

#include "dmdl/knn_host.h"

namespace dmdl {
namespace host {

// rank: [N, k1] int32 neighbour lists (row i nearest first) on the device of features, every
// index in [0, N).
inline void check_rank(const at::Tensor& rank, const at::Tensor& features, const char* op) {
  TORCH_CHECK(rank.device() == features.device(), op, ": `rank` must be on the device of `features` (",
              features.device(), "), got ", rank.device());
  TORCH_CHECK(rank.dim() == 2 && rank.size(0) == features.size(0), op, ": `rank` must be [N, k1] with N = ",
              features.size(0), ", got shape ", rank.sizes());
  TORCH_CHECK(rank.scalar_type() == at::kInt, op, ": `rank` must be int32, got ", rank.scalar_type());
  TORCH_CHECK(rank.is_contiguous(), op, ": `rank` must be contiguous");
  TORCH_CHECK(rank.size(1) >= 1 && rank.size(1) <= features.size(0), op, ": `rank` must have 1 <= k1 <= N columns, got ",
              rank.size(1));
  check_index_range(rank, features.size(0), op, "rank");
}

// Inverted index (CSC) of the CSR matrix (ptr [N+1] int64, col [nnz] int32, val [nnz] float):
// returns {col_ptr [N+1] int64, row [nnz] int32, val [nnz] float}, rows ascending per column.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_transpose(const at::Tensor& ptr, const at::Tensor& col,
                                                                    const at::Tensor& val, int64_t n) {
  const at::Tensor counts = ptr.narrow(0, 1, n) - ptr.narrow(0, 0, n);
  const at::Tensor rows = at::repeat_interleave(at::arange(n, ptr.options()), counts);
  const at::Tensor col64 = col.to(at::kLong);
  const at::Tensor perm = std::get<1>(at::sort(col64, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  at::Tensor col_ptr = at::zeros({n + 1}, ptr.options());
  col_ptr.narrow(0, 1, n).copy_(at::cumsum(at::bincount(col64, {}, n), 0));
  return {col_ptr, rows.index_select(0, perm).to(at::kInt), val.index_select(0, perm)};
}

}  // namespace host
}  // namespace dmdl
