"""Multi-kernel Gaussian MMD, DMDL's feature-alignment loss L_fa (docs/dmdl.md#A7.3; paper Eq. 14)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_floating_matrix

__all__ = ["mmd_loss"]


def mmd_loss(source: Tensor, target: Tensor) -> Tensor:
    """Multi-kernel Gaussian MMD between two equally sized batches (L_fa, docs/dmdl.md#A7.3).

    Source: paper Eq. 14 (DMDL, feature-level CBT); the estimator is exactly the reference
    code's ``utils/loss.py::DAN_new``, used between the original and the augmented views of
    one modality (weight λ_fa = 1, docs/dmdl.md#A4.4, #A5.5):

    * ``Z = [S; T]`` (2n × D) on the features as given (raw BN-neck features, NOT normalised);
    * ``D²_ij = ||z_i - z_j||²``, computed with the Gram trick on mean-centred ``Z`` (distances
      are translation invariant; centring only reduces cancellation) and clamped at 0; the
      diagonal is exactly 0. The (2n)² × D difference tensor of the reference is never built;
    * base bandwidth ``b = Σ_ij D²_ij / ((2n)² - 2n) / 2²`` on the *detached* D² (the reference
      uses ``.data``, so no gradient flows through ``b``). If every point coincides (``b = 0``)
      ``b`` is clamped to the smallest positive normal number, which gives ``L = 0`` instead of
      the reference's NaN;
    * ``K = Σ_{q=0..4} exp(-D² / (b·2^q))`` (five kernels, summed, not averaged);
    * ``L = [Σ_{i≠j∈S} K_ij + Σ_{i≠j∈T} K_ij] / (n(n-1))
      - [Σ_{i∈S,j∈T} K_ij + Σ_{i∈T,j∈S} K_ij] / n²``.

    Cost: O((2n)² D) time and O((2n)²) memory (n = 128 in DMDL).

    Args:
        source: (n, D) floating tensor S (e.g. the original views' features).
        target: (n, D) floating tensor T (the augmented views), same dtype and device as ``source``.

    Returns:
        A scalar tensor of the dtype and on the device of the inputs; differentiable w.r.t.
        both inputs (with ``b`` held constant).

    Raises:
        ValueError: an input is not a 2-D floating tensor; the shapes differ; n < 2; the dtypes differ.
    """
    check_floating_matrix("source", source, "(n, D)")
    check_floating_matrix("target", target, "(n, D)")
    if source.shape != target.shape:
        raise ValueError(f"source and target must have the same (n, D) shape, got {tuple(source.shape)} "
                         f"and {tuple(target.shape)}")
    if source.dtype != target.dtype:
        raise ValueError(f"source and target must have the same dtype, got {source.dtype} and {target.dtype}")
    n = source.shape[0]
    if n < 2:
        raise ValueError(f"mmd_loss needs n >= 2 samples per batch, got n = {n}")
    m = 2 * n

    z = torch.cat([source, target], dim=0)  # (2n, D)
    # The centre cancels exactly in D² (and in its derivative), so it need not be differentiated.
    z = z - z.detach().mean(dim=0, keepdim=True)
    sq = z.pow(2).sum(dim=1, keepdim=True)  # (2n, 1)
    d2 = torch.addmm(sq + sq.t(), z, z.t(), beta=1, alpha=-2).clamp(min=0)  # (2n, 2n)
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    d2 = d2.masked_fill(eye, 0.0)

    bandwidth = d2.detach().sum() / (m * m - m) / 4.0
    bandwidth = bandwidth.clamp(min=torch.finfo(d2.dtype).tiny)
    kernel = sum(torch.exp(-d2 / (bandwidth * (2.0 ** q))) for q in range(5))  # (2n, 2n)
    kernel = kernel.masked_fill(eye, 0.0)  # the i == j terms of the within-batch sums are excluded

    within = kernel[:n, :n].sum() + kernel[n:, n:].sum()
    between = kernel[:n, n:].sum() + kernel[n:, :n].sum()
    return within / (n * (n - 1)) - between / (n * n)
