"""Benchmark: MULT's label transfer per epoch (docs/mult.md#B3, docs/benchmarks.md#propagation) on the CPU.

Same process, same inputs, per N (RGB samples N_R = N, IR samples N_I = N / 2, the SYSU ratio;
K_R = N / 20, K_I = N_I / 20 clusters; D = 256 clustered features with a modality gap; Jaccard
k1 30, k2 6):

* ``reference`` — MULT's released computation: dense Jaccard matrices, dense ``1 - D``
  affinities, the dense Sinkhorn plan, every propagation product a dense GEMM
  (``mult_label_transfer`` with dense distance inputs: ``torch.addmm`` per step).
* ``ours``      — the sparse Jaccard output: ``1 - D`` on the stored pairs only, each homogeneous
  product on the CSR kernel of :func:`dmdl.ops.propagate`; heterogeneous plan dense (MULT's).
* ``ours-knn``  — as ``ours`` with the sparse k-nearest heterogeneous affinity (``cross_k`` 30).

Only the label transfer is timed (the Jaccard distances are inputs, computed once outside).
``ours`` is checked against ``reference`` (labels within 1e-4 on the propagated matrices).

    python -m pytest bench/bench_mult_transfer.py                 # N = 2k, 4k
    python -m pytest bench/bench_mult_transfer.py --run-slow      # also N = 8k, 12k

No time is asserted.
"""

from __future__ import annotations

import os

import pytest
import torch

from dmdl.ops import jaccard_distance
from dmdl.pseudo_labels import dbscan_labels
from dmdl.pseudo_labels.mult import dbscan_centers, mult_label_transfer
from dmdl.testing import two_modality_features

SIZES = [2000, 4000, pytest.param(8000, marks=pytest.mark.slow), pytest.param(12000, marks=pytest.mark.slow)]
VARIANTS = ["reference", "ours", "ours-knn"]
_CACHE: dict = {}


def _inputs(n: int):
    if n in _CACHE:
        return _CACHE[n]
    fr, fi, _, _ = two_modality_features(n, n_visible=n, n_infrared=n // 2, ids=n // 20, d=256, shift=0.1, noise=0.6,
                                         gap_first=True)
    out = {}
    for name, f in (("rgb", fr), ("ir", fi)):
        sparse = jaccard_distance(f, 30, 6, output="sparse")
        labels = dbscan_labels(sparse, 0.6, 4)
        out[name] = (f, sparse, jaccard_distance(f, 30, 6, output="dense"), dbscan_centers(f, labels))
    _CACHE.clear()
    _CACHE[n] = out
    return out


@pytest.mark.parametrize("threads", [int(os.environ.get("DMDL_BENCH_THREADS", "2"))])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", SIZES)
def test_mult_transfer(benchmark, n, variant, threads):
    torch.set_num_threads(threads)
    data = _inputs(n)
    (fr, sr, dr, cr), (fi, si, di, ci) = data["rgb"], data["ir"]
    nnz = (sr._nnz() + si._nnz()) / (fr.shape[0] + fi.shape[0])
    benchmark.group = f"N_R={n} N_I={n // 2} K_R={cr.shape[0]} K_I={ci.shape[0]} nnz/row={nnz:.0f} threads={threads}"
    if variant == "reference":
        args, kw = (dr, di), {}
    elif variant == "ours":
        args, kw = (sr, si), {}
    else:
        args, kw = (sr, si), {"cross_affinity": "knn", "cross_k": 30}
    out = benchmark.pedantic(mult_label_transfer, args=(fr, fi, cr, ci, *args), kwargs=kw, rounds=1, iterations=1)
    benchmark.extra_info["seconds"] = {k: round(v, 3) for k, v in out["seconds"].items()}
    benchmark.extra_info["iterations"] = out["iterations"]
    if variant == "ours":
        ref = mult_label_transfer(fr, fi, cr, ci, dr, di)
        for key in ("y_rgb", "y_ir", "y_rgb_cm", "y_ir_cm"):
            assert (out[key] - ref[key]).abs().max() < 1e-4, key
