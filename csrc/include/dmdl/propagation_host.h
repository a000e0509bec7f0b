// Host-side input checks of dmdl::propagate, written with ATen, inline so that the CPU
// (csrc/cpu/propagation_cpu.cpp) and CUDA (csrc/cuda/propagation_cuda.cu) translation units each
// stand alone. Errors name the op and the argument.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

namespace dmdl {
namespace host {

// The metadata checks of dmdl::propagate (no tensor values are read, no device synchronisation):
//   crow int64 [N_out + 1], col int32 [nnz], val float32 [nnz], x float32 [N_in, K] contiguous,
//   z float32 [N_out, K], all on one device of type `device`; a and b finite as float32.
inline void check_propagate_meta(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val,
                                 const at::Tensor& x, const at::Tensor& z, double a, double b, const char* op,
                                 c10::DeviceType device) {
  TORCH_CHECK(x.device().type() == device, op, ": this kernel expects `x` on ", c10::DeviceTypeName(device),
              ", got a tensor on ", x.device());
  struct Named {
    const at::Tensor& t;
    const char* name;
  };
  for (const Named& n : {Named{crow, "crow"}, Named{col, "col"}, Named{val, "val"}, Named{z, "z"}}) {
    TORCH_CHECK(n.t.device() == x.device(), op, ": `", n.name, "` must be on the device of `x` (", x.device(),
                "), got ", n.t.device());
  }
  TORCH_CHECK(crow.scalar_type() == at::kLong, op, ": `crow` must be int64, got ", crow.scalar_type());
  TORCH_CHECK(col.scalar_type() == at::kInt, op, ": `col` must be int32, got ", col.scalar_type());
  TORCH_CHECK(val.scalar_type() == at::kFloat, op, ": `val` must be float32, got ", val.scalar_type());
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": `x` must be float32, got ", x.scalar_type());
  TORCH_CHECK(z.scalar_type() == at::kFloat, op, ": `z` must be float32, got ", z.scalar_type());
  TORCH_CHECK(crow.dim() == 1, op, ": `crow` must be 1-D [N_out + 1], got shape ", crow.sizes());
  TORCH_CHECK(col.dim() == 1, op, ": `col` must be 1-D [nnz], got shape ", col.sizes());
  TORCH_CHECK(val.dim() == 1 && val.size(0) == col.size(0), op, ": `val` must be 1-D [nnz] with the nnz = ",
              col.size(0), " of `col`, got shape ", val.sizes());
  TORCH_CHECK(x.dim() == 2, op, ": `x` must be 2-D [N_in, K], got shape ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), op, ": `x` must be contiguous (call .contiguous())");
  TORCH_CHECK(z.dim() == 2, op, ": `z` must be 2-D [N_out, K], got shape ", z.sizes());
  TORCH_CHECK(z.size(1) == x.size(1), op, ": `z` [N_out, K] and `x` [N_in, K] must have the same K, got ", z.sizes(),
              " and ", x.sizes());
  TORCH_CHECK(crow.size(0) == z.size(0) + 1, op, ": `crow` must have N_out + 1 = ", z.size(0) + 1,
              " entries (N_out = the rows of `z`), got ", crow.size(0));
  // The kernels compute in float32: a and b must be finite once rounded to it.
  TORCH_CHECK(std::isfinite(static_cast<float>(a)), op, ": `a` must be finite (as float32), got ", a);
  TORCH_CHECK(std::isfinite(static_cast<float>(b)), op, ": `b` must be finite (as float32), got ", b);
}

// The value checks of the CSR structure (host memory: CPU tensors only): crow[0] == 0, crow
// non-decreasing, crow[N_out] == nnz, every col in [0, N_in). crow and col must be contiguous.
inline void check_propagate_structure(const int64_t* crow, int64_t n_out, const int32_t* col, int64_t nnz,
                                      int64_t n_in, const char* op) {
  TORCH_CHECK(crow[0] == 0, op, ": `crow` must start at 0, got crow[0] = ", crow[0]);
  for (int64_t i = 0; i < n_out; ++i) {
    TORCH_CHECK(crow[i + 1] >= crow[i], op, ": `crow` must be non-decreasing, got crow[", i, "] = ", crow[i],
                " > crow[", i + 1, "] = ", crow[i + 1]);
  }
  TORCH_CHECK(crow[n_out] == nnz, op, ": `crow` must end at nnz = ", nnz, " (the length of `col`), got crow[",
              n_out, "] = ", crow[n_out]);
  int32_t lo = 0, hi = 0;  // min and max of col (a vectorised pass), then the first culprit
  if (nnz > 0) lo = hi = col[0];
  for (int64_t p = 0; p < nnz; ++p) {
    lo = col[p] < lo ? col[p] : lo;
    hi = col[p] > hi ? col[p] : hi;
  }
  if (nnz > 0 && (lo < 0 || hi >= n_in)) {
    for (int64_t p = 0; p < nnz; ++p) {
      TORCH_CHECK(col[p] >= 0 && col[p] < n_in, op, ": `col` must lie in [0, N_in) = [0, ", n_in, "), got ", col[p],
                  " at position ", p);
    }
  }
}

}  // namespace host
}  // namespace dmdl
