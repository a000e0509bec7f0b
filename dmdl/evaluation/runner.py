"""Evaluate a model on a dataset's test protocol (docs/dmdl.md#A11, docs/datasets.md).

Features: ``normalize((model(x) + model(flip(x))) / 2)`` with ``model`` in
eval mode (already L2-normalised); distance = ``-q @ g.T`` (negative cosine).
Metrics: Rank-1/5/10/20, mAP and mINP in percent.

- RegDB: visible->thermal and thermal->visible on the trial's test split.
- SYSU-MM01: all-search and indoor-search, single-shot, mean over the 10
  seeded gallery draws (trials 0..9).
- LLCM: IR->VIS and VIS->IR, mean over the 10 seeded gallery draws.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from dmdl.data.records import ImageRecord
from dmdl.data.registry import DATASETS, get_dataset
from dmdl.features import extract_features

RANKS = (1, 5, 10, 20)
METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def _summary(cmc: np.ndarray, mAP: float, mINP: float) -> dict[str, float]:
    res = {f"rank{r}": float(cmc[r - 1]) * 100 for r in RANKS if r <= len(cmc)}
    res["mAP"] = float(mAP) * 100
    res["mINP"] = float(mINP) * 100
    return res


def _mean(results: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]}


class _FeatureBank:
    """Features of a record list, looked up by path."""

    def __init__(self, feats: torch.Tensor, records: Sequence[ImageRecord]):
        self.feats = feats
        self.index = {r.path: i for i, r in enumerate(records)}

    def take(self, records: Sequence[ImageRecord]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        idx = torch.tensor([self.index[r.path] for r in records], dtype=torch.long)
        pids = np.array([r.pid for r in records], dtype=np.int64)
        cams = np.array([r.camid for r in records], dtype=np.int64)
        return self.feats[idx.to(self.feats.device)], pids, cams


def _distmat(q: torch.Tensor, g: torch.Tensor) -> np.ndarray:
    return (-(q @ g.t())).cpu().numpy()


def evaluate_model(model: nn.Module, dataset_name: str, dataset, height: int, width: int,
                   device: torch.device | str = "cpu", workers: int = 0, batch_size: int = 64,
                   num_trials: int | None = None, interpolation: str = "bicubic",
                   extract=extract_features) -> dict[str, dict]:
    """Run the dataset's full test protocol (its :mod:`dmdl.data.registry` entry).

    Args:
        dataset_name: a registered dataset (``"regdb"``, ``"sysu"``, ``"llcm"``).
        dataset: the matching reader (``RegDB``, ``SYSUMM01``, ``LLCM``).
        model: one-stream, or two-stream (visible test images through the
            visible stem, infrared ones through the infrared stem).
        num_trials: gallery draws per setting where the protocol draws galleries (default: the
            registry's, 10 for SYSU and LLCM as in every paper).
        interpolation: the test images' resize (``Config.resize()``: DMDL bicubic, MULT bilinear).
        extract: the feature extractor, :func:`dmdl.features.extract_features` or one with its
            signature (a distributed run's: each rank a shard, all-gathered).

    Returns:
        ``{setting: {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}}`` in
        percent; settings ``v2t``/``t2v`` (RegDB), ``all``/``indoor`` (SYSU),
        ``ir2vis``/``vis2ir`` (LLCM). With gallery draws, the values are means over the
        draws and ``"per_trial"`` holds each draw's numbers.

    Raises:
        ValueError: unknown dataset name.
    """
    info = get_dataset(dataset_name)
    kw = dict(height=height, width=width, device=device, workers=workers, batch_size=batch_size,
              interpolation=interpolation)
    vis, ir = dataset.test_visible, dataset.test_infrared
    # each modality through its own stem when the model is two-stream (docs/mult.md#B6)
    bank_v = _FeatureBank(extract(model, [r.path for r in vis], desc="test visible", modality="visible", **kw), vis)
    bank_i = _FeatureBank(extract(model, [r.path for r in ir], desc="test infrared", modality="infrared", **kw), ir)
    banks = {"visible": bank_v, "infrared": bank_i}
    query_gallery, metric = info.load("query_gallery"), info.load("metric")

    def run(query, gallery):
        qf, qp, qc = banks[query[0].modality].take(query)
        gf, gp, gc = banks[gallery[0].modality].take(gallery)
        dist = _distmat(qf, gf)
        return _summary(*(metric(dist, qp, gp, qc, gc) if info.cameras else metric(dist, qp, gp)))

    results: dict[str, dict] = {}
    if not info.gallery_draws:
        for setting in info.settings:
            results[setting] = run(*query_gallery(dataset, setting))
        return results
    draws = info.gallery_draws if num_trials is None else num_trials
    per_trial: dict[str, list] = {}
    for setting in info.settings:
        per_trial[setting] = [run(*query_gallery(dataset, setting, t)) for t in range(draws)]
        results[setting] = _mean(per_trial[setting])
    results["per_trial"] = per_trial
    return results


#: a setting's name in tables, from the dataset registry
SETTING_NAMES = {k: v for info in DATASETS.values() for k, v in info.setting_titles.items()}


def format_table(results: dict[str, dict[str, dict]]) -> str:
    """A text table: one row per (model, setting), Rank-1/5/10/20, mAP, mINP in %.

    Args:
        results: ``{"untrained": evaluate_model(...), "trained": ...}`` (any labels).
    """
    header = f"{'model':<10} {'setting':<18}" + "".join(f"{k:>8}" for k in METRIC_KEYS)
    lines = [header, "-" * len(header)]
    for label, res in results.items():
        for setting, vals in res.items():
            if setting == "per_trial":
                continue
            name = SETTING_NAMES.get(setting, setting)
            lines.append(f"{label:<10} {name:<18}" + "".join(f"{vals[k]:>8.2f}" for k in METRIC_KEYS))
    return "\n".join(lines)
