"""Tests of MULT's label-propagation step (dmdl.ops.propagation, docs/mult.md#B3.4): the
compiled op ``dmdl::propagate`` and its wrapper against an independent scipy.sparse re-derivation
of ``a * A @ x + b * z`` in float64, on random sparse affinities (empty rows, K = 1, K off the
tile widths, nnz = 0, unsorted and repeated columns) and a row-normalised 1 - Jaccard affinity;
a hand-computed case; 20 propagation iterations; opcheck; the errors; row_normalize against NumPy;
the dense path against torch.addmm. CUDA kernel vs the CPU kernel when a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dmdl.ops import _library, propagate, propagate_reference, row_normalize
from dmdl.testing import clustered_features, csr_tensor, jaccard_affinity

pytestmark = pytest.mark.skipif(not _library.is_available(), reason="dmdl._C is not built")

OP = torch.ops.dmdl.propagate if _library.is_available() else None


# ----------------------------------------------------------------------------- inputs and refs
def random_csr(n_out: int, n_in: int, density: float, seed: int, signed: bool = False, shuffled: bool = False):
    """(crow int64, col int32, val float32) with about density * n_in entries per row; every
    third row empty. shuffled: columns in random order within a row, some repeated."""
    rng = np.random.default_rng(seed)
    crow, cols, vals = [0], [], []
    for i in range(n_out):
        m = 0 if (i % 3 == 2 or n_in == 0) else int(rng.binomial(n_in, density))
        c = np.sort(rng.choice(n_in, size=m, replace=False)) if m else np.zeros(0, dtype=np.int64)
        if shuffled and m:
            c = rng.permutation(np.concatenate([c, c[: m // 3]]))
        v = rng.standard_normal(len(c)) if signed else rng.random(len(c))
        cols.append(c)
        vals.append(v)
        crow.append(crow[-1] + len(c))
    col = np.concatenate(cols) if cols else np.zeros(0)
    val = np.concatenate(vals) if vals else np.zeros(0)
    return (torch.tensor(crow, dtype=torch.int64), torch.from_numpy(col.astype(np.int32)),
            torch.from_numpy(val.astype(np.float32)))


def scipy_propagate(crow, col, val, x, z, a, b):
    """a * A @ x + b * z in float64 with scipy.sparse (repeated columns are summed), and the
    scale of each entry's rounding error: |a| |A| @ |x| + |b| |z|."""
    n_out, n_in = z.shape[0], x.shape[0]
    # copies: scipy sorts and merges the indices of a non-canonical matrix in place
    m = sp.csr_matrix((val.numpy().astype(np.float64), col.numpy().copy(), crow.numpy().copy()),
                      shape=(n_out, n_in))
    x64, z64 = x.numpy().astype(np.float64), z.numpy().astype(np.float64)
    want = a * (m @ x64) + b * z64
    scale = abs(a) * (abs(m) @ np.abs(x64)) + abs(b) * np.abs(z64)
    return want, scale


def assert_close_rel(got: torch.Tensor, want: np.ndarray, scale: np.ndarray, rtol: float = 1e-5):
    got = got.double().numpy()
    assert got.shape == want.shape
    err = np.abs(got - want)
    bound = rtol * scale + 1e-30
    assert np.all(err <= bound), f"max err/scale {np.max(err / np.maximum(scale, 1e-30)):.2e}"


def labels(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n, k, generator=g), dim=1) if k else torch.zeros(n, 0)


# ------------------------------------------------------------------------------- op vs scipy
@pytest.mark.parametrize(
    "n_out,n_in,k,density",
    [(50, 70, 16, 0.1), (128, 64, 1, 0.3), (200, 300, 37, 0.05), (33, 1000, 400, 0.02), (40, 40, 64, 0.5),
     (17, 90, 65, 0.2), (60, 25, 100, 1.0), (100, 100, 31, 0.0), (0, 10, 5, 0.5), (10, 0, 5, 0.5),
     (20, 30, 0, 0.5)],
)
@pytest.mark.parametrize("a,b", [(0.5, 0.5), (0.8, 0.2), (-1.5, 2.25)])
def test_op_matches_scipy(n_out, n_in, k, density, a, b):
    seed = n_out * 7 + n_in + k
    crow, col, val = random_csr(n_out, n_in, density, seed)
    x, z = labels(n_in, k, seed + 1), labels(n_out, k, seed + 2)
    got = OP(crow, col, val, x, z, a, b)
    assert got.dtype == torch.float32 and got.shape == (n_out, k)
    want, scale = scipy_propagate(crow, col, val, x, z, a, b)
    assert_close_rel(got, want, scale)
    if n_out and k:
        empty = torch.nonzero(crow.diff() == 0).flatten()  # rows without entries: exactly b * z
        assert torch.equal(got[empty], (b * z[empty]).float())


@pytest.mark.parametrize("shuffled,signed", [(True, False), (False, True), (True, True)])
def test_unsorted_repeated_columns_and_signed_values(shuffled, signed):
    crow, col, val = random_csr(80, 120, 0.15, 5, signed=signed, shuffled=shuffled)
    x, z = torch.randn(120, 45), torch.randn(80, 45)
    want, scale = scipy_propagate(crow, col, val, x, z, 0.7, -0.3)
    assert_close_rel(OP(crow, col, val, x, z, 0.7, -0.3), want, scale)
    assert_close_rel(propagate(csr_tensor(crow, col, val, (80, 120)), x, z, 0.7, -0.3), want, scale)


def test_accumulates_in_float32_in_csr_order():
    # One output entry: 1 + 1e-8 + ... in float32 in CSR order stays 1 (each 1e-8 is below half
    # an ulp of 1); the same entries with the small ones first sum to 1 + 1e-6.
    n = 101
    small_last = torch.tensor([1.0] + [1e-8] * 100, dtype=torch.float32)
    small_first = small_last.flip(0)
    crow = torch.tensor([0, n], dtype=torch.int64)
    col = torch.arange(n, dtype=torch.int32)
    x, z = torch.ones(n, 1), torch.zeros(1, 1)
    assert OP(crow, col, small_last, x, z, 1.0, 0.0).item() == 1.0
    got = OP(crow, col, small_first, x, z, 1.0, 0.0).item()
    want = np.float32(0.0)
    for v in small_first.numpy():
        want = np.float32(want + v)
    assert got == float(want) and got > 1.0


def test_hand_computed_3x3():
    # A = [[0.5, 0, 0.5], [0, 0, 0], [0.25, 0.75, 0]], x = [[1, 2], [3, 4], [5, 6]],
    # z = [[1, 1], [2, 2], [0, 4]], a = 2, b = -1:
    #   row 0: 2 * (0.5 [1, 2] + 0.5 [5, 6]) - [1, 1] = 2 * [3, 4] - [1, 1] = [5, 7]
    #   row 1: 0 - [2, 2] = [-2, -2]
    #   row 2: 2 * (0.25 [1, 2] + 0.75 [3, 4]) - [0, 4] = 2 * [2.5, 3.5] - [0, 4] = [5, 3]
    crow = torch.tensor([0, 2, 2, 4], dtype=torch.int64)
    col = torch.tensor([0, 2, 0, 1], dtype=torch.int32)
    val = torch.tensor([0.5, 0.5, 0.25, 0.75])
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    z = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 4.0]])
    want = torch.tensor([[5.0, 7.0], [-2.0, -2.0], [5.0, 3.0]])
    assert torch.equal(OP(crow, col, val, x, z, 2.0, -1.0), want)
    a_csr = csr_tensor(crow, col, val, (3, 3))
    assert torch.equal(propagate(a_csr, x, z, 2, -1), want)
    assert torch.equal(propagate(a_csr.to_dense(), x, z, 2, -1), want)
    assert torch.equal(propagate_reference(a_csr, x, z, 2, -1), want)


# ------------------------------------------------------------------- real affinity, iterations
def test_jaccard_affinity_matches_scipy_and_dense_path():
    aff = jaccard_affinity(clustered_features(300), 20, 6)
    crow, col, val = aff.crow_indices().long(), aff.col_indices().int(), aff.values()
    assert 0 < val.numel() < 300 * 300 // 2  # sparse, not empty
    rows = aff.to_dense().sum(1)
    assert torch.allclose(rows, torch.ones(300), atol=1e-6)  # every row holds its diagonal: sums to 1
    x, z = labels(300, 23, 1), labels(300, 23, 2)
    want, scale = scipy_propagate(crow, col, val, x, z, 0.8, 0.2)
    got = propagate(aff, x, z, 0.8, 0.2)
    assert_close_rel(got, want, scale)
    dense = propagate(aff.to_dense(), x, z, 0.8, 0.2)
    assert (got - dense).abs().max().item() <= 1e-6
    assert (got - propagate_reference(aff, x, z, 0.8, 0.2)).abs().max().item() <= 1e-6


def test_twenty_iterations_match_float64_reference():
    # MULT's homogeneous step Y <- 0.5 A Y + 0.5 Y, 20 times (docs/mult.md#B3.4).
    aff = jaccard_affinity(clustered_features(240, seed=3), 20, 6)
    dense64 = aff.to_dense().double().numpy()
    y = labels(240, 40, 7)
    y64 = y.double().numpy()
    for _ in range(20):
        y = propagate(aff, y, y, 0.5, 0.5)
        y64 = 0.5 * dense64 @ y64 + 0.5 * y64
    assert np.abs(y.double().numpy() - y64).max() <= 1e-4
    ref = labels(240, 40, 7)
    for _ in range(20):
        ref = propagate_reference(aff, ref, ref, 0.5, 0.5)
    assert (y - ref).abs().max().item() <= 1e-4
    assert torch.allclose(y.sum(1), torch.ones(240), atol=1e-4)  # row-stochastic steps keep sums


# ------------------------------------------------------------------------------- op contract
def test_opcheck():
    crow, col, val = random_csr(12, 9, 0.4, 1)
    x, z = torch.randn(9, 5), torch.randn(12, 5)
    torch.library.opcheck(OP.default, (crow, col, val, x, z, 0.5, 0.25))
    e_crow, e_col, e_val = random_csr(4, 9, 0.0, 2)  # nnz = 0
    torch.library.opcheck(OP.default, (e_crow, e_col, e_val, x, torch.randn(4, 5), 1.0, 0.0))


def test_z_may_be_non_contiguous_and_inputs_are_not_modified():
    crow, col, val = random_csr(30, 20, 0.3, 4)
    x = torch.randn(20, 11)
    zt = torch.randn(11, 30).t()  # [30, 11], not contiguous
    before = [t.clone() for t in (crow, col, val, x, zt)]
    got = OP(crow, col, val, x, zt, 0.5, 0.5)
    assert torch.equal(got, OP(crow, col, val, x, zt.contiguous(), 0.5, 0.5))
    for t0, t1 in zip(before, (crow, col, val, x, zt)):
        assert torch.equal(t0, t1)


def test_wrapper_converts_index_dtypes():
    crow, col, val = random_csr(25, 35, 0.2, 6)
    x, z = torch.randn(35, 8), torch.randn(25, 8)
    want = OP(crow, col, val, x, z, 0.3, 0.7)
    for cr, cl in ((crow, col), (crow.int(), col), (crow, col.long()), (crow.int(), col.long())):
        assert torch.equal(propagate(csr_tensor(cr, cl, val, (25, 35)), x, z, 0.3, 0.7), want)
    # a non-contiguous x is made contiguous by the wrapper
    xt = x.t().contiguous().t()
    assert torch.equal(propagate(csr_tensor(crow, col, val, (25, 35)), xt, z, 0.3, 0.7), want)


def test_not_differentiable():
    crow, col, val = random_csr(6, 6, 0.5, 8)
    x = torch.randn(6, 3, requires_grad=True)
    z = torch.randn(6, 3, requires_grad=True)
    assert not propagate(csr_tensor(crow, col, val, (6, 6)), x, z, 0.5, 0.5).requires_grad
    assert not propagate(csr_tensor(crow, col, val, (6, 6)).to_dense(), x, z, 0.5, 0.5).requires_grad


def _good():
    crow, col, val = random_csr(6, 5, 0.5, 9)
    return dict(crow=crow, col=col, val=val, x=torch.randn(5, 3), z=torch.randn(6, 3), a=0.5, b=0.5)


def _call(**kw):
    args = _good()
    args.update(kw)
    return OP(args["crow"], args["col"], args["val"], args["x"], args["z"], args["a"], args["b"])


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda g: dict(crow=g["crow"].int()), r"`crow` must be int64"),
        (lambda g: dict(col=g["col"].long()), r"`col` must be int32"),
        (lambda g: dict(val=g["val"].double()), r"`val` must be float32"),
        (lambda g: dict(x=g["x"].double()), r"`x` must be float32"),
        (lambda g: dict(z=g["z"].double()), r"`z` must be float32"),
        (lambda g: dict(crow=g["crow"][None]), r"`crow` must be 1-D"),
        (lambda g: dict(col=g["col"][None]), r"`col` must be 1-D"),
        (lambda g: dict(val=g["val"][:-1]), r"`val` must be 1-D \[nnz\] with the nnz"),
        (lambda g: dict(x=g["x"][0]), r"`x` must be 2-D"),
        (lambda g: dict(z=g["z"][0]), r"`z` must be 2-D"),
        (lambda g: dict(x=torch.randn(3, 5).t()), r"`x` must be contiguous"),
        (lambda g: dict(z=torch.randn(6, 4)), r"`z` \[N_out, K\] and `x` \[N_in, K\] must have the same K"),
        (lambda g: dict(z=torch.randn(7, 3)), r"`crow` must have N_out \+ 1 = 8 entries"),
        (lambda g: dict(crow=g["crow"] + 1), r"`crow` must start at 0"),
        (lambda g: dict(crow=torch.tensor([0, 2, 1, 3, 4, 5, g["col"].numel()])), r"`crow` must be non-decreasing"),
        (lambda g: dict(col=torch.cat([g["col"], g["col"][:1]]), val=torch.cat([g["val"], g["val"][:1]])),
         r"`crow` must end at nnz"),
        (lambda g: dict(col=torch.where(torch.arange(g["col"].numel()) == 1, 5, g["col"]).int()),
         r"`col` must lie in \[0, N_in\) = \[0, 5\), got 5 at position 1"),
        (lambda g: dict(col=torch.where(torch.arange(g["col"].numel()) == 0, -1, g["col"]).int()),
         r"`col` must lie in \[0, N_in\).*got -1 at position 0"),
        (lambda g: dict(a=float("inf")), r"`a` must be finite"),
        (lambda g: dict(b=float("nan")), r"`b` must be finite"),
        (lambda g: dict(a=1e300), r"`a` must be finite \(as float32\)"),
    ],
)
def test_op_errors_name_the_argument(change, match):
    with pytest.raises(RuntimeError, match=r"dmdl::propagate: " + match):
        _call(**change(_good()))


def test_wrapper_errors_name_the_argument():
    g = _good()
    aff = csr_tensor(g["crow"], g["col"], g["val"], (6, 5))
    x, z = g["x"], g["z"]
    cases = [
        (TypeError, "affinity must be a torch.Tensor", lambda: propagate(aff.to_dense().numpy(), x, z, 1, 0)),
        (TypeError, "affinity must be a torch.sparse_csr or a dense", lambda: propagate(aff.to_sparse_coo(), x, z, 1, 0)),
        (TypeError, "affinity must be float32", lambda: propagate(aff.to_dense().double(), x, z, 1, 0)),
        (TypeError, "x must be float32", lambda: propagate(aff, x.double(), z, 1, 0)),
        (TypeError, "z must be float32", lambda: propagate(aff, x, z.half(), 1, 0)),
        (TypeError, "x must be a torch.Tensor", lambda: propagate(aff, x.numpy(), z, 1, 0)),
        (TypeError, "x must be a dense", lambda: propagate(aff, x.to_sparse(), z, 1, 0)),
        (ValueError, "affinity must be 2-D", lambda: propagate(aff.to_dense()[None], x, z, 1, 0)),
        (ValueError, r"x must be 2-D \[N_in, K\] with the N_in = 5", lambda: propagate(aff, x[:4], z, 1, 0)),
        (ValueError, r"z must have shape \[N_out, K\] = \[6, 3\]", lambda: propagate(aff, x, z[:, :2], 1, 0)),
        (ValueError, "z must be on the device of affinity", lambda: propagate(aff, x, z.to("meta"), 1, 0)),
        (TypeError, "a must be a real number", lambda: propagate(aff, x, z, "1", 0)),
        (TypeError, "b must be a real number", lambda: propagate(aff, x, z, 1, True)),
        (ValueError, "a must be finite", lambda: propagate(aff, x, z, float("nan"), 0)),
        (ValueError, "b must be finite", lambda: propagate_reference(aff, x, z, 1, float("-inf"))),
    ]
    for exc, match, fn in cases:
        with pytest.raises(exc, match=match):
            fn()


# ------------------------------------------------------------------------------ row_normalize
def test_row_normalize_matches_numpy():
    crow, col, val = random_csr(40, 60, 0.2, 11)
    val[:3] = 0.0  # explicit zeros are kept
    zero_row = int(torch.nonzero(crow.diff() > 0)[0])  # a row with stored entries that sum to 0
    val[crow[zero_row] : crow[zero_row + 1]] = 0.0
    aff = csr_tensor(crow, col, val, (40, 60))
    m = sp.csr_matrix((val.double().numpy(), col.numpy().copy(), crow.numpy().copy()), shape=(40, 60)).toarray()
    sums = m.sum(axis=1, keepdims=True)
    want = np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)

    got = row_normalize(aff)
    assert got.layout == torch.sparse_csr and got.dtype == torch.float32 and got.shape == (40, 60)
    assert got.crow_indices().data_ptr() == aff.crow_indices().data_ptr()  # shared, not copied
    assert got.col_indices().data_ptr() == aff.col_indices().data_ptr()
    np.testing.assert_allclose(got.to_dense().double().numpy(), want, rtol=1e-6, atol=0)
    assert not got.to_dense()[zero_row].any() and not got.to_dense()[2].any()  # zero rows stay 0

    dense = row_normalize(aff.to_dense())
    assert dense.layout == torch.strided and dense.dtype == torch.float32
    np.testing.assert_allclose(dense.double().numpy(), want, rtol=1e-6, atol=0)
    np.testing.assert_allclose(row_normalize(aff.to_dense().double()).numpy(), want, rtol=1e-15, atol=0)


def test_row_normalize_errors():
    aff = torch.tensor([[1.0, -0.5], [0.0, 2.0]])
    with pytest.raises(ValueError, match="affinity must be finite and non-negative"):
        row_normalize(aff)
    with pytest.raises(ValueError, match="affinity must be finite and non-negative"):
        row_normalize(aff.to_sparse_csr())
    with pytest.raises(TypeError, match="affinity must be a floating tensor"):
        row_normalize(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="affinity must be a torch.sparse_csr or a dense"):
        row_normalize(torch.ones(2, 2).to_sparse_coo())
    with pytest.raises(ValueError, match="affinity must be 2-D"):
        row_normalize(torch.ones(2))


# ------------------------------------------------------------------------------ dense path
def test_dense_path_is_addmm():
    g = torch.Generator().manual_seed(12)
    dense = row_normalize(torch.rand(70, 50, generator=g) * (torch.rand(70, 50, generator=g) < 0.3))
    x, z = labels(50, 19, 13), labels(70, 19, 14)
    got = propagate(dense, x, z, 0.8, 0.2)
    assert torch.equal(got, torch.addmm(z, dense, x, beta=0.2, alpha=0.8))
    sparse = propagate(dense.to_sparse_csr(), x, z, 0.8, 0.2)
    assert (got - sparse).abs().max().item() <= 1e-6


# ------------------------------------------------------------------------------------- CUDA
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or not _library.is_available() or not _library.load().cuda_compiled(),
    reason="needs a CUDA device and dmdl._C built with its CUDA kernels",
)


@needs_cuda
@pytest.mark.parametrize("n_out,n_in,k,density", [(200, 300, 37, 0.05), (33, 1000, 400, 0.02), (128, 64, 1, 0.3),
                                                  (300, 300, 257, 0.1), (100, 100, 31, 0.0), (0, 5, 3, 0.5),
                                                  (20, 30, 0, 0.5)])
def test_cuda_matches_cpu_and_reference(n_out, n_in, k, density):
    crow, col, val = random_csr(n_out, n_in, density, n_out + k, shuffled=True)
    x, z = labels(n_in, k, 1), labels(n_out, k, 2)
    want_cpu = OP(crow, col, val, x, z, 0.8, 0.2)
    got = OP(crow.cuda(), col.cuda(), val.cuda(), x.cuda(), z.cuda(), 0.8, 0.2)
    assert got.is_cuda and got.shape == (n_out, k)
    assert torch.equal(got.cpu(), want_cpu)  # same per-row code, same rounding: the same bits
    want, scale = scipy_propagate(crow, col, val, x, z, 0.8, 0.2)
    assert_close_rel(got.cpu(), want, scale)


@needs_cuda
def test_cuda_real_affinity_and_invalid_rows():
    aff = jaccard_affinity(clustered_features(300), 20, 6)
    x, z = labels(300, 50, 1), labels(300, 50, 2)
    got = propagate(aff.cuda(), x.cuda(), z.cuda(), 0.5, 0.5)
    assert torch.equal(got.cpu(), propagate(aff, x, z, 0.5, 0.5))
    # The CUDA kernel does not read crow/col on the host: a bad column gives a NaN row, no crash.
    crow = torch.tensor([0, 2, 4, 4, 5], dtype=torch.int64)
    col = torch.tensor([0, 1, 2, 99, 4], dtype=torch.int32)  # 99: a column of row 1 outside [0, 5)
    val, x, z = torch.rand(5).cuda(), torch.randn(5, 4).cuda(), torch.randn(4, 4).cuda()
    out = OP(crow.cuda(), col.cuda(), val, x, z, 1.0, 1.0).cpu()
    assert torch.isnan(out[1]).all() and not torch.isnan(out[torch.arange(4) != 1]).any()
    with pytest.raises(RuntimeError, match="`col` must be on the device of `x`"):
        OP(crow.cuda(), col, val, x, z, 1.0, 1.0)
