"""OCLR, MULT's Online Cross-memory Label Refinement (docs/mult.md#B4; MULT arXiv 2402.00672).

In MULT's cross stage the *aggregated* memory's prediction of a sample is supervised by the
sharpened prediction of a modality memory for *another view* of the sample (or of the same view
under the other memory). One term is a soft cross-entropy between two logit matrices::

    SCE(pred <- target) = -(1/B) sum_i sum_k softmax(target_i / sharpen)_k log softmax(pred_i)_k

with ``sharpen = 0.2`` on logits that are already cosine / 0.05. The method
(:mod:`dmdl.methods.mult`) sums six such terms per step.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["oclr_loss"]


def oclr_loss(pred: Tensor, target: Tensor, sharpen: float = 0.2, detach_target: bool = False) -> Tensor:
    """One OCLR term ``SCE(pred <- target)`` (docs/mult.md#B4).

    Args:
        pred: (B, K) float logits of the aggregated memory (cosine / temperature).
        target: (B, K) float logits of a modality memory (or a plain ``f @ M^T / temperature``).
        sharpen: temperature applied to ``target`` before its softmax (0.2 in MULT).
        detach_target: stop the gradient through ``target``. MULT does not (its targets carry
            gradient to the features), so the default is False.

    Returns:
        Scalar tensor: the mean over the batch of the cross-entropy.

    Raises:
        ValueError: shapes differ or are not 2-D, ``sharpen`` <= 0.

    Unlike MULT's code (``log(softmax(pred))``) the log-probabilities come from ``log_softmax``, which
    is the same value where the softmax does not underflow and finite where it does.
    """
    if pred.dim() != 2 or pred.shape != target.shape:
        raise ValueError(f"pred and target must be (B, K) logits of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if not sharpen > 0:
        raise ValueError(f"sharpen must be > 0, got {sharpen}")
    if detach_target:
        target = target.detach()
    q = F.softmax(target / sharpen, dim=1)
    return -(q * F.log_softmax(pred, dim=1)).sum(dim=1).mean()
