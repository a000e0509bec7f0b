"""Batch-hard triplet loss and its λ_tri(e) schedules (docs/dmdl.md#A4.4, #A5.5, #A8).

:func:`triplet_loss` is the AGW/ADCA/DMDL ``TripletLoss`` (Hermans et al. 2017, batch-hard);
:func:`triplet_weight` reads a piecewise-constant schedule, such as DMDL's ``stage1_triplet`` /
``stage2_triplet`` config keys parsed by :func:`dmdl.config.parse_schedule` (their defaults are
the published schedules; the config is their one source).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_floating_matrix

__all__ = ["triplet_loss", "triplet_weight"]


def triplet_loss(features: Tensor, labels: Tensor, margin: float = 0.3) -> Tensor:
    """Batch-hard triplet loss on Euclidean distances of the raw features.

    Source: Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss for Person
    Re-Identification" (batch-hard variant), as computed by the ``TripletLoss`` of the
    AGW/ADCA/DMDL reference code (docs/dmdl.md#A4.4, #A5.5):

    * ``dist_ij = sqrt(clamp(||x_i||² + ||x_j||² - 2 x_i·x_j, min=1e-12))`` on the features
      as given (NOT L2-normalised);
    * hardest positive ``d_ap(i) = max_j dist_ij`` over ``labels[j] == labels[i]``, *including*
      ``j = i`` (as the reference's mask does; ``dist_ii = 1e-6`` after the clamp);
    * hardest negative ``d_an(i) = min_j dist_ij`` over ``labels[j] != labels[i]``;
    * ``loss = mean_i max(0, d_ap(i) - d_an(i) + margin)``, i.e.
      ``nn.MarginRankingLoss(margin)(d_an, d_ap, ones)``.

    Anchors without any negative in the batch (their label is the only one present) are left
    out of the mean; the reference would crash on them (min over an empty set). If no anchor
    has a negative the result is ``features.sum() * 0``: a zero that still has a ``grad_fn``
    so that ``backward`` works (with zero gradients).

    Args:
        features: (B, D) floating tensor, the raw (e.g. BN-neck) features.
        labels: (B,) integer tensor (int64), the (pseudo-)labels; must be >= 0 (outliers,
            label -1, must be removed by the caller).
        margin: the margin (0.3 in DMDL).

    Returns:
        A scalar tensor of the dtype of ``features``.

    Raises:
        ValueError: ``features`` is not 2-D or not floating; ``labels`` is not a 1-D integer
            tensor with ``B`` entries; a label is negative.
    """
    check_floating_matrix("features", features)
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must have shape ({features.shape[0]},) to match features "
                         f"{tuple(features.shape)}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer (int64) tensor, got dtype {labels.dtype}")
    if labels.numel() == 0:
        return features.sum() * 0
    if bool((labels < 0).any()):
        raise ValueError("labels must be >= 0 (remove outliers labelled -1 before the triplet loss)")
    labels = labels.to(features.device)

    sq = features.pow(2).sum(dim=1, keepdim=True)  # (B, 1)
    dist = torch.addmm(sq + sq.t(), features, features.t(), beta=1, alpha=-2)
    dist = dist.clamp(min=1e-12).sqrt()  # (B, B)

    same = labels.unsqueeze(0) == labels.unsqueeze(1)  # (B, B), diagonal True
    has_neg = (~same).any(dim=1)  # (B,)
    if not bool(has_neg.any()):
        return features.sum() * 0

    d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)  # (B,)
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)  # (B,), inf where no negative
    d_ap, d_an = d_ap[has_neg], d_an[has_neg]
    return F.relu(d_ap - d_an + margin).mean()


def triplet_weight(schedule: Sequence[tuple[int, float]], epoch: int) -> float:
    """λ_tri at ``epoch`` for a piecewise-constant schedule (docs/dmdl.md#A8).

    Args:
        schedule: ``(first_epoch, weight)`` pairs, strictly increasing in ``first_epoch``,
            weights finite and >= 0 (e.g. ``((0, 0.0), (16, 0.25))``).
        epoch: 0-based epoch of the stage.

    Returns:
        The weight of the last pair whose ``first_epoch <= epoch``; 0.0 before the first pair
        (or for an empty schedule).

    Raises:
        ValueError: the schedule is not sorted, has a malformed pair or a negative/non-finite weight.
    """
    weight = 0.0
    prev = None
    for pair in schedule:
        if len(pair) != 2:
            raise ValueError(f"schedule entries must be (first_epoch, weight) pairs, got {pair!r}")
        first, w = int(pair[0]), float(pair[1])
        if prev is not None and first <= prev:
            raise ValueError(f"schedule must be strictly increasing in first_epoch, got {list(schedule)!r}")
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"schedule weights must be finite and >= 0, got {w} in {list(schedule)!r}")
        prev = first
        if first <= epoch:
            weight = w
    return weight
