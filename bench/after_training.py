"""Throughput of `dmdl extract` and latency of `dmdl search` (with and without --rerank).

    python bench/after_training.py                      # both parts, the machine's threads
    python bench/after_training.py --threads 1 --part search --gallery 10000 --queries 1 100
    python bench/after_training.py --part extract --images 256 --archs mobilenet_v2 resnet50

extract: FeatureExtractor.extract (what `dmdl extract` runs: decode, bicubic resize, normalise,
the model on the image and its flip, L2 normalisation) over a folder of generated images
(128 x 256 JPEGs, SYSU-like), on the CPU, batch 64, for a model of each ``--archs`` at its
preset's input size (resnet50 AGW with non-local blocks at 288 x 144, the `sysu`/`regdb`
presets; mobilenet_v2 at 128 x 64, the `regdb-cpu` preset) with random weights (the speed does
not depend on them). Prints images/s after one warm-up batch.

search: the ranking core of `dmdl search` on synthetic features (unit rows, D = 2048 as the
ResNet-50 AGW, clustered around 1,000 identities: a gallery of ``--gallery`` images, not
extracted) for ``--queries`` query counts: distances + sorted top-10 (``squared_distances`` +
``rank_gallery``), and k-reciprocal re-ranking (``k_reciprocal_distances``, k1 20, k2 6,
lambda 0.3, then the top-10). The median of ``--repeats`` runs after a warm-up. Nothing is
asserted: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

PRESETS = {"mobilenet_v2": ("regdb-cpu", 128, 64), "resnet50": ("regdb", 288, 144)}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_extract(arch: str, n_images: int, batch: int, folder: str) -> float:
    from dmdl.config import load_config
    from dmdl.inference._bridge import fresh_model
    from dmdl.inference.extractor import FeatureExtractor

    preset, h, w = PRESETS[arch]
    config = load_config(preset, ["--height", str(h), "--width", str(w), "--pretrained", "none"]).to_dict()
    ckpt = os.path.join(folder, f"{arch}.pth")
    torch.save({"model": fresh_model(config).state_dict(), "config": config}, ckpt)
    fx = FeatureExtractor(ckpt, batch_size=batch)
    images = sorted(os.path.join(folder, "images", n) for n in os.listdir(os.path.join(folder, "images")))
    fx.extract(images[:batch], "visible")  # warm-up
    t = time.perf_counter()
    out = fx.extract(images[:n_images], "visible")
    dt = time.perf_counter() - t
    assert out.features.shape[0] == n_images
    return n_images / dt


def make_images(folder: str, n: int) -> None:
    from PIL import Image

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 255, (256, 128, 3), dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(folder, "images", f"{i:05d}.jpg"), quality=90)


def clustered(n: int, d: int, ids: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(ids, d, generator=g), dim=1)
    x = centers[torch.randint(0, ids, (n,), generator=g)] + 0.7 * torch.randn(n, d, generator=g) / d ** 0.5
    return F.normalize(x, dim=1)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_search(gallery: int, queries: int, d: int, repeats: int, rerank_repeats: int) -> tuple[float, float]:
    from dmdl.inference.search import k_reciprocal_distances, rank_gallery, squared_distances

    g = clustered(gallery, d, 1000, 0)
    q = clustered(queries, d, 1000, 1)
    plain = timed(lambda: rank_gallery(squared_distances(q, g), 10), repeats)
    rr = timed(lambda: rank_gallery(k_reciprocal_distances(q, g, k1=20, k2=6, lam=0.3), 10), rerank_repeats)
    return plain, rr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("extract", "search", "both"), default="both")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--archs", nargs="+", default=["mobilenet_v2", "resnet50"], choices=sorted(PRESETS))
    ap.add_argument("--gallery", type=int, default=10_000)
    ap.add_argument("--queries", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rerank-repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")
    if args.part in ("extract", "both"):
        with tempfile.TemporaryDirectory() as folder:
            make_images(folder, args.images + args.batch)
            for arch in args.archs:
                rate = bench_extract(arch, args.images, args.batch, folder)
                _, h, w = PRESETS[arch]
                print(f"extract {arch} {h}x{w}: {rate:.1f} images/s ({args.images} JPEGs 128x256, batch "
                      f"{args.batch}, flip averaged)")
    if args.part in ("search", "both"):
        for nq in args.queries:
            plain, rr = bench_search(args.gallery, nq, args.dim, args.repeats, args.rerank_repeats)
            print(f"search {nq} quer{'y' if nq == 1 else 'ies'} x {args.gallery} gallery (D {args.dim}, synthetic): "
                  f"{1000 * plain:.1f} ms; with --rerank (k1 20, k2 6): {rr:.2f} s")


if __name__ == "__main__":
    main()
