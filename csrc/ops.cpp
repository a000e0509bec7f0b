// dmdl operator schemas (one place) and, for the Python build, the pybind11 module
// dmdl._C that exposes build information. The kernels are registered per backend in
// csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA).
#include <ATen/ATen.h>
#include <torch/headeronly/version.h>
#include <torch/library.h>

#include <string>

TORCH_LIBRARY(dmdl, m) {
  // Exact k nearest neighbours by squared L2 (faiss IndexFlatL2 ranking, self included, ties by
  // index): features [N, D] float32 -> (rank int32 [N, k], stats int64 [2]). precision of the
  // candidate GEMM: "fp32" | "tf32" (CUDA) | "bf16"; margin: extra candidates per row.
  m.def("knn(Tensor features, int k, str precision, int margin) -> (Tensor, Tensor)");
  // Exact k nearest from a backend's candidates (int32 [N, kc]) and their approximate values
  // |x_j|^2 - 2 x_i.x_j (float32 [N, kc], ascending); precision "fp32" | "tf32" | "bf16" | "faiss".
  m.def("knn_refine(Tensor features, Tensor candidates, Tensor approx, int k, str precision) -> (Tensor, Tensor)");
  // k-reciprocal Jaccard distance (Zhong et al. 2017; docs/dmdl.md#A9) from neighbour lists
  // rank int32 [N, k1]: CSR (crow int64 [N+1], col int32 [nnz], val float32 [nnz]) of d < 1.
  m.def("jaccard_sparse(Tensor features, Tensor rank, int k2) -> (Tensor, Tensor, Tensor)");
  // Cluster-memory step (Cluster-Contrast, ACCV 2022; docs/dmdl.md#A4.1, #A5.5; dmdl/ops/memory.py).
  // memory_loss_forward: mean CE of normalize(features) @ memory^T / temperature against int64
  // labels [B] or soft targets [B, K], and its gradient with respect to features [B, D].
  m.def("memory_loss_forward(Tensor features, Tensor memory, Tensor targets, float temperature) -> (Tensor loss, Tensor grad_features)");
  // momentum_update_: in place, per sample in batch order, m_r <- normalize(mu m_r + (1 - mu) normalize(x));
  // momentum: scalar or [B]; row_ids [K]: the label each row holds (None: row = label); hard: one
  // update per row with its least similar sample.
  m.def("momentum_update_(Tensor(a!) memory, Tensor features, Tensor labels, Tensor momentum, Tensor? row_ids, bool hard) -> ()");
  // Label-propagation step of MULT (arXiv 2402.00672; docs/mult.md#B3.4; dmdl/ops/propagation.py):
  // out = a * A @ x + b * z, A the CSR (crow int64 [N_out+1], col int32 [nnz], val float32 [nnz]),
  // x float32 [N_in, K] contiguous, z float32 [N_out, K] -> out float32 [N_out, K], each entry
  // accumulated in float32 in CSR order.
  m.def("propagate(Tensor crow, Tensor col, Tensor val, Tensor x, Tensor z, float a, float b) -> Tensor");
}

namespace dmdl {

#ifdef DMDL_WITH_CUDA
namespace jaccard {
int cuda_runtime_version_compiled();  // csrc/cuda/jaccard_cuda.cu
}
#endif

bool cuda_compiled() {
#ifdef DMDL_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace dmdl

#ifdef DMDL_PYTHON_MODULE
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "dmdl compiled extension: registers the torch.ops.dmdl operators and reports how it was built.";
  m.def("cuda_compiled", &dmdl::cuda_compiled, "True when the CUDA kernels were compiled into this extension.");
  m.def(
      "build_info",
      []() {
        py::dict info;
        info["torch_version"] = std::string(TORCH_VERSION);
        info["cuda_compiled"] = dmdl::cuda_compiled();
#ifdef DMDL_WITH_CUDA
        const int v = dmdl::jaccard::cuda_runtime_version_compiled();
        info["cuda_version"] = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
#else
        info["cuda_version"] = py::none();
#endif
#ifdef _OPENMP
        info["openmp"] = true;
        info["openmp_version"] = static_cast<int>(_OPENMP);
#else
        info["openmp"] = false;
        info["openmp_version"] = py::none();
#endif
#if defined(__clang__)
        info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
        info["compiler"] = std::string("gcc ") + __VERSION__;
#else
        info["compiler"] = std::string("unknown");
#endif
        info["cxx_abi"] = static_cast<bool>(_GLIBCXX_USE_CXX11_ABI);
        return info;
      },
      "Dict: torch_version (built against), cuda_compiled, cuda_version (compiled with, or None), "
      "openmp, openmp_version, compiler, cxx_abi.");
}
#endif
