"""Benchmark: dmdl.ops.jaccard_distance against what users run today.

The baseline is the reference repositories' algorithm (faiss_rerank.compute_jaccard_distance)
re-implemented in NumPy the way they run it: exact kNN (faiss-cpu IndexFlatL2 when
importable, else torch matmul + top-k), then Python loops over rows filling dense
N x N float32 matrices (V, query-expanded V, Jaccard). performance.md §1.

    python -m pytest bench/bench_jaccard.py                       # N = 2,000
    python -m pytest bench/bench_jaccard.py --run-slow            # also N = 12,000
    python -m pytest bench/bench_jaccard.py --benchmark-disable   # CI: each body once

No time is asserted; the two results are checked to agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmdl.ops import jaccard_distance

try:  # optional kNN backend of the baseline
    import faiss  # type: ignore
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None

K1, K2 = 30, 6
SIZES = [pytest.param(2000, id="N2000"), pytest.param(12000, id="N12000", marks=pytest.mark.slow)]
DIMS = [256, 2048]


def make_features(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(2, n // 20), d, generator=g)
    labels = torch.randint(0, centres.shape[0], (n,), generator=g)
    return F.normalize(centres[labels] + 0.8 * torch.randn(n, d, generator=g), dim=1)


def baseline_knn(f: np.ndarray, k: int) -> np.ndarray:
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


def baseline_jaccard(features: torch.Tensor, k1: int = K1, k2: int = K2) -> np.ndarray:
    """The reference algorithm with dense matrices and row loops (what users run today)."""
    f = features.numpy().astype(np.float32)
    n = f.shape[0]
    rank = baseline_knn(f, k1)

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


@pytest.fixture(params=["threads1", "threadsN"])
def threads(request):
    """1 thread, and torch's default (all cores): on a shared machine OpenMP regions can
    stall behind other processes, so the single-thread number is the steadier one."""
    prev = torch.get_num_threads()
    if request.param == "threads1":
        torch.set_num_threads(1)
    yield torch.get_num_threads()
    torch.set_num_threads(prev)


@pytest.mark.parametrize("d", DIMS, ids=lambda d: f"D{d}")
@pytest.mark.parametrize("n", SIZES)
def test_dmdl_jaccard(benchmark, n, d, threads):
    x = make_features(n, d)
    benchmark.group = f"jaccard N={n} D={d}"
    benchmark.extra_info.update(n=n, d=d, k1=K1, k2=K2, threads=threads)
    out = benchmark.pedantic(jaccard_distance, args=(x, K1, K2), rounds=3 if n <= 4000 else 1, iterations=1)
    assert out.shape == (n, n)


@pytest.mark.parametrize("d", DIMS, ids=lambda d: f"D{d}")
@pytest.mark.parametrize("n", SIZES)
def test_baseline_numpy_dense(benchmark, n, d):
    x = make_features(n, d)
    benchmark.group = f"jaccard N={n} D={d}"
    benchmark.extra_info.update(n=n, d=d, k1=K1, k2=K2, knn="faiss-cpu" if faiss is not None else "torch")
    out = benchmark.pedantic(baseline_jaccard, args=(x,), rounds=1, iterations=1)
    # Same algorithm: agrees with dmdl except where kNN ties/near-ties are ordered differently.
    ours = jaccard_distance(x, K1, K2).numpy()
    assert np.mean(np.abs(out - ours) < 1e-4) > 0.99
