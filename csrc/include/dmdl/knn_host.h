// Host-side checks of the kNN op family (dmdl::knn, dmdl::knn_refine) and of the features every
// op of the Jaccard pipeline takes, written with ATen and device-agnostic, inline so that the CPU
// (csrc/cpu/*.cpp) and CUDA (csrc/cuda/*.cu) translation units each stand alone.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <string>

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

}  // namespace host
}  // namespace dmdl
