"""Runs of several models: one per RegDB trial (each trained and tested on its own split), as the
papers report RegDB ("ten trials"; docs/docs/datasets.md), and one per seed (``--seeds``: the mean and
spread over runs that differ only in their seed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from dmdl.config import Config
from dmdl.data.registry import get_dataset
from dmdl.engine import Engine
from dmdl.evaluation.runner import METRIC_KEYS
from dmdl.rundir import (CHECKPOINT_NAME, CONFIG_NAME, RESULTS_NAME, SEEDS_NAME, SEEDS_RESULTS_NAME, TRIALS_NAME,
                         TRIALS_RESULTS_NAME, seed_dir, trial_dir)

MODELS = ("untrained", "trained")


def _resume_into(cfg: Config, sub_dir: Path, sub_resume: Path | None) -> Config | None:
    """The config of one sub-run (a trial or a seed) in ``sub_dir``; None when a resumed list already
    finished it (its results are read back)."""
    if cfg.run.resume is not None and (sub_dir / RESULTS_NAME).is_file():
        return None
    resume = sub_resume if sub_resume is not None and (sub_resume / CHECKPOINT_NAME).is_file() else None
    return cfg.replace(output_dir=str(sub_dir), resume=None if resume is None else str(resume))


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
        sub = _resume_into(cfg.replace(trial=t), trial_dir(root, t), resume)
        if sub is None:
            per_trial[t] = json.loads((trial_dir(root, t) / RESULTS_NAME).read_text())["results"]
            continue
        res = Engine(sub, method).run()
        per_trial[t] = {k: res[k] for k in MODELS if k in res}
    settings = get_dataset(cfg.data.dataset).settings
    mean = {model: _stat(np.mean, [r[model] for r in per_trial.values() if model in r], settings)
            for model in MODELS if any(model in r for r in per_trial.values())}
    print(format_rows([(str(t), r) for t, r in per_trial.items()] + [("mean", mean)], settings))
    summary = {"units": "percent", "trials": per_trial, "mean": mean, "config": cfg.to_dict()}
    (root / TRIALS_RESULTS_NAME).write_text(json.dumps(summary, indent=2))
    print(f"results: {root / TRIALS_RESULTS_NAME}", flush=True)
    return {"trials": per_trial, "mean": mean}


def train_seeds(cfg: Config, seeds: Sequence[int], method: type, trials: Sequence[int] | None = None) -> dict:
    """One model (or one trial list) per seed, then the mean and the standard deviation over seeds.

    Runs go to ``<output_dir>/seed<S>`` (each a run directory, or a trial-list directory with
    ``trials``); ``<output_dir>/results_seeds.json`` holds each seed's metrics (a trial list's mean
    over its trials), their mean and their sample standard deviation (ddof 1; 0 for one seed), in
    percent. With ``run.resume`` (the seed-list directory) finished seeds are read back and an
    interrupted one continues.

    Returns:
        ``{"seeds": {S: {"untrained": ..., "trained": ...}}, "mean": {...}, "std": {...}}``.
    """
    root = Path(cfg.run.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2))
    listed = {"seeds": list(seeds), "trials": None if trials is None else list(trials)}
    (root / SEEDS_NAME).write_text(json.dumps(listed))
    per_seed: dict[int, dict] = {}
    for s in seeds:
        print(f"===== seed {s} =====", flush=True)
        resume = None if cfg.run.resume is None else seed_dir(cfg.run.resume, s)
        if trials is not None:
            sub = cfg.replace(seed=s, output_dir=str(seed_dir(root, s)), resume=None if resume is None else str(resume))
            per_seed[s] = {k: v for k, v in train_trials(sub, trials, method)["mean"].items()}
            continue
        sub = _resume_into(cfg.replace(seed=s), seed_dir(root, s), resume)
        if sub is None:
            res = json.loads((seed_dir(root, s) / RESULTS_NAME).read_text())["results"]
        else:
            res = Engine(sub, method).run()
        per_seed[s] = {k: res[k] for k in MODELS if k in res}
    settings = get_dataset(cfg.data.dataset).settings
    runs = {model: [r[model] for r in per_seed.values() if model in r] for model in MODELS}
    mean = {model: _stat(np.mean, rs, settings) for model, rs in runs.items() if rs}
    std = {model: _stat(lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0, rs, settings)
           for model, rs in runs.items() if rs}
    print(format_rows([(f"seed {s}", r) for s, r in per_seed.items()] + [("mean", mean), ("std", std)], settings))
    summary = {"units": "percent", "seeds": per_seed, "mean": mean, "std": std, "std_ddof": 1,
               "config": cfg.to_dict()}
    (root / SEEDS_RESULTS_NAME).write_text(json.dumps(summary, indent=2))
    print(f"results: {root / SEEDS_RESULTS_NAME}", flush=True)
    return {"seeds": per_seed, "mean": mean, "std": std}


def _stat(fn, runs: list[dict], settings: Sequence[str]) -> dict:
    """``fn`` over the runs of each (setting, metric)."""
    return {s: {k: float(fn([r[s][k] for r in runs])) for k in METRIC_KEYS} for s in settings}


def format_rows(rows: list[tuple[str, dict]], settings: Sequence[str]) -> str:
    """A table of Rank-1 / mAP / mINP per setting: one line per (row, model) of ``rows``
    (``(name, {"untrained": {setting: metrics}, "trained": ...})``)."""
    keys = ("rank1", "mAP", "mINP")
    head = f"{'run':<9}{'model':<10}" + "".join(f"{s + ' ' + k:>14}" for s in settings for k in keys)
    lines = [head, "-" * len(head)]
    for name, res in rows:
        for model in MODELS:
            if model in res:
                lines.append(f"{name:<9}{model:<10}" + "".join(f"{res[model][s][k]:>14.2f}"
                                                              for s in settings for k in keys))
    return "\n".join(lines)


__all__ = ["train_trials", "train_seeds", "format_rows"]
