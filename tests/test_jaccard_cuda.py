"""CUDA kernels of dmdl::knn and dmdl::jaccard_sparse against the CPU kernels (csrc/cuda/*.cu vs
csrc/cpu/*.cpp): the same neighbour lists for every precision, the same CSR structure and values
within 1e-5, on clustered and near-tie data; the errors. Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmdl.ops import _library
from dmdl.ops.jaccard import jaccard_distance, jaccard_distance_reference
from dmdl.ops.knn import knn
from dmdl.testing import clustered_features, identical_rows_features, near_tie_features

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not _library.is_available() or not _library.load().cuda_compiled(),
    reason="needs a CUDA device and dmdl._C built with its CUDA kernels",
)

DEV = "cuda"


CASES = [
    pytest.param(clustered_features, 200, 32, 0, id="clustered-200x32"),
    pytest.param(clustered_features, 1000, 128, 1, id="clustered-1000x128"),
    pytest.param(clustered_features, 3000, 64, 2, id="clustered-3000x64"),
    pytest.param(clustered_features, 700, 2048, 3, id="clustered-700x2048"),
    pytest.param(near_tie_features, 400, 32, 4, id="near-ties-400x32"),
    pytest.param(near_tie_features, 1500, 256, 5, id="near-ties-1500x256"),
]


def cpu_rank(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.ops.dmdl.knn(x, k, "fp32", 8)[0]


@pytest.mark.parametrize("make,n,d,seed", CASES)
@pytest.mark.parametrize("precision,margin", [("fp32", 8), ("tf32", 8), ("bf16", 32), ("bf16", 0), ("fp32", 0)])
def test_knn_matches_cpu(make, n, d, seed, precision, margin):
    x = make(n, d, seed)
    want = cpu_rank(x, 30)
    got, stats = torch.ops.dmdl.knn(x.to(DEV), 30, precision, margin)
    assert got.device.type == "cuda" and got.dtype == torch.int32 and got.shape == (n, 30)
    assert stats.device.type == "cuda" and stats.dtype == torch.int64 and stats.shape == (2,)
    assert torch.equal(got.cpu(), want)
    wide, canon = stats.tolist()
    assert 0 <= canon <= wide <= n  # canonical scans only after a wider pass


@pytest.mark.parametrize("k", [1, 5, 64])
def test_knn_small_k_and_python_api(k):
    x = clustered_features(500, 48, 7)
    want = knn(x, k)
    for precision in ("fp32", "tf32", "bf16", "auto"):
        got = knn(x.to(DEV), k, precision=precision)
        assert got.dtype == torch.int64 and torch.equal(got.cpu(), want), precision


def test_knn_k_equals_n_and_all_identical_rows():
    x = clustered_features(40, 16, 8)
    assert torch.equal(torch.ops.dmdl.knn(x.to(DEV), 40, "bf16", 4)[0].cpu(), cpu_rank(x, 40))
    same = F.normalize(torch.ones(64, 16), dim=1).contiguous()  # every distance ties: ties by index
    got = torch.ops.dmdl.knn(same.to(DEV), 10, "fp32", 8)[0].cpu()
    assert torch.equal(got, torch.arange(10, dtype=torch.int32).expand(64, 10))


def test_knn_ignores_and_keeps_global_matmul_settings():
    x = clustered_features(800, 256, 9)
    want = cpu_rank(x, 20)
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    prev_prec = torch.get_float32_matmul_precision()
    try:
        for setting in ("highest", "high", "medium"):
            torch.set_float32_matmul_precision(setting)
            before = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
            got = torch.ops.dmdl.knn(x.to(DEV), 20, "fp32", 8)[0]
            assert torch.equal(got.cpu(), want), setting
            assert (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()) == before
    finally:
        torch.set_float32_matmul_precision(prev_prec)
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32


def assert_same_csr(got, want, atol=1e-5):
    crow, col, val = (t.cpu() for t in got)
    wcrow, wcol, wval = want
    assert torch.equal(crow, wcrow)
    assert torch.equal(col, wcol)
    assert torch.allclose(val, wval, rtol=0, atol=atol), (val - wval).abs().max().item()


@pytest.mark.parametrize("make,n,d,seed", CASES)
@pytest.mark.parametrize("k1,k2", [(20, 6), (30, 6), (7, 1), (13, 13), (25, 3)])
def test_jaccard_sparse_matches_cpu(make, n, d, seed, k1, k2):
    x = make(n, d, seed)
    rank = cpu_rank(x, k1)
    want = torch.ops.dmdl.jaccard_sparse(x, rank, k2)
    got = torch.ops.dmdl.jaccard_sparse(x.to(DEV), rank.to(DEV), k2)
    assert all(t.device.type == "cuda" for t in got)
    assert got[0].dtype == torch.int64 and got[1].dtype == torch.int32 and got[2].dtype == torch.float32
    assert_same_csr(got, want)
    crow, col, val = (t.cpu() for t in got)
    for i in range(0, n, max(1, n // 50)):  # columns ascending, distances in [0, 1)
        c = col[crow[i] : crow[i + 1]]
        assert bool((c[1:] > c[:-1]).all())
    assert bool((val >= 0).all()) and bool((val < 1).all())


def test_jaccard_distance_dense_matches_reference():
    x = clustered_features(300, 32, 10)
    ref = jaccard_distance_reference(x, 20, 6)
    for precision in ("fp32", "tf32", "bf16", "auto"):
        got = jaccard_distance(x.to(DEV), 20, 6, output="dense", precision=precision)
        assert got.device.type == "cuda"
        assert torch.allclose(got.cpu(), ref, rtol=0, atol=1e-5), precision


def test_jaccard_sparse_output_and_unnormalised_features():
    x = clustered_features(600, 64, 11)
    sp = jaccard_distance(x.to(DEV), 30, 6)
    assert sp.layout == torch.sparse_csr and sp.device.type == "cuda"
    dense = torch.ones(600, 600)
    rows = torch.repeat_interleave(torch.arange(600), sp.crow_indices().cpu().diff())
    dense[rows, sp.col_indices().cpu().long()] = sp.values().cpu()
    assert torch.allclose(dense, jaccard_distance(x.to(DEV), 30, 6, output="dense").cpu(), rtol=0, atol=1e-6)
    assert torch.allclose(dense, jaccard_distance(x, 30, 6, output="dense"), rtol=0, atol=1e-5)
    y = (3.0 * x).contiguous()  # not renormalised, as the reference
    rank = cpu_rank(y, 20)
    assert_same_csr(torch.ops.dmdl.jaccard_sparse(y.to(DEV), rank.to(DEV), 6),
                    torch.ops.dmdl.jaccard_sparse(y, rank, 6))


def test_jaccard_sparse_when_rows_have_empty_sets():
    # 50 identical rows: ties by index, so most rows are not in their own list and have empty sets.
    x = identical_rows_features(80, 8, 12)
    rank = cpu_rank(x, 10)
    assert_same_csr(torch.ops.dmdl.jaccard_sparse(x.to(DEV), rank.to(DEV), 4),
                    torch.ops.dmdl.jaccard_sparse(x, rank, 4))


def test_errors():
    x = clustered_features(100, 16, 13)
    xc = x.to(DEV)
    rank = cpu_rank(x, 10)
    with pytest.raises(RuntimeError, match=r"dmdl::jaccard_sparse: `rank` must be on the device of `features`"):
        torch.ops.dmdl.jaccard_sparse(xc, rank, 6)
    with pytest.raises(RuntimeError, match=r"dmdl::jaccard_sparse: `rank` must be int32"):
        torch.ops.dmdl.jaccard_sparse(xc, rank.long().to(DEV), 6)
    with pytest.raises(RuntimeError, match=r"dmdl::jaccard_sparse: `k2` must be >= 1"):
        torch.ops.dmdl.jaccard_sparse(xc, rank.to(DEV), 0)
    bad = rank.clone()
    bad[5, 3] = 100
    with pytest.raises(RuntimeError, match=r"dmdl::jaccard_sparse: `rank` holds 1 indices outside"):
        torch.ops.dmdl.jaccard_sparse(xc, bad.to(DEV), 6)
    with pytest.raises(RuntimeError, match=r"dmdl::jaccard_sparse: `features` must be float32"):
        torch.ops.dmdl.jaccard_sparse(xc.double(), rank.to(DEV), 6)
    with pytest.raises(RuntimeError, match=r"dmdl::knn: `features` must be contiguous"):
        torch.ops.dmdl.knn(xc.t().contiguous().t(), 5, "fp32", 8)
    with pytest.raises(RuntimeError, match=r"dmdl::knn: `k` must be in \[1, N\]"):
        torch.ops.dmdl.knn(xc, 101, "fp32", 8)
    with pytest.raises(RuntimeError, match=r"dmdl::knn: `margin` must be >= 0"):
        torch.ops.dmdl.knn(xc, 5, "fp32", -1)
    with pytest.raises(RuntimeError, match=r"dmdl::knn: `precision` must be"):
        torch.ops.dmdl.knn(xc, 5, "fp16", 8)
    with pytest.raises(RuntimeError, match=r"dmdl::knn: `features` must have N >= 2 rows"):
        torch.ops.dmdl.knn(xc[:1].contiguous(), 1, "fp32", 8)
