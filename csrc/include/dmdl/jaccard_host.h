// Host-side helpers of the kNN and Jaccard ops, written with ATen and device-agnostic, inline so
// that the CPU (csrc/cpu/*.cpp) and CUDA (csrc/cuda/*.cu) translation units each stand alone.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <string>
#include <tuple>

#include "dmdl/knn.h"

namespace dmdl {
namespace host {

// features: [N, D] float32, contiguous, N >= 2, D >= 1, on `device`. Errors name op and argument.
inline void check_features(const at::Tensor& features, const char* op, c10::DeviceType device) {
  TORCH_CHECK(features.device().type() == device, op, ": this kernel expects `features` on ",
              c10::DeviceTypeName(device), ", got a tensor on ", features.device());
  TORCH_CHECK(features.dim() == 2, op, ": `features` must be 2-D [N, D], got shape ", features.sizes());
  TORCH_CHECK(features.scalar_type() == at::kFloat, op, ": `features` must be float32, got ", features.scalar_type());
  TORCH_CHECK(features.is_contiguous(), op, ": `features` must be contiguous (call .contiguous())");
  const int64_t n = features.size(0);
  TORCH_CHECK(n >= 2, op, ": `features` must have N >= 2 rows, got shape ", features.sizes());
  TORCH_CHECK(features.size(1) >= 1, op, ": `features` must have D >= 1 columns, got shape ", features.sizes());
  TORCH_CHECK(n < std::numeric_limits<int32_t>::max(), op, ": N = ", n, " rows is too many (int32 indices)");
}

// Every value of the int32 index tensor `idx` (argument `name`) lies in [0, n). The kernels index
// with these values unchecked, so this reads them (one device-to-host sync on a GPU).
inline void check_index_range(const at::Tensor& idx, int64_t n, const char* op, const char* name) {
  const int64_t bad = at::logical_or(idx.lt(0), idx.ge(n)).sum().item<int64_t>();
  TORCH_CHECK(bad == 0, op, ": `", name, "` holds ", bad, " indices outside [0, N) = [0, ", n, ")");
}

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

// k in [1, N] and margin >= 0 (dmdl::knn on every backend).
inline void check_k(int64_t k, int64_t margin, int64_t n, const char* op) {
  TORCH_CHECK(k >= 1 && k <= n, op, ": `k` must be in [1, N] = [1, ", n, "], got ", k);
  TORCH_CHECK(margin >= 0, op, ": `margin` must be >= 0, got ", margin);
}

inline int parse_precision(const std::string& p, const char* op) {
  if (p == "fp32") return knn::kFP32;
  if (p == "tf32") return knn::kTF32;
  if (p == "bf16") return knn::kBF16;
  TORCH_CHECK(false, op, ": `precision` must be 'fp32', 'tf32' or 'bf16', got '", p, "'");
  return -1;
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
