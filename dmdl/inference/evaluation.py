"""The test protocol with what ``dmdl evaluate`` adds: k-reciprocal re-ranking, the CMC curves
and a rank-list sheet of sample queries.

:func:`evaluate_protocol` extracts the test features once (as
:func:`dmdl.evaluation.runner.evaluate_model` does: visible and infrared through their stems,
flip-averaged, distance ``-q.g``) and gives the same numbers as ``evaluate_model``, plus the
full CMC curves (Rank-1..20) and, with ``rerank``, the numbers and curves of the re-ranked
distances (:func:`~dmdl.inference.search.k_reciprocal_distances`, applied per direction /
mode and gallery draw). :func:`evaluate_and_draw` writes the pictures beside the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ._bridge import METRIC_KEYS, extract_features, protocol_draws_galleries, protocol_metric, protocol_settings
from .search import RERANK_DEFAULTS, k_reciprocal_distances

MAX_RANK = 20
SAMPLE_QUERIES = 6
SAMPLE_TOPK = 10


@dataclass
class ProtocolOutput:
    """What :func:`evaluate_protocol` returns.

    Attributes:
        results: ``{setting: {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}}`` in percent,
            as :func:`~dmdl.evaluation.runner.evaluate_model` (``"per_trial"`` for SYSU / LLCM).
        reranked: the same with re-ranking (None without).
        cmc, cmc_reranked: ``{setting: [Rank-1, ..., Rank-20]}`` fractions (means over the
            gallery draws for SYSU / LLCM).
        samples: ``{setting: [(query record, [(gallery record, distance), ...]), ...]}``: sample
            queries (evenly spaced over the query list, first gallery draw) and their top
            gallery images by the plain distance, given as ``2 - 2 q.g`` (as ``dmdl search``).
    """

    results: Dict[str, dict]
    reranked: Optional[Dict[str, dict]] = None
    cmc: Dict[str, list] = field(default_factory=dict)
    cmc_reranked: Dict[str, list] = field(default_factory=dict)
    samples: Dict[str, list] = field(default_factory=dict)


def _summary(cmc: np.ndarray, mAP: float, mINP: float) -> dict:
    res = {k: float(cmc[int(k[4:]) - 1]) * 100 for k in METRIC_KEYS if k.startswith("rank")}
    res["mAP"], res["mINP"] = float(mAP) * 100, float(mINP) * 100
    return res


def _samples(dist: np.ndarray, q, g, count: int, topk: int) -> list:
    picks = np.unique(np.linspace(0, len(q) - 1, num=min(count, len(q))).round().astype(int))
    out = []
    for i in picks:
        order = np.argsort(dist[i], kind="stable")[:topk]
        out.append((q[i], [(g[j], 2.0 + 2.0 * float(dist[i, j])) for j in order]))  # -q.g -> 2 - 2 q.g
    return out


def evaluate_protocol(model, dataset_name: str, dataset, height: int, width: int, device="cpu",
                      workers: int = 0, batch_size: int = 64, num_trials: int = 10,
                      rerank: Optional[dict] = None, interpolation: str = "bicubic") -> ProtocolOutput:
    """The dataset's test protocol on ``model`` (see the module docstring).

    Args:
        model: one- or two-stream, in any mode (evaluated in eval mode).
        dataset_name, dataset: ``"regdb"`` / ``"sysu"`` / ``"llcm"`` and its reader.
        rerank: None, or ``{"k1", "k2", "lam"}`` for
            :func:`~dmdl.inference.search.k_reciprocal_distances` (``{}``: the paper's values).
        interpolation: the test images' resize (the checkpoint's ``Config.resize()``).

    Raises:
        ValueError: unknown dataset; what the metric functions raise.
        InputError: re-ranking parameters out of range.
    """
    settings = protocol_settings(dataset_name, dataset, num_trials)
    kw = dict(height=height, width=width, device=device, workers=workers, batch_size=batch_size,
              interpolation=interpolation)
    banks = {}
    for m in ("visible", "infrared"):
        recs = getattr(dataset, f"test_{m}")
        feats = extract_features(model, [r.path for r in recs], desc=f"test {m}", modality=m, **kw)
        banks[m] = (feats, {r.path: i for i, r in enumerate(recs)})

    def take(recs):
        feats, index = banks[recs[0].modality]
        return feats[torch.tensor([index[r.path] for r in recs], device=feats.device)]

    rr = None if rerank is None else {**RERANK_DEFAULTS, **rerank}
    out = ProtocolOutput(results={}, reranked={} if rr is not None else None)
    per_trial: Dict[str, list] = {}
    for setting, draws in settings:
        plain, ranked, curves, curves_rr = [], [], [], []
        for t, (q, g) in enumerate(draws):
            qf, gf = take(q), take(g)
            dist = (-(qf @ gf.t())).cpu().numpy()
            cmc, mAP, mINP = protocol_metric(dataset_name, dist, q, g, MAX_RANK)
            plain.append(_summary(cmc, mAP, mINP))
            curves.append(cmc)
            if t == 0:
                out.samples[setting] = _samples(dist, q, g, SAMPLE_QUERIES, SAMPLE_TOPK)
            if rr is not None:
                d_rr = k_reciprocal_distances(qf.float(), gf.float(), **rr).cpu().numpy()
                cmc, mAP, mINP = protocol_metric(dataset_name, d_rr, q, g, MAX_RANK)
                ranked.append(_summary(cmc, mAP, mINP))
                curves_rr.append(cmc)
        out.results[setting] = _mean(plain)
        out.cmc[setting] = np.mean(curves, axis=0).tolist()
        per_trial[setting] = plain
        if rr is not None:
            out.reranked[setting] = _mean(ranked)
            out.cmc_reranked[setting] = np.mean(curves_rr, axis=0).tolist()
    if protocol_draws_galleries(dataset_name):
        out.results["per_trial"] = per_trial
    return out


def _mean(results: List[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]}


def evaluate_and_draw(model, dataset_name: str, dataset, height: int, width: int, trial: int, device, workers: int,
                      out_json, rerank: bool = False, pictures: bool = True, interpolation: str = "bicubic") -> dict:
    """``dmdl evaluate``'s work: :func:`evaluate_protocol` (re-ranked too with ``rerank``, the
    paper's k1 20, k2 6, lambda 0.3), then, with ``pictures``, beside ``out_json``:
    ``cmc_<dataset>_trial<T>.png`` and ``ranklist_<dataset>_trial<T>_<setting>.png`` (a sheet
    of sample queries per setting).

    Returns:
        The payload for the evaluation JSON: ``model`` (the numbers, as ``evaluate_model``),
        ``model_reranked`` and ``rerank`` (with ``rerank``), ``cmc`` / ``cmc_reranked`` (curves)
        and ``pictures`` (file names, relative to the JSON's folder).
    """
    from dmdl.visualization.curves import plot_cmc
    from dmdl.visualization.ranklist import Entry, draw_sheet

    res = evaluate_protocol(model, dataset_name, dataset, height, width, device, workers=workers,
                            rerank={} if rerank else None, interpolation=interpolation)
    payload: dict = {"model": res.results, "cmc": res.cmc}
    if rerank:
        rr = RERANK_DEFAULTS
        payload.update(model_reranked=res.reranked, cmc_reranked=res.cmc_reranked,
                       rerank={"k1": rr["k1"], "k2": rr["k2"], "lambda": rr["lam"]})
    if not pictures:
        return payload
    folder, tag = Path(out_json).parent, f"{dataset_name}_trial{trial}"
    names = [plot_cmc(res.cmc, folder / f"cmc_{tag}.png", title=f"CMC: {tag}",
                      reranked=res.cmc_reranked or None).name]
    for setting, rows in res.samples.items():
        entries = [(Entry(q.path, q.modality, q.pid), [Entry(g.path, g.modality, g.pid, d) for g, d in ranked])
                   for q, ranked in rows]
        sheet = draw_sheet(entries, f"{tag} {setting}: sample queries and their top {SAMPLE_TOPK} "
                           "(distance 2 - 2 cos)")
        path = folder / f"ranklist_{tag}_{setting}.png"
        sheet.save(path, format="PNG")
        names.append(path.name)
    payload["pictures"] = names
    return payload
