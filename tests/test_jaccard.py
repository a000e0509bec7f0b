"""Tests of the k-reciprocal Jaccard distance (dmdl.ops.jaccard, algorithm.md §A9):
compiled kernel vs pure-PyTorch reference vs an independent NumPy implementation of
the reference repositories' dense formulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmdl.ops import _library
from dmdl.ops.jaccard import jaccard_distance, jaccard_distance_reference

pytestmark = pytest.mark.skipif(not _library.is_available(), reason="dmdl._C is not built")


def clustered_features(n: int, d: int = 32, clusters: int | None = None, noise: float = 0.6, seed: int = 0) -> torch.Tensor:
    """L2-normalised rows around a few random centres (the structure ReID features have)."""
    g = torch.Generator().manual_seed(seed)
    clusters = clusters or max(2, n // 12)
    centres = torch.randn(clusters, d, generator=g)
    labels = torch.randint(0, clusters, (n,), generator=g)
    x = centres[labels] + noise * torch.randn(n, d, generator=g)
    return F.normalize(x, dim=1)


def numpy_jaccard(feat: np.ndarray, k1: int, k2: int, k_half: int | None = None) -> np.ndarray:
    """Independent NumPy version of faiss_rerank.compute_jaccard_distance with dense
    N x N matrices and loops over rows (exact L2 kNN, stable ties)."""
    f = np.ascontiguousarray(feat, dtype=np.float32)
    n = f.shape[0]
    norms = np.einsum("ij,ij->i", f, f)
    l2 = norms[:, None] + norms[None, :] - 2.0 * (f @ f.T)
    nbrs = np.argsort(l2, axis=1, kind="stable")[:, :k1]

    def recip(i: int, k: int) -> np.ndarray:
        forward = nbrs[i, : k + 1]  # the reference slices k + 1 columns of a k1-column table
        keep = [bool(np.any(nbrs[j, : k + 1] == i)) for j in forward]
        return forward[np.array(keep, dtype=bool)]

    half = int(np.around(k1 / 2.0)) if k_half is None else k_half
    full_sets = [recip(i, k1) for i in range(n)]
    half_sets = [recip(i, half) for i in range(n)]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        members = full_sets[i]
        pieces = [members]
        for j in members:
            hj = half_sets[j]
            if np.intersect1d(hj, members).size > 2 / 3 * hj.size:
                pieces.append(hj)
        cols = np.unique(np.concatenate(pieces))
        logits = -(2.0 - 2.0 * (f[i] @ f[cols].T)).astype(np.float32)
        e = np.exp(logits - logits.max())
        v[i, cols] = e / e.sum()

    if k2 != 1:
        v = np.stack([v[nbrs[i, :k2]].mean(axis=0) for i in range(n)]).astype(np.float32)

    owners = [np.flatnonzero(v[:, c]) for c in range(n)]
    out = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        overlap = np.zeros(n, dtype=np.float32)
        for c in np.flatnonzero(v[i]):
            rows = owners[c]
            overlap[rows] += np.minimum(v[i, c], v[rows, c])
        out[i] = 1.0 - overlap / (2.0 - overlap)
    return np.maximum(out, 0.0)


@pytest.fixture(autouse=True)
def _one_thread():
    # The reference issues thousands of tiny torch ops; on a busy machine each parallel
    # region of a multi-threaded pool can stall (30x slower with 2 threads on 2 shared cores).
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


CASES = [  # (n, k1, k2, seed)
    (50, 5, 2, 0),
    (120, 25, 6, 1),  # round(25/2) = 12 (half to even)
    (200, 27, 6, 2),  # round(27/2) = 14
    (300, 20, 6, 3),
    (600, 30, 6, 4),
    (150, 30, 1, 5),  # no query expansion
    (80, 80, 6, 6),  # k1 = N
    (60, 4, 10, 7),  # k2 > k1: the reference averages k1 rows
    (40, 1, 1, 8),
]


@pytest.mark.parametrize("n,k1,k2,seed", CASES)
def test_cpu_kernel_matches_reference(n, k1, k2, seed):
    x = clustered_features(n, seed=seed)
    torch.testing.assert_close(jaccard_distance(x, k1, k2), jaccard_distance_reference(x, k1, k2), atol=1e-5, rtol=0)


def test_openmp_threads_agree():
    x = clustered_features(400, seed=10)
    one = jaccard_distance(x, 30, 6)
    torch.set_num_threads(2)
    assert torch.equal(jaccard_distance(x, 30, 6), one)  # rows are independent: bitwise equal


def test_unnormalised_features_match_reference():
    # The reference does not renormalise (e.g. flip-averaged features); neither do we.
    x = clustered_features(200, seed=11) * (0.8 + 0.4 * torch.rand(200, 1, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(jaccard_distance(x, 20, 6), jaccard_distance_reference(x, 20, 6), atol=1e-5, rtol=0)


def test_ties_broken_by_index():
    # Exact duplicates make many tied distances, also across the k-th place.
    base = clustered_features(30, seed=12)
    x = base[torch.arange(90) % 30].contiguous()
    torch.testing.assert_close(jaccard_distance(x, 10, 4), jaccard_distance_reference(x, 10, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n,k1,k2,seed", [(40, 6, 1, 0), (90, 25, 6, 1), (150, 20, 6, 2), (120, 9, 3, 3)])
def test_reference_matches_numpy(n, k1, k2, seed):
    x = clustered_features(n, seed=seed)
    expected = torch.from_numpy(numpy_jaccard(x.numpy(), k1, k2))
    torch.testing.assert_close(jaccard_distance_reference(x, k1, k2), expected, atol=1e-6, rtol=0)


def test_half_to_even_rounding_matters():
    x = clustered_features(120, seed=1)
    ours = jaccard_distance_reference(x, 25, 6)
    half_up = torch.from_numpy(numpy_jaccard(x.numpy(), 25, 6, k_half=13))
    half_even = torch.from_numpy(numpy_jaccard(x.numpy(), 25, 6, k_half=12))
    torch.testing.assert_close(ours, half_even, atol=1e-6, rtol=0)
    assert (ours - half_up).abs().max() > 1e-3


def test_tiny_hand_checkable_case():
    # Two pairs: a0 . a1 = 0.75 (squared distance 0.5), b0 . b1 = 0.9; pairs far apart.
    sa, sb = math.sqrt(1 - 0.75**2), math.sqrt(1 - 0.9**2)
    x = torch.tensor([[1.0, 0.0, 0.0], [0.75, sa, 0.0], [0.0, 0.0, 1.0], [0.0, sb, 0.9]])
    # k1 = 2, k2 = 1: V[a0] = softmax(0, -0.5) on {a0, a1}; s(a0, a1) = 2 (1 - p).
    p = 1.0 / (1.0 + math.exp(-0.5))
    q = 1.0 / (1.0 + math.exp(-0.2))
    sa_, sb_ = 2 * (1 - p), 2 * (1 - q)
    da, db = 1 - sa_ / (2 - sa_), 1 - sb_ / (2 - sb_)
    expected = torch.tensor([[0, da, 1, 1], [da, 0, 1, 1], [1, 1, 0, db], [1, 1, db, 0]], dtype=torch.float32)
    torch.testing.assert_close(jaccard_distance(x, 2, 1), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(jaccard_distance_reference(x, 2, 1), expected, atol=1e-6, rtol=0)
    # k2 = 2: each V row becomes the mean of the pair's rows, (1/2, 1/2), so pairs coincide.
    expected2 = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(jaccard_distance(x, 2, 2), expected2, atol=1e-6, rtol=0)


def test_properties():
    x = clustered_features(300, clusters=30, noise=0.3, seed=9)
    d = jaccard_distance(x, 30, 6)
    assert d.shape == (300, 300) and d.dtype == torch.float32
    assert float(d.min()) >= 0.0 and float(d.max()) <= 1.0
    torch.testing.assert_close(d.diagonal(), torch.zeros(300), atol=1e-6, rtol=0)
    # min() is symmetric and both rows see the shared columns in the same order: exactly symmetric.
    assert torch.equal(d, d.t())
    ref = jaccard_distance_reference(x, 30, 6)
    torch.testing.assert_close(ref, ref.t(), atol=1e-6, rtol=0)
    assert float((d == 1).float().mean()) > 0.2  # many pairs share no column of V (97% at real N)


def test_opcheck():
    x = clustered_features(24, d=8, seed=3)
    torch.library.opcheck(torch.ops.dmdl.jaccard_distance.default, (x, 5, 3))


def test_wrapper_errors():
    x = clustered_features(20, seed=0)
    with pytest.raises(ValueError, match="float32"):
        jaccard_distance(x.double(), 5, 2)
    with pytest.raises(ValueError, match=r"2-D.*\[N, D\]"):
        jaccard_distance(x[0], 5, 2)
    with pytest.raises(ValueError, match="N >= 2"):
        jaccard_distance(x[:1], 1, 1)
    with pytest.raises(ValueError, match="k1"):
        jaccard_distance(x, 0, 2)
    with pytest.raises(ValueError, match="k1"):
        jaccard_distance(x, 21, 2)
    with pytest.raises(ValueError, match="k2"):
        jaccard_distance(x, 5, 0)
    with pytest.raises(ValueError, match="k1 must be an int"):
        jaccard_distance(x, 2.5, 2)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        jaccard_distance(bad, 5, 2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        jaccard_distance(x.numpy(), 5, 2)


def test_op_errors_from_cpp():
    op = torch.ops.dmdl.jaccard_distance
    x = clustered_features(20, seed=0)
    with pytest.raises(RuntimeError, match="float32"):
        op(x.double(), 5, 2)
    with pytest.raises(RuntimeError, match="2-D"):
        op(x[0].contiguous(), 5, 2)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(torch.cat([x, x], 1)[:, ::2], 5, 2)
    with pytest.raises(RuntimeError, match="k1 must be in"):
        op(x, 21, 2)
    with pytest.raises(RuntimeError, match="k1 must be in"):
        op(x, 0, 2)
    with pytest.raises(RuntimeError, match="k2 must be"):
        op(x, 5, 0)
    with pytest.raises(RuntimeError, match="N >= 2"):
        op(x[:1], 1, 1)


def test_missing_extension_raises_import_error(monkeypatch):
    monkeypatch.setattr(_library, "_module", None)
    monkeypatch.setattr(_library, "_error", ImportError("simulated"))
    with pytest.raises(ImportError, match="pip install --no-build-isolation"):
        jaccard_distance(clustered_features(10), 3, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("n,k1,k2,seed", [(300, 20, 6, 0), (600, 30, 6, 1), (200, 25, 1, 2), (90, 10, 4, 3)])
def test_cuda_kernel_matches_cpu_and_reference(n, k1, k2, seed):
    from dmdl import _C

    if not _C.cuda_compiled():
        pytest.skip("dmdl._C was built without CUDA kernels")
    x = clustered_features(n, seed=seed)
    got = jaccard_distance(x.cuda(), k1, k2)
    assert got.is_cuda
    torch.testing.assert_close(got.cpu(), jaccard_distance(x, k1, k2), atol=1e-5, rtol=0)
    torch.testing.assert_close(got.cpu(), jaccard_distance_reference(x, k1, k2), atol=1e-5, rtol=0)
    torch.library.opcheck(torch.ops.dmdl.jaccard_distance.default, (x[:24].cuda(), 5, 3))
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.dmdl.jaccard_distance(x.cuda().double(), 5, 2)
