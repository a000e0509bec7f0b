"""Checks on a run's intermediate results that stop it, or warn, with the numbers and the knob.

- :func:`check_clustering`: DBSCAN that finds no cluster, fewer than ``min_clusters`` (one
  cluster: every image has the same label, the identity loss is 0 and nothing is learned), or
  leaves more than ``max_outlier_share`` of a modality as outliers (not trained on).
- :func:`require_finite_loss`: stop a step whose loss is NaN or infinite, before anything is updated.
- :func:`non_finite_loss_message`: what to say when the loss is NaN or infinite.
"""

from __future__ import annotations

import numpy as np
import torch

from dmdl.errors import TrainingError


def check_clustering(labels: np.ndarray, *, what: str, where: str, eps: float, k1: int, min_samples: int,
                     min_clusters: int = 2, max_outlier_share: float = 0.5) -> str | None:
    """Check one modality's DBSCAN labels.

    Args:
        labels: (N,) ints, -1 outliers.
        what: the samples, e.g. ``"visible training images"``.
        where: the moment, e.g. ``"stage 1 epoch 3"``.
        eps, k1, min_samples: the clustering's settings (named in the messages).

    Returns:
        A warning line when the outlier share is above ``max_outlier_share``, else None.

    Raises:
        TrainingError: no cluster, or fewer than ``min_clusters``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    clusters = int(labels.max(initial=-1)) + 1
    outliers = int((labels < 0).sum())
    share = outliers / max(n, 1)
    if clusters == 0:
        raise TrainingError(
            f"{where}: DBSCAN found no cluster among the {n} {what}: every image is an outlier, there is "
            f"nothing to train on. Raise --eps (now {eps}) or --k1 (now {k1}), or lower --min-samples "
            f"(now {min_samples}); ImageNet weights (--pretrained imagenet) also give DBSCAN more to work with")
    if clusters < min_clusters:
        raise TrainingError(
            f"{where}: DBSCAN put the {n - outliers} clustered {what} into {clusters} cluster"
            f"{'s' if clusters > 1 else ''} ({outliers} outliers, {share:.0%}): with one label "
            f"the identity loss is 0 and nothing is learned. Lower --eps (now {eps}) or --k1 (now {k1}) to split "
            f"it; --min-clusters 0 goes on anyway")
    if share > max_outlier_share:
        return (f"warning: {where}: DBSCAN left {outliers} of {n} {what} ({share:.0%}) as outliers, in {clusters} "
                f"clusters; outliers are not trained on. Raise --eps (now {eps}) or --k1 (now {k1}) to keep more "
                f"(this warning: --max-outlier-share, now {max_outlier_share})")
    return None


def require_finite_loss(loss: torch.Tensor, where: str | None = None) -> None:
    """Raise before a step's backward when its scalar ``loss`` is NaN or infinite.

    Raises:
        FloatingPointError: ``"[where: ]the loss is nan; lower the learning rate (--lr)"``.
    """
    if not torch.isfinite(loss):
        prefix = f"{where}: " if where else ""
        raise FloatingPointError(f"{prefix}the loss is {loss.item()}; lower the learning rate (--lr)")


def non_finite_loss_message(detail: str, checkpoint: str | None, resume_dir: str, lr: float) -> str:
    """The error for a NaN / inf loss: where it happened, the last good checkpoint, what to do."""
    detail = detail.replace("; lower the learning rate (--lr)", "")  # said below, with the numbers
    if checkpoint is None:
        last = "no checkpoint was written yet (the first epoch did not finish)"
        todo = f"start again with a lower learning rate (--lr, now {lr:g})"
    else:
        last = f"the last good checkpoint is {checkpoint}"
        todo = (f"continue from it with a lower learning rate: dmdl train --resume {resume_dir} "
                f"--lr {lr / 10:g}")
    return f"non-finite loss at {detail}; {last}; {todo}"


__all__ = ["check_clustering", "require_finite_loss", "non_finite_loss_message"]
