"""Merges JSON files of bench/bench_train_step.py (repeated runs on a shared machine) and prints its
table with, for every row, the run in which that row was fastest: a step row (step, its interleaved
bare backbone, ratio and split) from the run with the smallest step minimum, an epoch row from the run
with the shortest epoch.

    python bench/summarize_train_step.py run1.json run2.json run3.json
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train_step import format_report  # noqa: E402


def merge(runs: list[dict]) -> dict:
    """One result dict of the fastest run of every row (the machine of the first run, with every
    run's load averages); raises ValueError when the runs differ in CPU, threads or sizes."""
    keys = ("cpu", "capability", "threads", "iterations", "rounds", "data", "images_per_modality")
    first = runs[0]["machine"]
    for run in runs[1:]:
        diff = [k for k in keys if run["machine"].get(k) != first.get(k)]
        if diff:
            raise ValueError(f"the runs differ in {', '.join(diff)}: merge only runs of one setting")
    merged = {"machine": dict(first, load_averages=[(r["machine"]["load_average_start"],
                                                     r["machine"]["load_average_end"]) for r in runs]),
              "step": {}, "epoch": {}}
    for part, speed in (("step", lambda r: r["min"]), ("epoch", lambda r: r["seconds"]["total"])):
        for key in dict.fromkeys(k for run in runs for k in run[part]):
            merged[part][key] = min((run[part][key] for run in runs if key in run[part]), key=speed)
    return merged


def main(paths: list[str]) -> None:
    if not paths:
        raise SystemExit("usage: python bench/summarize_train_step.py RUN.json [RUN.json ...]")
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    print(format_report(merge(runs)))


if __name__ == "__main__":
    main(sys.argv[1:])
