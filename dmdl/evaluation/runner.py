"""Evaluate a model on a dataset's test protocol (algorithm.md §A11, datasets.md).

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
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dmdl.data.loading import ImageListDataset
from dmdl.data.records import ImageRecord
from dmdl.data.transforms import flip_width, test_transform
from dmdl.evaluation.metrics import eval_llcm, eval_regdb, eval_sysu
from dmdl.evaluation import protocols

RANKS = (1, 5, 10, 20)
METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


@torch.no_grad()
def extract_features(
    model: nn.Module,
    paths: Sequence[str],
    height: int,
    width: int,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    flip: bool = True,
    renormalize: bool = True,
    desc: str = "extract",
    cache: bool | dict = False,
    modality: str | None = None,
) -> torch.Tensor:
    """Features of a list of images.

    Args:
        model: returns (B, D) features in eval mode.
        paths: N image paths.
        height, width: input size in pixels.
        flip: average with the horizontally flipped image (§A1.2, §A11).
        renormalize: L2-normalise the (flip-averaged) feature.
        cache: decoded-image cache, see :class:`~dmdl.data.loading.ImageListDataset`.
        modality: ``"visible"`` or ``"infrared"``, the modality of all of
            ``paths``. A two-stream model (``model.two_stream`` true,
            :class:`~dmdl.models.TwoStream`, §B2) is called as
            ``model(x, modality)`` so the images go through that modality's
            stem; one-stream models ignore it.

    Returns:
        (N, D) float32 tensor on ``device``.

    Raises:
        ValueError: a two-stream model and no ``modality``; a ``modality``
            other than None, "visible", "infrared"; no image.
    """
    if modality not in (None, "visible", "infrared"):
        raise ValueError(f"{desc}: modality must be 'visible', 'infrared' or None, got {modality!r}")
    if getattr(model, "two_stream", False):
        if modality is None:
            raise ValueError(
                f"{desc}: a two-stream model needs the images' modality ('visible' or "
                f"'infrared') to pick its stem"
            )

        def embed(x: torch.Tensor) -> torch.Tensor:
            return model(x, modality)
    else:
        embed = model
    was_training = model.training
    model.eval()
    ds = ImageListDataset(paths, [-1] * len(paths), test_transform(height, width), cache=cache)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    out = []
    for x, _, _ in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        x = x.to(device, non_blocking=True)
        f = embed(x).float()
        if flip:
            f = (f + embed(flip_width(x)).float()) / 2
        if renormalize:
            f = F.normalize(f, dim=1)
        out.append(f)
    model.train(was_training)
    if not out:
        raise ValueError(f"{desc}: no image to extract features from")
    return torch.cat(out)


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
                   num_trials: int = 10) -> dict[str, dict]:
    """Run the dataset's full test protocol.

    Args:
        dataset_name: ``"regdb"``, ``"sysu"`` or ``"llcm"``.
        dataset: the matching reader (``RegDB``, ``SYSUMM01``, ``LLCM``).
        model: one-stream, or two-stream (visible test images through the
            visible stem, infrared ones through the infrared stem).
        num_trials: gallery draws for SYSU / LLCM (10 in every paper).

    Returns:
        ``{setting: {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}}`` in
        percent; settings ``v2t``/``t2v`` (RegDB), ``all``/``indoor`` (SYSU),
        ``ir2vis``/``vis2ir`` (LLCM). SYSU/LLCM values are means over the
        trials; ``"per_trial"`` holds each draw's numbers.

    Raises:
        ValueError: unknown dataset name.
    """
    if dataset_name not in ("regdb", "sysu", "llcm"):
        raise ValueError(f"unknown dataset {dataset_name!r}; expected regdb, sysu or llcm")
    kw = dict(height=height, width=width, device=device, workers=workers, batch_size=batch_size)
    vis, ir = dataset.test_visible, dataset.test_infrared
    # each modality through its own stem when the model is two-stream (§B6)
    bank_v = _FeatureBank(extract_features(model, [r.path for r in vis], desc="test visible",
                                           modality="visible", **kw), vis)
    bank_i = _FeatureBank(extract_features(model, [r.path for r in ir], desc="test infrared",
                                           modality="infrared", **kw), ir)
    banks = {"visible": bank_v, "infrared": bank_i}

    def run(query, gallery, metric):
        qf, qp, qc = banks[query[0].modality].take(query)
        gf, gp, gc = banks[gallery[0].modality].take(gallery)
        dist = _distmat(qf, gf)
        if metric is eval_regdb:
            return _summary(*eval_regdb(dist, qp, gp))
        return _summary(*metric(dist, qp, gp, qc, gc))

    results: dict[str, dict] = {}
    if dataset_name == "regdb":
        for direction in ("v2t", "t2v"):
            q, g = protocols.regdb_query_gallery(dataset, direction=direction)
            results[direction] = run(q, g, eval_regdb)
    else:
        modes = ("all", "indoor") if dataset_name == "sysu" else ("ir2vis", "vis2ir")
        per_trial: dict[str, list] = {}
        for mode in modes:
            trials = []
            for t in range(num_trials):
                if dataset_name == "sysu":
                    q, g = protocols.sysu_query_gallery(dataset, mode=mode, trial=t)
                    trials.append(run(q, g, eval_sysu))
                else:
                    q, g = protocols.llcm_query_gallery(dataset, mode=mode, trial=t)
                    trials.append(run(q, g, eval_llcm))
            results[mode] = _mean(trials)
            per_trial[mode] = trials
        results["per_trial"] = per_trial
    return results


SETTING_NAMES = {
    "v2t": "Visible->Thermal",
    "t2v": "Thermal->Visible",
    "all": "All-search",
    "indoor": "Indoor-search",
    "ir2vis": "IR->VIS",
    "vis2ir": "VIS->IR",
}


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
