"""Benchmark: the exact kNN (``dmdl.ops.knn``) and the Jaccard distance on top of it, per candidate
precision, against what a user runs and against the machine's GEMM rate.

Per (N, threads) group, same process, same features (clustered synthetic, D = 2048, k = 31, the
clustering workload of bench_jaccard.py):

* ``knn-fp32`` / ``knn-bf16`` / ``knn-auto``: ``knn(x, 31, precision=...)`` with the default
  margins; ``extra_info`` holds the precision ``auto`` resolved to and the certificate's stats
  from ``torch.ops.dmdl.knn`` (``redone_fp32``: rows whose reduced-precision certificate failed and
  were redone by an fp32 pass; ``redone_canonical``: rows settled by the exact scan of every column).
* ``jaccard-fp32`` / ``jaccard-bf16`` / ``jaccard-auto``: ``jaccard_distance(x, 30, 6, precision=...)``.
* ``mm-topk``: the user's baseline, fp32 ``|x_j|^2 - 2 x_i.x_j`` by ``torch.mm`` in blocks of 4096
  rows and ``torch.topk`` (not exact: it orders near ties by rounding).
* ``gemm-fp32`` / ``gemm-bf16``: one ``[4096, D] @ [D, N]`` ``torch.mm``; ``extra_info`` holds its
  GFLOP/s and ``limit_s``, the time of the N^2 D / 2 multiply-adds of the symmetric GEMM the kNN
  multiplies at that rate (the floor for a GEMM-based exact kNN in that precision).

Every precision is checked to give the fp32 lists. No time is asserted.

    python -m pytest bench/bench_knn.py                                   # N = 4,000, 2 threads
    python -m pytest bench/bench_knn.py --run-slow                        # also N = 12,000 and 34,000
    DMDL_BENCH_N=4000,12000 DMDL_BENCH_THREADS=1,2 python -m pytest bench/bench_knn.py
    python -m pytest bench/bench_knn.py --benchmark-json out.json && python bench/bench_knn.py out.json
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

import pytest
import torch

from dmdl.ops import jaccard_distance, knn
from dmdl.ops.knn import _MARGINS, auto_precision
from dmdl.testing import clustered_features
from _params import sizes_from_env, threads_from_env

K, K1, K2, D = 31, 30, 6, 2048
BLOCK = 4096
PRECISIONS = ["fp32", "bf16", "auto"]


def _sizes():
    return sizes_from_env(4000, (12000, 34000))


def _threads():
    return threads_from_env([2])


_CACHE: dict = {}


def features(n: int) -> torch.Tensor:
    if _CACHE.get("n") != n:
        _CACHE.clear()
        # clusters of ~20 around random centres, heavy noise: L2-normalised rows (bench_jaccard.py)
        _CACHE.update(n=n, x=clustered_features(n, D, noise=0.8, cluster_size=20))
    return _CACHE["x"]


def fp32_lists(n: int) -> torch.Tensor:
    if "rank" not in _CACHE:
        _CACHE["rank"] = knn(features(n), K, precision="fp32")
    return _CACHE["rank"]


def mm_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    sq = (x * x).sum(1)
    out = []
    for r0 in range(0, x.shape[0], BLOCK):
        d = sq[None, :] - 2.0 * (x[r0 : r0 + BLOCK] @ x.t())
        out.append(torch.topk(d, k, dim=1, largest=False).indices)
    return torch.cat(out)


@pytest.fixture(params=_threads(), ids=lambda t: f"threads{t}")
def threads(request):
    prev = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(prev)


def _info(benchmark, n: int, threads: int, contender: str, **extra) -> None:
    cpu = torch.cpu.get_capabilities().get("cpu_name", "") if hasattr(torch.cpu, "get_capabilities") else ""
    benchmark.group = f"knn N={n} threads={threads}"
    benchmark.extra_info.update(n=n, d=D, k=K, threads=threads, contender=contender, cpu=cpu,
                                capability=torch.backends.cpu.get_cpu_capability(), **extra)


def _stats(x: torch.Tensor, precision: str) -> dict:
    """The certificate's stats of ``knn(x, K, precision=precision)`` (one untimed op call per
    concrete precision and N)."""
    concrete = auto_precision(x.device) if precision == "auto" else precision
    key = ("stats", concrete)
    if key not in _CACHE:
        _, stats = torch.ops.dmdl.knn(x, K, concrete, _MARGINS[concrete])
        _CACHE[key] = stats.tolist()
    wide, canon = _CACHE[key]
    return {"resolved": concrete, "redone_fp32": wide, "redone_canonical": canon}


def _rounds(n: int) -> int:
    return 3 if n <= 12000 else 1


@pytest.mark.parametrize("n", _sizes())
@pytest.mark.parametrize("precision", PRECISIONS)
def test_knn(benchmark, n, threads, precision):
    x = features(n)
    _info(benchmark, n, threads, f"knn-{precision}", **_stats(x, precision))
    rank = benchmark.pedantic(knn, args=(x, K), kwargs={"precision": precision}, rounds=_rounds(n), iterations=1)
    assert torch.equal(rank, fp32_lists(n))


@pytest.mark.parametrize("n", _sizes())
@pytest.mark.parametrize("precision", PRECISIONS)
def test_jaccard(benchmark, n, threads, precision):
    x = features(n)
    _info(benchmark, n, threads, f"jaccard-{precision}", **_stats(x, precision))
    out = benchmark.pedantic(jaccard_distance, args=(x, K1, K2), kwargs={"precision": precision},
                             rounds=_rounds(n), iterations=1)
    benchmark.extra_info["nnz_per_row"] = out.values().numel() / n


@pytest.mark.parametrize("n", _sizes())
def test_mm_topk(benchmark, n, threads):
    x = features(n)
    _info(benchmark, n, threads, "mm-topk")
    rank = benchmark.pedantic(mm_topk, args=(x, K), rounds=_rounds(n), iterations=1)
    benchmark.extra_info["rows_equal_to_exact"] = float((rank == fp32_lists(n)).all(1).float().mean())


@pytest.mark.parametrize("n", _sizes())
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_gemm(benchmark, n, threads, dtype):
    x = features(n).to(torch.float32 if dtype == "fp32" else torch.bfloat16)
    rows = min(BLOCK, n)
    a = x[:rows].contiguous()
    _info(benchmark, n, threads, f"gemm-{dtype}")
    benchmark.pedantic(torch.mm, args=(a, x.t()), rounds=3, iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        rate = 2.0 * rows * n * D / benchmark.stats.stats.min
        benchmark.extra_info.update(gflops=rate / 1e9, limit_s=n * n * D / rate)


def summarize(path: str) -> None:
    """Prints the table of a --benchmark-json file: seconds (min over rounds) per contender."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    rows: dict = defaultdict(dict)
    cpu = ""
    for b in data["benchmarks"]:
        info = b["extra_info"]
        cpu = cpu or f"{info.get('cpu', '')} ({info.get('capability', '')})"
        rows[(info["n"], info["threads"])][info["contender"]] = (b["stats"]["min"], info)
    print(f"CPU: {cpu}; D = {D}, k = {K}; seconds, min over rounds\n")
    head = ["knn-fp32", "knn-bf16", "knn-auto", "jaccard-fp32", "jaccard-bf16", "jaccard-auto", "mm-topk"]
    print("| N | threads | " + " | ".join(head) + " | fp32 / bf16 GEMM GFLOP/s | limit fp32 / bf16 (s) | "
          "auto = | bf16 rows redone |")
    print("|" + "---|" * (len(head) + 6))
    for (n, th), r in sorted(rows.items()):
        cells = [f"{r[h][0]:.2f}" if h in r else "-" for h in head]
        g32, g16 = r.get("gemm-fp32"), r.get("gemm-bf16")
        rates = f"{g32[1]['gflops']:.0f} / {g16[1]['gflops']:.0f}" if g32 and g16 else "-"
        limits = f"{g32[1]['limit_s']:.2f} / {g16[1]['limit_s']:.2f}" if g32 and g16 else "-"
        auto = r.get("knn-auto", (0, {}))[1].get("resolved", "-")
        bf = r.get("knn-bf16", (0, {}))[1]
        redone = f"{bf.get('redone_fp32', '-')} (+{bf.get('redone_canonical', '-')} exact scan)" if bf else "-"
        print(f"| {n} | {th} | " + " | ".join(cells) + f" | {rates} | {limits} | {auto} | {redone} |")


if __name__ == "__main__":
    summarize(sys.argv[1])
