"""Benchmark: the CPU speed options of a training run (issue 19) on the preset's own model and batch:
float32 against bf16 autocast (``amp: bf16``, what ``amp: auto`` picks on a CPU with native bf16),
each in the default memory layout and in channels_last (``channels_last: true``).

For each of the four settings, in the same process on the same weights and the same input tensor:

* ``train``   — one training forward + backward of the backbone on a batch of the preset's size
  (``regdb-cpu``: 4 pseudo-ids x 8 images x 2 views x 2 modalities = 128 images of 128 x 64), the
  gradients zeroed before it as the optimiser step does; the backbone is 98-99 % of a training step
  (bench_train_step.py), so this is the part the options can speed up;
* ``extract`` — the evaluation forward under ``torch.no_grad()`` of 256 images (feature extraction,
  which every epoch runs over the whole training set).

The settings are timed in interleaved rounds (round r runs every setting once, in a rotated order),
after one warm-up round, so that a shared machine slows them alike; the table gives the minimum and
the median over the rounds and the speed-up of each setting over float32 in the default layout.
Each setting's extracted features are compared with float32's (largest absolute difference of the
L2-normalised features and the smallest cosine similarity): the layout reorders float sums only
(differences at float32 rounding), bf16 rounds every product to 8 mantissa bits.

The input is random (timings do not depend on the pixel values). No time is asserted.

    python bench/bench_precision.py                       # regdb-cpu, 2 threads, 5 rounds
    python bench/bench_precision.py --threads 1 --rounds 3 --preset regdb-cpu-hour
    python bench/bench_precision.py --json bench/outputs/bench_precision.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
import warnings
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from dmdl.config import load_config
from dmdl.hardware import native_bf16_cpu
from dmdl.models.from_config import build_model_from_config

SETTINGS = [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]  # (precision, channels_last)


def _name(precision: str, channels_last: bool) -> str:
    return precision + (" channels_last" if channels_last else "")


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def _train_step(model, x, precision):
    model.train()
    model.zero_grad(set_to_none=True)
    with _autocast(precision):
        out = model(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    out.float().sum().backward()


def _extract(model, x, precision):
    model.eval()
    with torch.no_grad(), _autocast(precision):
        out = model(x)
    return F.normalize(out.float(), dim=1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="regdb-cpu", help="a preset or YAML file (model, input size, batch)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round (default 5)")
    ap.add_argument("--extract-images", type=int, default=256, help="images of the extraction forward")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds: at least 1")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="AGW: no pretrained weights")  # timings need no weights
    torch.manual_seed(0)
    cfg = load_config(args.preset)
    batch = 2 * 2 * cfg.data.batch_size  # two views of each image, both modalities
    h, w = cfg.data.height, cfg.data.width
    base = build_model_from_config(cfg.model, pretrained="none")
    x_train = torch.randn(batch, 3, h, w)
    x_extract = torch.randn(args.extract_images, 3, h, w)
    models = {}
    for precision, cl in SETTINGS:
        m = build_model_from_config(cfg.model, pretrained="none")
        m.load_state_dict(base.state_dict())
        models[precision, cl] = m.to(memory_format=torch.channels_last) if cl else m
    inputs = {False: (x_train, x_extract),
              True: tuple(x.contiguous(memory_format=torch.channels_last) for x in (x_train, x_extract))}

    times = {(s, part): [] for s in SETTINGS for part in ("train", "extract")}
    feats = {}
    for r in range(args.rounds + 1):  # round 0: warm-up
        order = SETTINGS[r % len(SETTINGS):] + SETTINGS[:r % len(SETTINGS)]
        for s in order:
            precision, cl = s
            xt, xe = inputs[cl]
            t0 = time.perf_counter()
            _train_step(models[s], xt, precision)
            t1 = time.perf_counter()
            f = _extract(models[s], xe, precision)
            t2 = time.perf_counter()
            if r > 0:
                times[s, "train"].append(t1 - t0)
                times[s, "extract"].append(t2 - t1)
            feats[s] = f
    ref = feats["fp32", False]
    rows = []
    for s in SETTINGS:
        row = {"setting": _name(*s)}
        for part in ("train", "extract"):
            t = times[s, part]
            row[part + "_min_s"] = min(t)
            row[part + "_median_s"] = statistics.median(t)
            row[part + "_speedup"] = min(times[SETTINGS[0], part]) / min(t)
        row["max_abs_diff"] = float((feats[s] - ref).abs().max())
        row["min_cosine"] = float((feats[s] * ref).sum(1).min())
        rows.append(row)
    result = {
        "machine": {"cpu": _cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(),
                    "native_bf16": native_bf16_cpu(), "threads": args.threads,
                    "load_average": os.getloadavg(), "torch": torch.__version__},
        "preset": args.preset, "train_batch": [batch, 3, h, w], "extract_batch": [args.extract_images, 3, h, w],
        "rounds": args.rounds, "rows": rows,
    }
    m = result["machine"]
    print(f"{m['cpu']}, capability {m['capability']}, native bf16: {m['native_bf16']}, "
          f"{args.threads} threads, load average {m['load_average'][0]:.2f}; {args.preset}: train batch "
          f"{batch} x 3 x {h} x {w}, extract {args.extract_images}; {args.rounds} rounds")
    print(f"{'setting':20s} {'train min':>10s} {'median':>8s} {'speedup':>8s} {'extract min':>12s} "
          f"{'median':>8s} {'speedup':>8s} {'max|df|':>9s} {'min cos':>8s}")
    for row in rows:
        print(f"{row['setting']:20s} {row['train_min_s']:10.3f} {row['train_median_s']:8.3f} "
              f"{row['train_speedup']:8.2f} {row['extract_min_s']:12.3f} {row['extract_median_s']:8.3f} "
              f"{row['extract_speedup']:8.2f} {row['max_abs_diff']:9.2e} {row['min_cosine']:8.5f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
