"""Tests of the compiled extension dmdl._C: build information and operator registration."""

from __future__ import annotations

import pytest
import torch

from dmdl.ops import _library

pytestmark = pytest.mark.skipif(not _library.is_available(), reason="dmdl._C is not built")


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, key)


def test_build_info_is_sane():
    from dmdl import _C

    info = _C.build_info()
    assert isinstance(info, dict)
    assert {"torch_version", "cuda_compiled", "cuda_version", "openmp"} <= set(info)
    # Built against the torch that is installed (a mismatch would not even load, usually).
    assert torch.__version__.split("+")[0] == info["torch_version"]
    assert info["cuda_compiled"] is _C.cuda_compiled()
    assert isinstance(info["openmp"], bool)
    if info["cuda_compiled"]:
        major, minor = (int(p) for p in info["cuda_version"].split("."))
        assert major >= 11 and minor >= 0
    else:
        assert info["cuda_version"] is None


SCHEMAS = {
    "knn": "dmdl::knn(Tensor features, int k, str precision, int margin) -> (Tensor, Tensor)",
    "knn_refine": "dmdl::knn_refine(Tensor features, Tensor candidates, Tensor approx, int k, str precision) "
                  "-> (Tensor, Tensor)",
    "jaccard_sparse": "dmdl::jaccard_sparse(Tensor features, Tensor rank, int k2) -> (Tensor, Tensor, Tensor)",
    "memory_loss_forward": "dmdl::memory_loss_forward(Tensor features, Tensor memory, Tensor targets, "
                           "float temperature) -> (Tensor loss, Tensor grad_features)",
    "momentum_update_": "dmdl::momentum_update_(Tensor(a!) memory, Tensor features, Tensor labels, "
                        "Tensor momentum, Tensor? row_ids, bool hard) -> ()",
    "propagate": "dmdl::propagate(Tensor crow, Tensor col, Tensor val, Tensor x, Tensor z, float a, float b) -> Tensor",
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_registered_once(name):
    assert str(getattr(torch.ops.dmdl, name).default._schema) == SCHEMAS[name]


def test_kernels_registered_match_build():
    from dmdl import _C

    for name in SCHEMAS:
        assert _has_kernel(f"dmdl::{name}", "CPU"), name
    for name in ("knn", "jaccard_sparse", "propagate"):  # C++ CUDA kernels (csrc/cuda)
        assert _has_kernel(f"dmdl::{name}", "CUDA") is _C.cuda_compiled(), name
    # register_fake provides the Meta / fake-tensor kernel.
    rank, stats = torch.ops.dmdl.knn(torch.empty(7, 3, device="meta"), 3, "fp32", 2)
    assert rank.shape == (7, 3) and rank.dtype == torch.int32 and rank.device.type == "meta"


def test_cuda_build_matches_torch():
    from dmdl import _C

    if not _C.cuda_compiled():
        pytest.skip("dmdl._C was built without CUDA kernels")
    assert torch.version.cuda is not None, "CUDA kernels compiled against a CPU-only torch"
    assert torch.version.cuda.split(".")[0] == _C.build_info()["cuda_version"].split(".")[0]
