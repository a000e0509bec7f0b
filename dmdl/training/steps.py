"""The pieces of an epoch that both methods share: the epoch seed, the per-modality clustering
loop with its guard, the forward pass of a training batch, the optimiser step, the step loop.

Data flow of one epoch (each method composes these): images -> features
(:meth:`RunContext.features`) -> Jaccard -> DBSCAN (:func:`cluster_modalities`) -> association
-> memories -> losses (the method's) -> :func:`optimizer_step`, for every batch of
:func:`run_steps`.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from dmdl.config import ClusteringConfig
from dmdl.guards import check_clustering, require_finite_loss
from dmdl.memories import ReadTape
from dmdl.modalities import MODALITIES
from dmdl.models.ghost_bn import replica_forward, replica_order
from dmdl.progress import progress
from dmdl.pseudo_labels import NoClustersError, cluster_features, ground_truth_labels
from dmdl.training.context import RunContext


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """The seed of one epoch's samplers: distinct for every (run seed, stage, epoch), and the same
    on a resumed run."""
    return seed * 100003 + stage * 1000 + epoch


class PhaseClock:
    """Seconds spent in the phases of an epoch, as log fields: each :meth:`lap` ends a phase
    (``features``, ``clustering``, ``training``) and records ``seconds_<phase>``."""

    def __init__(self):
        self.stats: dict[str, float] = {}
        self._t = time.time()

    def lap(self, phase: str) -> None:
        now = time.time()
        self.stats[f"seconds_{phase}"] = round(now - self._t, 1)
        self._t = now


def clustering_features(ctx: RunContext, clustering: ClusteringConfig, stage: int) -> dict[str, Tensor]:
    """Both modalities' training features for clustering in ``stage``: flip-averaged per
    ``feature_flip``, L2-renormalised per ``renormalize`` (see :meth:`RunContext.features`)."""
    return {m: ctx.features(m, renormalize=clustering.renormalized(stage), flip=clustering.feature_flip)
            for m in MODALITIES}


def cluster_modalities(ctx: RunContext, features: Mapping[str, Tensor], clustering: ClusteringConfig, where: str,
                       k1: Mapping[str, int] | None = None, keep_distance: bool = False) -> tuple[dict, dict, dict]:
    """k-reciprocal Jaccard + DBSCAN on each modality's features, with the guard on the result
    (docs/dmdl.md#A1.2, #A9; :func:`dmdl.guards.check_clustering`).

    Args:
        features: ``{"visible": (N_V, D), "infrared": (N_I, D)}`` float features (already
            normalised as the method wants: no renormalisation here).
        clustering: k1, k2, eps, min_samples and the guard's limits.
        where: the moment, for messages (``"stage 1 epoch 3"``).
        k1: per-modality k1 (DMDL's ``k1_mapped``); default ``clustering.k1`` for both.
        keep_distance: also return the sparse Jaccard distances (MULT's label transfer reads them).

    Returns:
        (labels, distances, stats): ``labels[m]`` (N_m,) int64 NumPy, -1 outliers;
        ``distances[m]`` the torch sparse CSR (only with ``keep_distance``); ``stats`` the log
        fields ``clusters_<m>``, ``outliers_<m>``, ``ari_<m>``.

    With ``clustering.labels: ground-truth`` the true identities replace the clusters (renumbered
    per modality, :func:`dmdl.pseudo_labels.ground_truth_labels`; no distances, ARI 1).

    Raises:
        TrainingError: no cluster, or fewer than ``clustering.min_clusters``, in a modality.
    """
    labels, dists, stats = {}, {}, {}
    if clustering.labels == "ground-truth":
        for m in MODALITIES:
            labels[m], dists[m] = ground_truth_labels([r.pid for r in ctx.train[m]]), None
            stats.update({f"clusters_{m}": int(labels[m].max() + 1), f"outliers_{m}": 0,
                          f"ari_{m}": ctx.label_quality((m,), labels[m])})
        return labels, dists, stats
    for m in MODALITIES:
        k = (k1 or {}).get(m, clustering.k1)
        try:
            out = cluster_features(features[m], k1=k, k2=clustering.k2, eps=clustering.eps,
                                   min_samples=clustering.min_samples, renormalize=False,
                                   name=f"{m} training features", return_distance=keep_distance)
            labels[m], dists[m] = out if keep_distance else (out, None)
        except NoClustersError:
            labels[m] = np.full(len(features[m]), -1, dtype=np.int64)  # the guard says what to do
        warning = check_clustering(labels[m], what=f"{m} training images", where=where, eps=clustering.eps, k1=k,
                                   min_samples=clustering.min_samples, min_clusters=clustering.min_clusters,
                                   max_outlier_share=clustering.max_outlier_share)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        stats[f"clusters_{m}"] = int(labels[m].max() + 1)
        stats[f"outliers_{m}"] = int((labels[m] < 0).sum())
        stats[f"ari_{m}"] = ctx.label_quality((m,), labels[m])
    return labels, dists, stats


def forward_views(ctx: RunContext, views: list[Tensor], infrared: Tensor) -> Tensor:
    """The model on one training batch: rows concatenated in the order of ``views``, each row
    through its modality's stem when the model is two-stream (docs/mult.md#B2), laid out in the reference's
    DataParallel replica order when the model has ghost BatchNorm groups (so that every group
    sees what one of its replicas saw), in the model's memory format, under the run's autocast
    (:meth:`RunContext.autocast`).

    Args:
        views: image batches (B_i, 3, H, W) on any device, concatenated in this order.
        infrared: (sum B_i,) bool, True for the infrared rows (in the same order).

    Returns:
        (sum B_i, D) float32 features, rows in the order of ``views`` (the replica permutation
        undone).
    """
    if ctx.dist.enabled:
        return _forward_rank_block(ctx, torch.cat(views), infrared)
    x = torch.cat(views).to(ctx.device, non_blocking=True)
    if ctx.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    infrared = infrared.to(ctx.device)
    perm = None
    if ctx.bn_groups > 1:  # the reference's DataParallel replica layout (dmdl.models.ghost_bn)
        perm = replica_order(infrared, ctx.bn_groups)
        x, infrared = x[perm], infrared[perm]
    args = (infrared,) if getattr(ctx.model, "two_stream", False) else ()
    with ctx.autocast():
        out = replica_forward(ctx.model, x, ctx.bn_groups, *args)
    out = out.float()
    return out if perm is None else out[torch.argsort(perm)]


def _forward_rank_block(ctx: RunContext, x: Tensor, infrared: Tensor) -> Tensor:
    """:func:`forward_views` in a distributed run: the global batch in the replica layout of
    ``ctx.layout`` chunks, this rank's block of them through the DDP model, the blocks all-gathered
    with their gradients, the layout undone: every rank holds the one-process features."""
    perm = replica_order(infrared, ctx.layout)
    rows = x.shape[0] // ctx.dist.world_size
    mine = perm[ctx.dist.rank * rows:(ctx.dist.rank + 1) * rows]
    block = x[mine].to(ctx.device, non_blocking=True)
    if ctx.channels_last:
        block = block.contiguous(memory_format=torch.channels_last)
    args = (infrared[mine].to(ctx.device),) if getattr(ctx.model, "two_stream", False) else ()
    with ctx.autocast():  # this rank's BatchNorm groups, as one process runs them (a Replicas module in DDP)
        out = ctx.train_model(block, *args)
    out = ctx.dist.gather_with_grad(out.float())
    return out[torch.argsort(perm.to(out.device))]


def optimizer_step(ctx: RunContext, loss: Tensor, where: str, tape: ReadTape | None = None) -> None:
    """One optimiser step on ``loss`` through the gradient scaler (zero grad, backward, step,
    scaler update). With a ``tape`` (the released memory semantics), the backward is the tape's
    :meth:`~dmdl.memories.ReadTape.objective` (which also updates the read memories, last read first).

    Raises:
        FloatingPointError: the loss is NaN or infinite (``where`` names the moment); nothing is
            stepped or updated.
    """
    require_finite_loss(loss, where)
    objective = loss if tape is None else tape.objective(loss)
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scaler.scale(objective).backward()
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()


def run_epoch(ctx: RunContext, clustering: ClusteringConfig, stage: int, plan: Callable[[dict], tuple[Any, dict]],
              batches: Callable[[Any], tuple[Iterable, int]], step: Callable[[Any, Any], dict],
              desc: str) -> tuple[Any, dict]:
    """The skeleton of a method's epoch: clustering features (:func:`clustering_features`) ->
    ``plan(features)`` (pseudo-labels, memories: the method's; in a distributed run on rank 0 only,
    then broadcast) -> ``batches(plan)`` (an iterable and its length) -> ``step(plan, batch)`` for
    each batch in training mode (:func:`run_steps`).

    Returns:
        (the plan, the epoch's log fields: the plan's, the mean step results and the seconds of
        each phase, ``seconds_features``, ``seconds_clustering``, ``seconds_training``).

    Raises:
        FloatingPointError: from ``step``, with the iteration named.
    """
    clock = PhaseClock()
    feats = clustering_features(ctx, clustering, stage)
    clock.lap("features")
    the_plan, stats = ctx.dist.share(lambda: plan(feats), ctx.device)  # rank 0 only, then broadcast
    clock.lap("clustering")
    it, total = batches(the_plan)
    ctx.model.train()
    stats.update(run_steps(it, total, lambda b: step(the_plan, b), desc))
    clock.lap("training")
    stats.update(clock.stats)
    stats.update(ctx.dist.epoch_seconds())  # several processes: seconds_communication, seconds_waiting
    return the_plan, stats


def run_steps(batches: Iterable, total: int, step: Callable[[Any], dict], desc: str) -> dict:
    """The training steps of one epoch: ``step(batch)`` on each of ``total`` batches (a progress
    bar on a terminal shows the loss), a non-finite loss reported with its iteration.

    Returns:
        The mean over the steps of every float ``step`` returns (``loss`` and its parts).

    Raises:
        FloatingPointError: from ``step``, with ``iteration i/total`` prepended.
    """
    sums: dict[str, float] = {}
    bar = progress(batches, total=total, desc=desc)
    for it, batch in enumerate(bar):
        try:
            parts = step(batch)
        except FloatingPointError as exc:  # name the iteration too
            raise FloatingPointError(f"iteration {it + 1}/{total} of {exc}") from None
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix(loss=f"{parts['loss']:.3f}")
    return {k: v / max(total, 1) for k, v in sums.items()}


__all__ = ["epoch_seed", "PhaseClock", "clustering_features", "cluster_modalities", "forward_views", "optimizer_step",
           "run_epoch", "run_steps"]
