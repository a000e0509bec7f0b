"""Runs over several RegDB trials: one model per trial (each trained and tested on its own
split), then the mean, as the papers report RegDB ("ten trials"; docs/datasets.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from dmdl.config import Config
from dmdl.data.registry import get_dataset
from dmdl.engine import Engine
from dmdl.evaluation.runner import METRIC_KEYS
from dmdl.rundir import CHECKPOINT_NAME, CONFIG_NAME, RESULTS_NAME, TRIALS_NAME, TRIALS_RESULTS_NAME, trial_dir


def train_trials(cfg: Config, trials: Sequence[int], method: type) -> dict:
    """One model per trial, then the mean.

    Runs go to ``<output_dir>/trial<T>``; ``<output_dir>/results_trials.json`` holds every trial's
    metrics and the mean over the trials (percent). With ``run.resume`` (the trial-list directory),
    finished trials are read back and an interrupted one continues from its checkpoint.

    Args:
        method: the method class (``dmdl.methods.get_method(cfg)``).

    Returns:
        ``{"trials": {T: {"untrained": ..., "trained": ...}}, "mean": {...}}``.

    Raises:
        ValueError: the dataset has no trials.
    """
    if not get_dataset(cfg.data.dataset).trials:
        raise ValueError(f"--trial all / a trial list is for RegDB; the config's dataset is {cfg.data.dataset!r}")
    root = Path(cfg.run.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    # what `dmdl train --resume ROOT` reads back: the config and the trial list
    (root / CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2))
    (root / TRIALS_NAME).write_text(json.dumps({"trials": list(trials)}))
    per_trial: dict[int, dict] = {}
    for t in trials:
        print(f"===== RegDB trial {t} =====", flush=True)
        resume = None if cfg.run.resume is None else trial_dir(cfg.run.resume, t)
        if resume is not None and not (resume / CHECKPOINT_NAME).is_file():
            resume = None
        sub = cfg.replace(trial=t, output_dir=str(trial_dir(root, t)), resume=None if resume is None else str(resume))
        if (trial_dir(root, t) / RESULTS_NAME).is_file() and cfg.run.resume is not None:
            per_trial[t] = json.loads((trial_dir(root, t) / RESULTS_NAME).read_text())["results"]
            continue
        res = Engine(sub, method).run()
        per_trial[t] = {k: res[k] for k in ("untrained", "trained") if k in res}
    mean: dict[str, dict] = {}
    for model in ("untrained", "trained"):
        runs = [r[model] for r in per_trial.values() if model in r]
        if runs:
            mean[model] = {s: {k: float(np.mean([r[s][k] for r in runs])) for k in METRIC_KEYS}
                           for s in get_dataset(cfg.data.dataset).settings}
    print(format_trials(per_trial, mean))
    summary = {"units": "percent", "trials": per_trial, "mean": mean, "config": cfg.to_dict()}
    (root / TRIALS_RESULTS_NAME).write_text(json.dumps(summary, indent=2))
    print(f"results: {root / TRIALS_RESULTS_NAME}", flush=True)
    return {"trials": per_trial, "mean": mean}


def format_trials(per_trial: dict[int, dict], mean: dict[str, dict]) -> str:
    """Per-trial rows of the trained model and the mean row, V->T and T->V."""
    head = f"{'trial':<7}{'model':<10}" + "".join(f"{'V->T ' + k:>12}" for k in ("rank1", "mAP", "mINP")) + \
        "".join(f"{'T->V ' + k:>12}" for k in ("rank1", "mAP", "mINP"))
    lines = [head, "-" * len(head)]
    rows = [(str(t), r) for t, r in per_trial.items()] + [("mean", mean)]
    for name, res in rows:
        for model in ("untrained", "trained"):
            if model not in res:
                continue
            v = res[model]
            lines.append(f"{name:<7}{model:<10}" + "".join(f"{v['v2t'][k]:>12.2f}" for k in ("rank1", "mAP", "mINP"))
                         + "".join(f"{v['t2v'][k]:>12.2f}" for k in ("rank1", "mAP", "mINP")))
    return "\n".join(lines)


__all__ = ["train_trials", "format_trials"]
