"""Label-level CBT refinement of DMDL: the top-k-truncated prediction P̂ (docs/dmdl.md#A4.3, #A5.5
; paper Eq. 11) and the refined targets ỹ (docs/dmdl.md#A7.2; paper Eq. 8)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_floating_matrix, check_int_vector

__all__ = ["refined_targets", "topk_prediction"]


def topk_prediction(features: Tensor, memory: Tensor, k: int, temperature: float = 0.05) -> Tensor:
    """Top-k-truncated memory softmax P̂(Y|X) used for label refinement (docs/dmdl.md#A4.3, #A5.5).

    Paper Eq. 11 (NWGM approximation of P(Y|X) by the memory softmax); the top-k truncation is
    the reference code's (k = 3 in stage 1 over the modality memory, k = 10 in stage 2 over the
    modality-shared memory):

    * ``logits = normalize(features) @ memoryᵀ / T``;
    * keep the ``k`` largest logits of each row (``torch.topk``: exactly ``k`` kept, ties broken
      arbitrarily), set the others to -inf, softmax over the row.

    Computed under ``torch.no_grad``: the result is detached (``requires_grad`` False).

    Args:
        features: (B, D) floating tensor (L2-normalised here).
        memory: (K, D) cluster memory (rows L2-normalised by the caller); cast to the
            dtype/device of ``features``.
        k: number of logits kept, >= 1; ``k > K`` is treated as ``K`` (plain softmax).
        temperature: T > 0 (0.05 in DMDL).

    Returns:
        (B, K) tensor of the dtype/device of ``features``; rows sum to 1, at most ``k`` non-zeros.

    Raises:
        ValueError: ``features`` not a floating (B, D) tensor; ``memory`` not (K, D) with K >= 1;
            ``k < 1``; ``temperature`` not > 0.
    """
    check_floating_matrix("features", features)
    if memory.dim() != 2 or memory.shape[1] != features.shape[1] or memory.shape[0] < 1:
        raise ValueError(f"memory must have shape (K >= 1, {features.shape[1]}), got {tuple(memory.shape)}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k = min(int(k), memory.shape[0])
    with torch.no_grad():
        mem = memory.to(device=features.device, dtype=features.dtype)
        logits = F.normalize(features, dim=1) @ mem.t() / temperature  # (B, K)
        top_val, top_idx = logits.topk(k, dim=1)
        masked = torch.full_like(logits, float("-inf")).scatter(1, top_idx, top_val)
        return torch.softmax(masked, dim=1)


def refined_targets(labels: Tensor, certainty: Tensor, swapped_prediction: Tensor) -> Tensor:
    """Refined soft labels ``ỹ = w·onehot(y) + (1 - w)·P̂`` (docs/dmdl.md#A7.2, paper Eq. 8; docs/dmdl.md#A4.3, #A5.5).

    The prediction mixed in is that of the OTHER view of the same image (the "exchange" of CBT):
    the original view's target uses the augmented view's P̂ and the augmented view's target uses
    the original view's P̂. The caller performs the swap, e.g. with the batch laid out as
    ``[originals; augmented]``: ``swapped = torch.cat([pred[B:], pred[:B]])``. (The paper's
    "w/o exchange" ablation passes each view's own prediction instead.)

    Args:
        labels: (B,) int64 pseudo-labels y in [0, K) (outliers removed).
        certainty: (B,) floating certainty w in [0, 1] (GMM posterior, docs/dmdl.md#A4.3/#A5.4; 1 = keep
            the one-hot label, e.g. before refinement starts).
        swapped_prediction: (B, K) floating P̂ of the other view (e.g. :func:`topk_prediction`),
            rows summing to 1.

    Returns:
        (B, K) detached tensor of the dtype/device of ``swapped_prediction``; rows sum to 1 when
        the rows of ``swapped_prediction`` do.

    Raises:
        ValueError: wrong shapes or dtypes; a label outside [0, K); a certainty outside [0, 1].
    """
    check_floating_matrix("swapped_prediction", swapped_prediction, "(B, K)")
    bsz, num_classes = swapped_prediction.shape
    check_int_vector("labels", labels, bsz)
    if certainty.dim() != 1 or certainty.shape[0] != bsz or not certainty.is_floating_point():
        raise ValueError(f"certainty must be a floating ({bsz},) tensor, got shape {tuple(certainty.shape)} "
                         f"and dtype {certainty.dtype}")
    if bsz == 0:
        return swapped_prediction.detach().clone()
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    if not bool(((certainty >= 0) & (certainty <= 1)).all()):
        raise ValueError("certainty must lie in [0, 1]")
    pred = swapped_prediction.detach()
    w = certainty.detach().to(device=pred.device, dtype=pred.dtype).unsqueeze(1)  # (B, 1)
    onehot = F.one_hot(labels.to(pred.device), num_classes).to(pred.dtype)
    return w * onehot + (1.0 - w) * pred
