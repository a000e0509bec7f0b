"""Benchmark: dmdl.ops.jaccard_distance against the pipeline users run today and the machine's limit.

Three contenders per (N, threads), same process, same features (clustered synthetic, D = 2048,
k1 = 30, k2 = 6; docs/benchmarks.md#jaccard):

* ``ours``: ``jaccard_distance(x, output="sparse")`` (exact kNN with ``precision="auto"`` + the sparse
  kernels; bench_knn.py compares the precisions);
* ``reference``: the reference repositories' ``compute_jaccard_distance`` re-implemented here
  from the published algorithm the way they run it: faiss-cpu ``IndexFlatL2`` kNN (torch
  matmul + top-k when faiss is missing), then NumPy loops over rows filling dense N x N matrices;
* ``mm``: one same-size fp32 ``torch.mm(x, x.T)``, the GEMM every exact method has to pay.

and DBSCAN (eps 0.6, min_samples 4) on the dense matrix vs on our CSR (identical labels).

    python -m pytest bench/bench_jaccard.py                          # N = 4,000
    python -m pytest bench/bench_jaccard.py --run-slow               # also N = 12,000 and 22,000
    python -m pytest bench/bench_jaccard.py --benchmark-json out.json && python bench/summarize_jaccard.py out.json

No time is asserted; results are checked to agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmdl.ops import jaccard_distance
from dmdl.testing import clustered_features

try:  # optional kNN backend of the reference pipeline
    import faiss  # type: ignore
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None

K1, K2, D = 30, 6, 2048
SIZES = [
    pytest.param(4000, id="N4000"),
    pytest.param(12000, id="N12000", marks=pytest.mark.slow),
    pytest.param(22000, id="N22000", marks=pytest.mark.slow),
]
THREADS = [1, 2]


_FEATURES: dict[int, torch.Tensor] = {}


def features(n: int) -> torch.Tensor:
    if n not in _FEATURES:
        _FEATURES.clear()
        # clusters of ~20 around random centres, heavy noise: L2-normalised rows
        _FEATURES[n] = clustered_features(n, D, noise=0.8, cluster_size=20)
    return _FEATURES[n]


def reference_knn(f: np.ndarray, k: int) -> np.ndarray:
    if faiss is not None:
        index = faiss.IndexFlatL2(f.shape[1])
        index.add(f)
        return index.search(f, k)[1]
    x = torch.from_numpy(f)
    sq = (x * x).sum(1)
    out = []
    for s in range(0, x.shape[0], 4096):
        d = sq[s : s + 4096, None] + sq[None, :] - 2.0 * (x[s : s + 4096] @ x.t())
        out.append(torch.topk(d, k, dim=1, largest=False).indices)
    return torch.cat(out).numpy()


def reference_jaccard(features: torch.Tensor, k1: int = K1, k2: int = K2) -> np.ndarray:
    """The reference algorithm with dense matrices and row loops (what users run today)."""
    f = features.numpy().astype(np.float32)
    n = f.shape[0]
    rank = reference_knn(f, k1)

    def recip(i: int, k: int) -> np.ndarray:
        fwd = rank[i, : k + 1]
        hits = np.where(rank[fwd, : k + 1] == i)[0]
        return fwd[hits]

    half = int(np.around(k1 / 2))
    full_sets = [recip(i, k1) for i in range(n)]
    half_sets = [recip(i, half) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        members = full_sets[i]
        expanded = members
        for j in members:
            hj = half_sets[j]
            if len(np.intersect1d(hj, members)) > 2 / 3 * len(hj):
                expanded = np.append(expanded, hj)
        expanded = np.unique(expanded)
        logits = -(2 - 2 * f[i] @ f[expanded].T)
        w = np.exp(logits - logits.max())
        v[i, expanded] = w / w.sum()
    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = v[rank[i, :k2]].mean(axis=0)
        v = v_qe
    inverted = [np.where(v[:, c] != 0)[0] for c in range(n)]
    out = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        acc = np.zeros(n, dtype=np.float32)
        for c in np.where(v[i] != 0)[0]:
            rows = inverted[c]
            acc[rows] += np.minimum(v[i, c], v[rows, c])
        out[i] = 1 - acc / (2 - acc)
    out[out < 0] = 0
    return out


@pytest.fixture(params=THREADS, ids=lambda t: f"threads{t}")
def threads(request):
    prev = torch.get_num_threads()
    torch.set_num_threads(request.param)
    if faiss is not None:
        faiss.omp_set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(prev)


def _group(benchmark, name: str, n: int, threads: int, **extra) -> None:
    benchmark.group = f"{name} N={n} threads={threads}"
    benchmark.extra_info.update(n=n, d=D, k1=K1, k2=K2, threads=threads, **extra)


@pytest.mark.parametrize("n", SIZES)
def test_ours(benchmark, n, threads):
    x = features(n)
    _group(benchmark, "jaccard", n, threads, contender="ours")
    out = benchmark.pedantic(jaccard_distance, args=(x, K1, K2), rounds=3 if n <= 4000 else 1, iterations=1)
    benchmark.extra_info["nnz_per_row"] = out.values().numel() / n


@pytest.mark.parametrize("n", SIZES)
def test_reference(benchmark, n, threads):
    x = features(n)
    _group(benchmark, "jaccard", n, threads, contender="reference",
           knn="faiss-cpu IndexFlatL2" if faiss is not None else "torch mm + topk")
    out = benchmark.pedantic(reference_jaccard, args=(x,), rounds=1, iterations=1)
    ours = jaccard_distance(x, K1, K2, output="dense")
    # same algorithm; faiss orders near-tied neighbours by its own rounding
    assert np.mean(np.abs(out - ours.numpy()) < 1e-4) > 0.99


@pytest.mark.parametrize("n", SIZES)
def test_mm(benchmark, n, threads):
    x = features(n)
    _group(benchmark, "jaccard", n, threads, contender="mm")
    benchmark.pedantic(torch.mm, args=(x, x.t()), rounds=3 if n <= 4000 else 1, iterations=1)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_dbscan(benchmark, n, layout):
    """sklearn DBSCAN on the dense matrix (what users run) vs ``dbscan_labels`` on our CSR
    (pairs above eps dropped, then sklearn on the sparse graph): identical labels."""
    from sklearn.cluster import DBSCAN

    from dmdl.pseudo_labels import dbscan_labels

    x = features(n)
    benchmark.group = f"dbscan N={n}"
    benchmark.extra_info.update(n=n, layout=layout)
    if layout == "dense":
        graph = jaccard_distance(x, K1, K2, output="dense").numpy()
        model = DBSCAN(eps=0.6, min_samples=4, metric="precomputed", n_jobs=1)
        labels = benchmark.pedantic(model.fit_predict, args=(graph,), rounds=1, iterations=1)
    else:
        graph = jaccard_distance(x, K1, K2)
        labels = benchmark.pedantic(dbscan_labels, args=(graph, 0.6, 4), rounds=3, iterations=1)
    benchmark.extra_info["clusters"] = int(labels.max()) + 1
