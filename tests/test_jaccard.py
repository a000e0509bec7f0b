"""Tests of the k-reciprocal Jaccard distance (dmdl.ops.jaccard, docs/dmdl.md#A9): compiled
kernels vs the pure-PyTorch reference vs an independent NumPy implementation (the reference
repositories' dense formulation); the sparse output against the dense one; DBSCAN on the sparse
graph against scikit-learn on the dense matrix. The exact kNN underneath: tests/test_knn.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmdl.ops import _library
from dmdl.ops.jaccard import jaccard_distance, jaccard_distance_reference, to_scipy_csr
from dmdl.pseudo_labels import dbscan_labels
from dmdl.testing import clustered_features

pytestmark = [pytest.mark.skipif(not _library.is_available(), reason="dmdl._C is not built"),
              pytest.mark.usefixtures("one_thread")]  # conftest.one_thread


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




def dense(x: torch.Tensor, k1: int, k2: int, **kw) -> torch.Tensor:
    return jaccard_distance(x, k1, k2, output="dense", **kw)


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
def test_dense_output_matches_reference(n, k1, k2, seed):
    x = clustered_features(n, seed=seed)
    torch.testing.assert_close(dense(x, k1, k2), jaccard_distance_reference(x, k1, k2), atol=1e-5, rtol=0)


def test_dense_output_matches_reference_large():
    x = clustered_features(2500, d=64, clusters=120, noise=0.5, seed=21)
    torch.testing.assert_close(dense(x, 30, 6), jaccard_distance_reference(x, 30, 6), atol=1e-5, rtol=0)


def assert_sparse_equals_dense(s: torch.Tensor, d: torch.Tensor) -> None:
    n = d.shape[0]
    assert s.layout == torch.sparse_csr and s.shape == (n, n) and s.dtype == torch.float32
    crow, col, val = s.crow_indices().long(), s.col_indices().long(), s.values()
    rows = torch.repeat_interleave(torch.arange(n), crow.diff())
    # stored: exactly the pairs below 1, columns strictly ascending within each row
    assert int((d < 1).sum()) == val.numel()
    assert bool((val < 1).all()) and bool((val >= 0).all())
    same_row = rows[1:] == rows[:-1]
    assert bool((col[1:][same_row] > col[:-1][same_row]).all())
    assert torch.equal(val, d[rows, col])  # bitwise: the dense output is built from the same numbers
    full = torch.ones(n, n)
    full[rows, col] = val
    assert torch.equal(full, d)


@pytest.mark.parametrize("n,k1,k2,seed", CASES[:6])
def test_sparse_output_equals_dense_and_is_one_elsewhere(n, k1, k2, seed):
    x = clustered_features(n, seed=seed)
    ref = jaccard_distance_reference(x, k1, k2)
    s = jaccard_distance(x, k1, k2)
    assert_sparse_equals_dense(s, dense(x, k1, k2))
    rows = torch.repeat_interleave(torch.arange(n), s.crow_indices().long().diff())
    torch.testing.assert_close(s.values(), ref[rows, s.col_indices().long()], atol=1e-5, rtol=0)
    assert bool((ref[dense(x, k1, k2) == 1] == 1).all())  # absent pairs are exactly 1 in the reference too


def test_zero_distances_are_stored():
    base = clustered_features(30, seed=12)
    x = base[torch.arange(90) % 30].contiguous()  # every row three times: many d = 0 pairs
    s = jaccard_distance(x, 10, 4)
    d = dense(x, 10, 4)
    assert_sparse_equals_dense(s, d)
    assert int((s.values() == 0).sum()) >= 90  # the diagonal and the duplicate pairs, stored as explicit zeros


def test_threads_agree():
    x = clustered_features(400, seed=10)
    one = dense(x, 30, 6)
    torch.set_num_threads(2)
    assert torch.equal(dense(x, 30, 6), one)  # rows are independent: bitwise equal


def test_unnormalised_features_match_reference():
    # The reference does not renormalise (e.g. flip-averaged features); neither do we.
    x = clustered_features(200, seed=11) * (0.8 + 0.4 * torch.rand(200, 1, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(dense(x, 20, 6), jaccard_distance_reference(x, 20, 6), atol=1e-5, rtol=0)


def test_ties_broken_by_index():
    # Exact duplicates make many tied distances, also across the k-th place.
    base = clustered_features(30, seed=12)
    x = base[torch.arange(90) % 30].contiguous()
    torch.testing.assert_close(dense(x, 10, 4), jaccard_distance_reference(x, 10, 4), atol=1e-5, rtol=0)


# ---- DBSCAN on the sparse graph ---------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dbscan_on_sparse_graph_matches_sklearn_on_dense(seed):
    from sklearn.cluster import DBSCAN

    x = clustered_features(600, d=32, clusters=40, noise=0.45, seed=seed)
    x = torch.cat([x, x[:40]])  # duplicates: zero distances off the diagonal
    s = jaccard_distance(x, 20, 6)
    d = dense(x, 20, 6).numpy()
    for eps in (0.3, 0.5, 0.6, 0.75):
        for min_samples in (2, 4):
            expected = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(d)
            assert expected.max() >= 1
            np.testing.assert_array_equal(dbscan_labels(s, eps, min_samples), expected)
            np.testing.assert_array_equal(dbscan_labels(to_scipy_csr(s), eps, min_samples), expected)


def test_dbscan_refuses_eps_of_one_on_sparse_graph():
    s = jaccard_distance(clustered_features(40, seed=0), 5, 2)
    with pytest.raises(ValueError, match="eps"):
        dbscan_labels(s, 1.0, 4)


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
    torch.testing.assert_close(dense(x, 2, 1), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(jaccard_distance_reference(x, 2, 1), expected, atol=1e-6, rtol=0)
    # k2 = 2: each V row becomes the mean of the pair's rows, (1/2, 1/2), so pairs coincide.
    expected2 = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(dense(x, 2, 2), expected2, atol=1e-6, rtol=0)


def test_properties():
    x = clustered_features(300, clusters=30, noise=0.3, seed=9)
    d = dense(x, 30, 6)
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
    rank, _ = torch.ops.dmdl.knn(x, 8, "fp32", 8)
    torch.library.opcheck(torch.ops.dmdl.jaccard_sparse.default, (x, rank, 3),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


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
    x = clustered_features(20, seed=0)
    rank, _ = torch.ops.dmdl.knn(x, 5, "fp32", 4)
    jac = torch.ops.dmdl.jaccard_sparse
    with pytest.raises(RuntimeError, match="dmdl::jaccard_sparse: `features` must be float32"):
        jac(x.double(), rank, 2)
    with pytest.raises(RuntimeError, match="dmdl::jaccard_sparse: `rank` must be int32"):
        jac(x, rank.long(), 2)
    with pytest.raises(RuntimeError, match="`rank` must be \\[N, k1\\]"):
        jac(x, rank[:10].contiguous(), 2)
    with pytest.raises(RuntimeError, match="`rank` holds 1 indices outside"):
        r = rank.clone()
        r[3, 1] = 20
        jac(x, r, 2)
    with pytest.raises(RuntimeError, match="`k2` must be"):
        jac(x, rank, 0)


def test_wrapper_option_errors():
    x = clustered_features(20, seed=0)
    with pytest.raises(ValueError, match="output"):
        jaccard_distance(x, 5, 2, output="coo")
    with pytest.raises(ValueError, match="precision"):
        jaccard_distance(x, 5, 2, precision="fp16")
    with pytest.raises(ValueError, match="knn_backend"):
        jaccard_distance(x, 5, 2, knn_backend="annoy")
    with pytest.raises(ValueError, match="margin"):
        jaccard_distance(x, 5, 2, margin=-2)


def test_missing_extension_raises_import_error(monkeypatch):
    monkeypatch.setattr(_library, "_module", None)
    monkeypatch.setattr(_library, "_error", ImportError("simulated"))
    with pytest.raises(ImportError, match="pip install --no-build-isolation"):
        jaccard_distance(clustered_features(10), 3, 2)


def test_dbscan_graph_pruning_keeps_exactly_the_pairs_within_eps():
    import scipy.sparse as sp

    from dmdl.pseudo_labels.clustering import _within

    rng = np.random.default_rng(0)
    d = rng.random((50, 50))
    d[rng.random((50, 50)) < 0.5] = 0
    d[[0, 3], :] = 0  # empty rows, also the first
    d[45:, :] = 0  # and trailing ones
    g = sp.csr_matrix(d)
    g.data[::7] = 0.0  # stored zeros: distances of 0, which must stay
    rows = np.repeat(np.arange(50), np.diff(g.indptr))
    expected = np.full((50, 50), np.nan)
    inside = g.data <= 0.4
    expected[rows[inside], g.indices[inside]] = g.data[inside]
    for block in (7, 4096):
        w = _within(g, 0.4, block=block)
        got = np.full((50, 50), np.nan)
        w_rows = np.repeat(np.arange(50), np.diff(w.indptr))
        got[w_rows, w.indices] = w.data
        np.testing.assert_array_equal(got, expected)
        assert int((w.data == 0).sum()) == int((g.data == 0).sum())
