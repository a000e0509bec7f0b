// CPU kernel of dmdl::propagate, the label-propagation step of MULT (arXiv 2402.00672;
// docs/mult.md#B3.4; docs/benchmarks.md#propagation): out = a * A @ x + b * z with A a CSR affinity.
//
// The CSR structure is checked on the host first (dmdl/propagation_host.h). Rows run through
// at::parallel_for (grain from the mean work per row); each row is computed by row_columns of
// dmdl/propagation.h, the code the CUDA kernel runs, in chunks of kCpuColumns columns accumulated
// in the output row (L1) while the row's non-zeros stream past, kUnroll at a time, each reading a
// contiguous piece of one row of x. Compiled for AVX2 when the CPU has it (without FMA: see
// dmdl/propagation.h for why), else for the baseline ISA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "dmdl/propagation.h"
#include "dmdl/propagation_host.h"

// 32-byte vector types inside always-inlined helpers: no ABI boundary is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace dmdl {
namespace propagation {
namespace {

constexpr const char* kOp = "dmdl::propagate";

// Arguments of the per-row loop.
struct Args {
  const int64_t* crow;
  const int32_t* col;
  const float* val;
  const float* x;
  const float* z;
  float* out;
  float a, b;
  int64_t k;
};

// Rows [i0, i1), each in chunks of kCpuColumns columns.
DMDL_PROP_INLINE void rows_impl(const Args& g, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t k0 = 0; k0 < g.k; k0 += kCpuColumns) {
      const int64_t width = g.k - k0 < kCpuColumns ? g.k - k0 : kCpuColumns;
      row_columns(g.crow, g.col, g.val, g.x, g.z, g.a, g.b, g.k, i, k0, width, nullptr, g.out);
    }
  }
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
// AVX2 without FMA: 8-lane products and sums, each rounded on its own as on the GPU.
__attribute__((target("avx2"))) void rows_avx2(const Args& g, int64_t i0, int64_t i1) { rows_impl(g, i0, i1); }

void rows(const Args& g, int64_t i0, int64_t i1) {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) {
    rows_avx2(g, i0, i1);
  } else {
    rows_impl(g, i0, i1);
  }
}
#else
void rows(const Args& g, int64_t i0, int64_t i1) { rows_impl(g, i0, i1); }
#endif

// Returns out [N_out, K] float32: out[i] = a * sum_p val[p] * x[col[p]] + b * z[i], accumulated in
// float32 in CSR order.
at::Tensor propagate_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val, const at::Tensor& x,
                         const at::Tensor& z, double a, double b) {
  host::check_propagate_meta(crow, col, val, x, z, a, b, kOp, c10::DeviceType::CPU);
  const int64_t n_out = z.size(0), n_in = x.size(0), k = x.size(1), nnz = col.size(0);
  const at::Tensor cr = crow.contiguous(), cl = col.contiguous(), vl = val.contiguous(), zc = z.contiguous();
  host::check_propagate_structure(cr.data_ptr<int64_t>(), n_out, cl.data_ptr<int32_t>(), nnz, n_in, kOp);
  at::Tensor out = at::empty({n_out, k}, x.options());
  if (n_out == 0 || k == 0) return out;
  const Args g{cr.data_ptr<int64_t>(), cl.data_ptr<int32_t>(), vl.data_ptr<float>(),
               x.data_ptr<float>(),    zc.data_ptr<float>(),   out.data_ptr<float>(),
               static_cast<float>(a),  static_cast<float>(b),  k};
  // ~64k multiply-adds per task at the mean row length.
  const int64_t per_row = (nnz / n_out + 1) * k;
  at::parallel_for(0, n_out, std::max<int64_t>(1, 65536 / per_row), [&](int64_t i0, int64_t i1) { rows(g, i0, i1); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dmdl, CPU, m) { m.impl("propagate", &propagate_cpu); }

}  // namespace propagation
}  // namespace dmdl
