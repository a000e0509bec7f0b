"""Peak resident memory of the sparse Jaccard path at large N (docs/benchmarks.md#targets: < 4 GB at 100k).

    python bench/rss_jaccard.py                 # N = 100,000, D = 2048 (minutes on 2 cores)
    python bench/rss_jaccard.py --n 20000 --d 256

Prints the peak RSS of this process (features included: N x D float32 = 0.82 GB at 100k x 2048),
the time, the nnz of the CSR and the DBSCAN clusters on it.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from dmdl.ops import jaccard_distance
    from dmdl.pseudo_labels import dbscan_labels
    from dmdl.testing import clustered_features

    # 8192 rows at a time: no N x D temporaries beyond x itself
    x = clustered_features(args.n, args.d, 0, noise=0.8, cluster_size=20, chunk_rows=8192)
    base = peak_rss_gb()
    t = time.perf_counter()
    dist = jaccard_distance(x, 30, 6)
    t_jac = time.perf_counter() - t
    after_jaccard = peak_rss_gb()
    t = time.perf_counter()
    labels = dbscan_labels(dist, eps=0.6, min_samples=4)
    t_db = time.perf_counter() - t
    print(f"N={args.n} D={args.d} threads={args.threads}")
    print(f"features ready: peak RSS {base:.2f} GB")
    print(f"jaccard_distance (sparse): {t_jac:.1f} s, nnz {dist.values().numel()} "
          f"({dist.values().numel() / args.n:.0f} per row), peak RSS {after_jaccard:.2f} GB")
    print(f"DBSCAN on the CSR: {t_db:.1f} s, {int(labels.max()) + 1} clusters, peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
