"""Benchmark: one label-propagation step of MULT, ``Y <- a * A @ Y + b * Z``, on the CPU.

Per (N, threads) group, same process, same inputs (docs/benchmarks.md#propagation, #targets): ``A`` the row-normalised
``1 - Jaccard`` affinity of clustered features (``jaccard_distance(x, k1=30, k2=6)``, D = 256,
clusters of ~20 as in bench_jaccard.py; its non-zeros per row are reported in ``extra_info``),
``Y``, ``Z`` [N, K = 400] soft labels, ``a = b = 0.5`` (MULT's homogeneous step, docs/mult.md#B3.4
):

* ``ours``         — ``dmdl.ops.propagate(A_csr, Y, Z, a, b)``: the compiled op (the CSR as
  ``jaccard_distance`` returns it, int32 indices; the row pointers are widened inside the timing).
* ``torch_sparse`` — ``torch.addmm(Z, A_csr, Y, beta=b, alpha=a)`` on the same CSR tensor: what a
  user of torch.sparse runs (``A_csr @ Y`` plus the scaled sum, in one call).
* ``dense``        — ``torch.addmm(Z, A_dense, Y, beta=b, alpha=a)``: the reference code's dense
  product with the N x N affinity (MULT builds it dense), one fp32 GEMM.
* ``gemm_same_macs`` — the limit: a dense fp32 GEMM with the multiply-adds of the sparse product,
  ``[N, r] @ [r, K]`` with r = nnz / N: the step's cost if its non-zeros formed a dense block
  that the GEMM could reuse from cache (the SpMM gathers a different row of Y for each non-zero).

    python -m pytest bench/bench_propagation.py                          # N = 4,000; 1 and 2 threads
    python -m pytest bench/bench_propagation.py --run-slow               # also N = 12,000 and 22,000
    DMDL_BENCH_N=4000,12000 DMDL_BENCH_THREADS=2 python -m pytest bench/bench_propagation.py
    python -m pytest bench/bench_propagation.py --benchmark-disable      # CI: each body once

No time is asserted; ``ours`` is checked to agree with ``torch_sparse`` and ``dense``.
"""

from __future__ import annotations

import os

import pytest
import torch

from dmdl.ops import propagate
from dmdl.testing import clustered_features, jaccard_affinity
from _params import sizes_from_env, threads_from_env

K, D, K1, K2 = 400, 256, 30, 6
A_COEF, B_COEF = 0.5, 0.5
ROUNDS = 5
VARIANTS = ["ours", "torch_sparse", "dense", "gemm_same_macs"]


def _sizes():
    return sizes_from_env(4000, (12000, 22000))


def _threads():
    return threads_from_env([1, 2])


_INPUTS: dict[int, dict] = {}


def inputs(n: int) -> dict:
    """The affinity (CSR and dense), labels and the GEMM of the limit for size n (one size cached)."""
    if n not in _INPUTS:
        _INPUTS.clear()
        # the features of bench_jaccard.py: clusters of ~20 around random centres, heavy noise
        aff = jaccard_affinity(clustered_features(n, D, noise=0.8, cluster_size=20), K1, K2)
        g = torch.Generator().manual_seed(1)
        y = torch.softmax(5.0 * torch.randn(n, K, generator=g), dim=1)
        nnz = aff.values().numel()
        r = max(1, round(nnz / n))
        _INPUTS[n] = dict(aff=aff, y=y, nnz=nnz, r=r, dense=None,
                          p=torch.rand(n, r, generator=g), q=torch.rand(r, K, generator=g))
    return _INPUTS[n]


def dense_affinity(inp: dict) -> torch.Tensor:
    if inp["dense"] is None:
        inp["dense"] = inp["aff"].to_dense()
    return inp["dense"]


@pytest.fixture(params=_threads(), ids=lambda t: f"threads{t}")
def threads(request):
    prev = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield torch.get_num_threads()
    torch.set_num_threads(prev)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", _sizes())
def test_propagation_step(benchmark, n, variant, threads):
    inp = inputs(n)
    aff, y = inp["aff"], inp["y"]
    benchmark.group = f"propagation step N={n} K={K} threads={threads}"
    benchmark.extra_info.update(n=n, k=K, threads=threads, variant=variant, nnz=inp["nnz"],
                                nnz_per_row=round(inp["nnz"] / n, 1), density=inp["nnz"] / (n * n))
    if variant == "ours":
        fn, args = propagate, (aff, y, y, A_COEF, B_COEF)
    elif variant == "torch_sparse":
        fn, args = (lambda a_, y_: torch.addmm(y_, a_, y_, beta=B_COEF, alpha=A_COEF)), (aff, y)
    elif variant == "dense":
        fn, args = (lambda a_, y_: torch.addmm(y_, a_, y_, beta=B_COEF, alpha=A_COEF)), (dense_affinity(inp), y)
    else:
        z = torch.empty(n, K)
        fn, args = (lambda p, q, z_: torch.addmm(z_, p, q, beta=B_COEF, alpha=A_COEF)), (inp["p"], inp["q"], z)
    benchmark.pedantic(fn, args=args, rounds=ROUNDS, iterations=1, warmup_rounds=1)

    if variant in ("ours", "torch_sparse", "dense"):  # the same step, up to float32 rounding
        got = fn(*args)
        if variant == "ours":
            want = torch.addmm(y, aff, y, beta=B_COEF, alpha=A_COEF)
        else:
            want = propagate(aff, y, y, A_COEF, B_COEF)
        assert got.shape == (n, K) and (got - want).abs().max().item() <= 1e-5
