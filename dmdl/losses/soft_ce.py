"""Cross-entropy with soft (probability) targets (docs/dmdl.md#A4.4, ``CE_soft``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["soft_cross_entropy"]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy with soft (probability) targets: ``mean_i(-Σ_k q_ik log_softmax(z_i)_k)``.

    This is exactly ``F.cross_entropy(logits, targets)`` with class-probability targets
    (PyTorch >= 1.10), which for ``reduction='mean'`` divides by the batch size N; the
    reference code calls it that way (docs/dmdl.md#A4.4 ``CE_soft``). With one-hot targets it
    equals the ordinary hard-label cross-entropy. Rows of ``targets`` are not renormalised.

    Args:
        logits: (N, K) floating tensor z (e.g. ``f̂·Mᵀ/τ``).
        targets: (N, K) floating tensor q, rows summing to 1 (refined labels, no gradient needed).

    Returns:
        A scalar tensor.

    Raises:
        ValueError: ``logits`` is not 2-D, or ``targets`` is not a floating tensor of the same shape.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, K), got {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(f"targets must have the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(targets.shape)}")
    if not targets.is_floating_point():
        raise ValueError(f"targets must be floating probabilities, got dtype {targets.dtype}")
    return F.cross_entropy(logits, targets)
