"""Tests of the exact kNN (dmdl.ops.knn; torch.ops.dmdl.knn / knn_refine): every precision
("auto" included) and backend against an integer-exact ranking (dyadic features, near ties,
duplicates, rows of different norms) and the float64 ranking of real-valued features; the
certificate's fallback passes and its acceptance of bf16 candidates; what "auto" resolves to on
AVX2, AVX-512, AVX512-BF16, AMX and CUDA machines; the op checks and the errors of the Python
wrapper and of the C++ ops."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from dmdl.ops import _library
from dmdl.ops.jaccard import jaccard_distance
from dmdl.ops.knn import auto_precision, knn, knn_reference
from dmdl.testing import clustered_features

knn_module = importlib.import_module("dmdl.ops.knn")  # the attribute dmdl.ops.knn is the function
PRECISIONS = ("fp32", "bf16", "auto")

pytestmark = [pytest.mark.skipif(not _library.is_available(), reason="dmdl._C is not built"),
              pytest.mark.usefixtures("one_thread")]  # conftest.one_thread




def dyadic_features(n: int, d: int = 48, seed: int = 0, near_ties: bool = True,
                    row_scales: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Rows of integers in [-2048, 2048] scaled by 2^-11: every canonical value
    |x_j|^2 - 2 x_i.x_j is an exact integer multiple of 2^-22 (computed below in int64), while
    float32 GEMMs round and bfloat16 (8 bits) cannot even represent the inputs. With near_ties,
    a third of the rows are exact duplicates and a third differ from another row by one unit
    in one coordinate: distance gaps of ~2^-11, far below bf16's resolution. With row_scales,
    every row is multiplied by 1, 2, 4 or 8 (unnormalised features, still exact integers)."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(-2048, 2049, size=(max(2, n // 15), d))
    q = centres[rng.integers(0, len(centres), n)] + rng.integers(-300, 301, size=(n, d))
    if near_ties:
        third = n // 3
        src = rng.integers(0, third, size=n - third)
        q[third : 2 * third] = q[src[:third]]
        q[2 * third :] = q[src[third:]]
        q[2 * third :, 0] += rng.choice([-1, 1], size=n - 2 * third)
    q = np.clip(q, -2048, 2048).astype(np.int64)
    if row_scales:
        q = q * (2 ** rng.integers(0, 4, size=(n, 1)))
    return torch.from_numpy(q.astype(np.float32) / 2048.0), q


def exact_knn(q: np.ndarray, k: int) -> np.ndarray:
    """The k smallest (|x_j|^2 - 2 x_i.x_j, j) per row, in exact integer arithmetic."""
    sq = (q * q).sum(1)
    c = sq[None, :] - 2 * (q @ q.T)
    j = np.broadcast_to(np.arange(len(q)), c.shape)
    return np.stack([np.lexsort((j[i], c[i]))[:k] for i in range(len(q))])


@pytest.mark.parametrize("n,k,seed,row_scales", [(60, 10, 0, False), (300, 30, 1, False), (500, 31, 2, False),
                                                  (90, 90, 3, False), (300, 20, 9, True), (400, 31, 10, True)])
def test_knn_exact_on_near_ties_for_every_precision_and_backend(n, k, seed, row_scales):
    x, q = dyadic_features(n, seed=seed, row_scales=row_scales)
    expected = exact_knn(q, k)
    for precision in PRECISIONS:
        for margin in (0, 4, None):
            got = knn(x, k, precision=precision, margin=margin)
            np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"{precision} margin={margin}")


def test_knn_reference_is_exact():
    x, q = dyadic_features(300, seed=11, row_scales=True)
    np.testing.assert_array_equal(knn_reference(x, 25, block=64).numpy(), exact_knn(q, 25))


def test_knn_redoes_uncertified_rows():
    # Without a margin the certificate cannot hold for bf16 candidates (their error bound exceeds
    # any gap): the rows are redone by a wider fp32 pass; exact duplicates tied at the k-th place
    # fail even in fp32 and are settled by the canonical scan.
    # More than half the rows fail: one symmetric fp32 pass redoes all of them.
    x, q = dyadic_features(240, seed=4)
    rank, stats = torch.ops.dmdl.knn(x, 12, "bf16", 0)
    assert int(stats[0]) == 240
    np.testing.assert_array_equal(rank.long().numpy(), exact_knn(q, 12))
    # A few rows fail (a small margin on closely spaced distances): they alone get a wider fp32 pass.
    y = bench_like_features(600, 1024)
    rank, stats = torch.ops.dmdl.knn(y, 30, "bf16", 8)
    assert 0 < int(stats[0]) <= 300
    assert torch.equal(rank.long(), float64_ranking(y, 30))
    rank, stats = torch.ops.dmdl.knn(x, 12, "fp32", 0)
    assert int(stats[1]) > 0  # duplicates tie at the k-th place: the canonical scan settles them
    np.testing.assert_array_equal(rank.long().numpy(), exact_knn(q, 12))
    # clustered real-valued features: every row certified at once
    y = clustered_features(400, d=64, seed=5)
    _, stats = torch.ops.dmdl.knn(y, 30, "fp32", 8)
    assert stats.tolist() == [0, 0]


def float64_ranking(x: torch.Tensor, k: int) -> torch.Tensor:
    xd = x.double()
    c = (xd * xd).sum(1)[None, :] - 2 * xd @ xd.t()
    return torch.sort(c, dim=1, stable=True).indices[:, :k]


def test_knn_matches_float64_ranking_on_real_valued_features():
    x = clustered_features(700, d=96, seed=6)
    expected = float64_ranking(x, 30)
    for precision in PRECISIONS:
        assert torch.equal(knn(x, 30, precision=precision), expected), precision


def test_knn_unnormalised_real_valued_features():
    g = torch.Generator().manual_seed(12)
    x = clustered_features(500, d=200, seed=12) * (0.05 + 20 * torch.rand(500, 1, generator=g))
    x[::7] *= 1e-3  # a group of tiny rows: the bound scales with the largest norm
    expected = float64_ranking(x, 31)
    for precision in PRECISIONS:
        assert torch.equal(knn(x, 31, precision=precision), expected), precision


def bench_like_features(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Clusters of ~20 rows with heavy noise (bench/bench_knn.py): the 30th neighbour lies in the
    dense tail of near-orthogonal rows, where distances are closely spaced."""
    return clustered_features(n, d, seed, noise=0.8, cluster_size=20)


def test_bf16_certificate_accepts_the_rows_of_wide_clustered_features():
    # The bound uses each row's measured bf16 rounding residual (a worst-case 2^-8 |x_i| |x_j|
    # bound sent 42% of these rows to a second pass); the lists stay those of fp32.
    x = bench_like_features(1000, 2048)
    rank, stats = torch.ops.dmdl.knn(x, 30, "bf16", knn_module._MARGINS["bf16"])
    assert int(stats[0]) <= 20 and int(stats[1]) == 0
    assert torch.equal(rank, torch.ops.dmdl.knn(x, 30, "fp32", 8)[0])


# ---- precision="auto" ---------------------------------------------------------------------------

CPUS = [  # (capabilities torch.cpu.get_capabilities() reports, oneDNN enabled, auto's choice)
    ({"avx2": True}, True, "fp32"),  # AVX2 only: bf16 GEMMs are emulated
    ({"avx2": True, "avx512_f": True, "avx512_bw": True}, True, "fp32"),  # AVX-512 without BF16
    ({"avx2": True, "avx512_f": True, "avx512_bf16": True}, True, "bf16"),  # Zen 4/5, Cooper Lake
    ({"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True}, True, "bf16"),  # AMX
    ({"avx2": True, "avx512_bf16": True, "amx_bf16": True}, False, "fp32"),  # oneDNN switched off
    ({}, True, "fp32"),  # unknown CPU (e.g. aarch64)
]


@pytest.mark.parametrize("caps,onednn,expected", CPUS)
def test_auto_precision_rule_on_cpus(monkeypatch, caps, onednn, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(caps))
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", onednn)
    assert auto_precision("cpu") == expected
    assert auto_precision(torch.device("cpu")) == expected
    seen = []
    real = knn_module._knn_int32

    def spy(x, k, precision, margin, backend):
        seen.append((precision, margin))
        return real(x, k, precision, margin, backend)

    monkeypatch.setattr(knn_module, "_knn_int32", spy)
    monkeypatch.setattr(importlib.import_module("dmdl.ops.jaccard"), "_knn_int32", spy)
    x = clustered_features(60, seed=1)
    assert torch.equal(knn(x, 5), float64_ranking(x, 5))  # the default is "auto"
    jaccard_distance(x, 5, 2)
    assert seen == [(expected, knn_module._MARGINS[expected])] * 2


@pytest.mark.parametrize("capability,expected", [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_rule_on_cuda(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    assert auto_precision("cuda:0") == expected


def test_auto_precision_on_this_machine_is_a_concrete_choice():
    assert auto_precision() in ("fp32", "bf16")
    assert auto_precision(torch.device("meta")) == "fp32"


@pytest.mark.parametrize("bad", ["fp16", "AUTO", "", None, 32])
def test_invalid_precision_is_a_one_line_error_naming_the_argument(bad):
    x = clustered_features(20, seed=0)
    for call in (lambda: knn(x, 5, precision=bad), lambda: jaccard_distance(x, 5, 2, precision=bad)):
        with pytest.raises(ValueError, match="precision must be one of") as info:
            call()
        assert "\n" not in str(info.value) and "auto" in str(info.value)


def test_knn_faiss_backend_is_exact_too():
    pytest.importorskip("faiss")
    x, q = dyadic_features(300, seed=7)
    np.testing.assert_array_equal(knn(x, 20, knn_backend="faiss").numpy(), exact_knn(q, 20))
    y = clustered_features(300, seed=8)
    assert torch.equal(jaccard_distance(y, 20, 6, knn_backend="faiss").to_dense(), jaccard_distance(y, 20, 6).to_dense())


def test_knn_refine_rejects_bad_candidates():
    x = clustered_features(50, seed=0)
    cand = torch.zeros(50, 10, dtype=torch.int32)
    approx = torch.zeros(50, 10)
    with pytest.raises(RuntimeError, match="candidates.*outside"):
        torch.ops.dmdl.knn_refine(x, cand + 50, approx, 5, "fp32")
    with pytest.raises(RuntimeError, match="approx"):
        torch.ops.dmdl.knn_refine(x, cand, approx[:, :9].contiguous(), 5, "fp32")
    with pytest.raises(RuntimeError, match="k"):
        torch.ops.dmdl.knn_refine(x, cand, approx, 11, "fp32")
    with pytest.raises(RuntimeError, match="precision"):
        torch.ops.dmdl.knn_refine(x, cand, approx, 5, "fp16")
    with pytest.raises(RuntimeError, match="sorted ascending"):
        torch.ops.dmdl.knn_refine(x, cand, torch.arange(10.0).flip(0).repeat(50, 1), 5, "fp32")


def test_opcheck():
    x = clustered_features(24, d=8, seed=3)
    torch.library.opcheck(torch.ops.dmdl.knn.default, (x, 5, "fp32", 4))
    torch.library.opcheck(torch.ops.dmdl.knn.default, (x, 5, "bf16", 2))
    rank, _ = torch.ops.dmdl.knn(x, 8, "fp32", 8)
    approx = torch.randn(24, 8).sort(dim=1).values
    torch.library.opcheck(torch.ops.dmdl.knn_refine.default, (x, rank, approx, 5, "fp32"))


def test_op_errors_from_cpp():
    x = clustered_features(20, seed=0)
    knn_op = torch.ops.dmdl.knn
    with pytest.raises(RuntimeError, match="dmdl::knn: `features` must be float32"):
        knn_op(x.double(), 5, "fp32", 4)
    with pytest.raises(RuntimeError, match="`features` must be 2-D"):
        knn_op(x[0].contiguous(), 5, "fp32", 4)
    with pytest.raises(RuntimeError, match="`features` must be contiguous"):
        knn_op(torch.cat([x, x], 1)[:, ::2], 5, "fp32", 4)
    with pytest.raises(RuntimeError, match="`k` must be in"):
        knn_op(x, 21, "fp32", 4)
    with pytest.raises(RuntimeError, match="`margin` must be"):
        knn_op(x, 5, "fp32", -1)
    with pytest.raises(RuntimeError, match="`precision` must be"):
        knn_op(x, 5, "int8", 4)
    with pytest.raises(RuntimeError, match="tf32.*CUDA only"):
        knn_op(x, 5, "tf32", 4)
    with pytest.raises(RuntimeError, match="N >= 2"):
        knn_op(x[:1], 1, "fp32", 0)
    bad = x.clone()
    bad[7, 2] = float("inf")
    with pytest.raises(RuntimeError, match="`features` must be finite: row 7"):
        knn_op(bad, 5, "fp32", 4)


def test_wrapper_option_errors():
    x = clustered_features(20, seed=0)
    with pytest.raises(ValueError, match="tf32.*CUDA"):
        knn(x, 5, precision="tf32")
    with pytest.raises(ValueError, match="knn_backend"):
        knn(x, 5, knn_backend="annoy")
    with pytest.raises(ValueError, match="margin"):
        knn(x, 5, margin=-2)
    with pytest.raises(ValueError, match="k must be in"):
        knn(x, 21)
