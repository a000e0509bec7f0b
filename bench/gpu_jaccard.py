"""GPU timings of the compiled kNN and Jaccard kernels (docs/benchmarks.md#jaccard, #targets: target <= 50 ms for
the whole Jaccard distance at N = 34,167 on one H100).

    python bench/gpu_jaccard.py                 # N = 34,000, D = 2048, k1 = 30, k2 = 6
    python bench/gpu_jaccard.py --n 12000 --repeat 10

Times with CUDA events after warm-up runs: dmdl::knn in each precision (fp32 / tf32 / bf16), then
dmdl::jaccard_sparse alone (from the fp32 lists), then the whole jaccard_distance(output="sparse")
per precision. Features are clustered, L2-normalised rows generated on the GPU. Checks that every
precision returns the same neighbour lists. Exits with a message when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch


def time_ms(fn, warmup: int, repeat: int) -> tuple[list[float], object]:
    out = None
    for _ in range(warmup):
        out = fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=34000)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--k1", type=int, default=30)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("bench/gpu_jaccard.py: no CUDA device is available (torch.cuda.is_available() is False); "
              "run it on a machine with an NVIDIA GPU.", file=sys.stderr)
        return 2
    from dmdl.ops import _library
    from dmdl.ops.jaccard import jaccard_distance
    from dmdl.testing import clustered_features

    lib = _library.load()
    if not lib.cuda_compiled():
        print("bench/gpu_jaccard.py: dmdl._C was built without its CUDA kernels; rebuild with CUDA_HOME set "
              "(or DMDL_FORCE_CUDA=1).", file=sys.stderr)
        return 2

    dev = torch.device("cuda")
    x = clustered_features(args.n, args.d, args.seed, noise=0.8, cluster_size=20, device=dev)
    k1, k2 = args.k1, args.k2
    margins = {"fp32": 8, "tf32": 8, "bf16": 32}
    rows = []
    ranks = {}
    for prec in ("fp32", "tf32", "bf16"):
        times, (rank, stats) = time_ms(lambda p=prec: torch.ops.dmdl.knn(x, k1, p, margins[p]), args.warmup, args.repeat)
        ranks[prec] = rank
        wide, canon = stats.tolist()
        rows.append((f"knn k={k1}", prec, times, f"rows redone: {wide} wider, {canon} canonical"))
    same = all(torch.equal(ranks["fp32"], r) for r in ranks.values())

    torch.cuda.reset_peak_memory_stats()
    times, (crow, col, val) = time_ms(lambda: torch.ops.dmdl.jaccard_sparse(x, ranks["fp32"], k2), args.warmup,
                                      args.repeat)
    nnz = int(crow[-1])
    rows.append((f"jaccard_sparse k2={k2}", "-", times,
                 f"nnz {nnz} ({100.0 * nnz / args.n ** 2:.2f}% of N^2), "
                 f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"))
    for prec in ("fp32", "tf32", "bf16"):
        torch.cuda.reset_peak_memory_stats()
        times, _ = time_ms(lambda p=prec: jaccard_distance(x, k1, k2, output="sparse", precision=p), args.warmup,
                           args.repeat)
        rows.append(("jaccard_distance sparse", prec, times,
                     f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"))

    print(f"device: {torch.cuda.get_device_name(dev)}; torch {torch.__version__}; N = {args.n}, D = {args.d}, "
          f"k1 = {k1}, k2 = {k2}; {args.warmup} warm-up + {args.repeat} timed runs (CUDA events)")
    print(f"TF32 for float32 matmuls allowed by the global settings: {torch.backends.cuda.matmul.allow_tf32}")
    print(f"{'op':<26} {'precision':<9} {'median ms':>10} {'min ms':>9}  notes")
    for name, prec, times, note in rows:
        print(f"{name:<26} {prec:<9} {statistics.median(times):>10.2f} {min(times):>9.2f}  {note}")
    print(f"identical neighbour lists for fp32 / tf32 / bf16: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
