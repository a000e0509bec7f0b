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


def test_schema_registered_once():
    op = torch.ops.dmdl.jaccard_distance.default
    assert str(op._schema) == "dmdl::jaccard_distance(Tensor features, int k1, int k2) -> Tensor"


def test_kernels_registered_match_build():
    from dmdl import _C

    assert _has_kernel("dmdl::jaccard_distance", "CPU")
    assert _has_kernel("dmdl::jaccard_distance", "CUDA") is _C.cuda_compiled()
    # register_fake provides the Meta / fake-tensor kernel.
    out = torch.ops.dmdl.jaccard_distance(torch.empty(7, 3, device="meta"), 3, 2)
    assert out.shape == (7, 7) and out.device.type == "meta"


def test_cuda_build_matches_torch():
    from dmdl import _C

    if not _C.cuda_compiled():
        pytest.skip("dmdl._C was built without CUDA kernels")
    assert torch.version.cuda is not None, "CUDA kernels compiled against a CPU-only torch"
    assert torch.version.cuda.split(".")[0] == _C.build_info()["cuda_version"].split(".")[0]
