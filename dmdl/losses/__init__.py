"""Losses of DMDL (algorithm.md §A4.3-§A4.4, §A5.4-§A5.5, §A6, §A7, §A8).

This module holds the batch-hard triplet loss, the soft-target cross-entropy, the λ_tri(e)
schedules of the two training stages, the multi-kernel MMD feature-alignment loss L_fa
(§A7.3), the CAI backdoor-adjusted loss L_cai (§A6) and the two pieces of the label-level
CBT refinement: the top-k-truncated prediction P̂ (§A4.3) and the refined targets ỹ (§A7.2).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "triplet_loss",
    "soft_cross_entropy",
    "triplet_weight",
    "mmd_loss",
    "cai_loss",
    "topk_prediction",
    "refined_targets",
    "STAGE1_TRIPLET_SCHEDULE",
    "STAGE2_TRIPLET_SCHEDULE",
]

#: λ_tri of stage 1 (algorithm.md §A4.4/§A8): 0 for epochs 0–15, 0.25 for 16–25, 0.5 for 26–35, 1.0 after.
STAGE1_TRIPLET_SCHEDULE: tuple[tuple[int, float], ...] = ((0, 0.0), (16, 0.25), (26, 0.5), (36, 1.0))
#: λ_tri of stage 2 (algorithm.md §A5.5/§A8): 0 for epochs 0–10, 0.5 for 11–20, 1.0 after.
STAGE2_TRIPLET_SCHEDULE: tuple[tuple[int, float], ...] = ((0, 0.0), (11, 0.5), (21, 1.0))


def triplet_loss(features: Tensor, labels: Tensor, margin: float = 0.3) -> Tensor:
    """Batch-hard triplet loss on Euclidean distances of the raw features.

    Source: Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss for Person
    Re-Identification" (batch-hard variant), as computed by the ``TripletLoss`` of the
    AGW/ADCA/DMDL reference code (algorithm.md §A4.4, §A5.5):

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
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a floating (B, D) tensor, got {tuple(features.shape)} "
                         f"of dtype {features.dtype}")
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


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy with soft (probability) targets: ``mean_i(-Σ_k q_ik log_softmax(z_i)_k)``.

    This is exactly ``F.cross_entropy(logits, targets)`` with class-probability targets
    (PyTorch >= 1.10), which for ``reduction='mean'`` divides by the batch size N; the
    reference code calls it that way (algorithm.md §A4.4 ``CE_soft``). With one-hot targets it
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


def triplet_weight(schedule: Sequence[tuple[int, float]], epoch: int) -> float:
    """λ_tri at ``epoch`` for a piecewise-constant schedule (algorithm.md §A8).

    Args:
        schedule: ``(first_epoch, weight)`` pairs, strictly increasing in ``first_epoch``,
            weights finite and >= 0 (e.g. ``STAGE1_TRIPLET_SCHEDULE``).
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


def _check_int_vector(name: str, t: Tensor, length: int | None = None) -> None:
    """Raise ValueError unless ``t`` is a 1-D integer tensor (of ``length`` entries if given)."""
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D integer (int64) tensor, got shape {tuple(t.shape)} "
                         f"and dtype {t.dtype}")
    if length is not None and t.shape[0] != length:
        raise ValueError(f"{name} must have {length} entries, got {t.shape[0]}")


def mmd_loss(source: Tensor, target: Tensor) -> Tensor:
    """Multi-kernel Gaussian MMD between two equally sized batches (L_fa, algorithm.md §A7.3).

    Source: paper Eq. 14 (DMDL, feature-level CBT); the estimator is exactly the reference
    code's ``utils/loss.py::DAN_new``, used between the original and the augmented views of
    one modality (weight λ_fa = 1, §A4.4, §A5.5):

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
    for name, t in (("source", source), ("target", target)):
        if t.dim() != 2 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating (n, D) tensor, got shape {tuple(t.shape)} "
                             f"and dtype {t.dtype}")
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


def cai_loss(features: Tensor, memory_v: Tensor, memory_i: Tensor, ids_v: Tensor, ids_i: Tensor,
             prior_v: float, targets: Tensor, temperature: float = 0.05) -> Tensor:
    """CAI backdoor-adjusted soft NLL ``L_cai`` (algorithm.md §A6; paper Eqs. 4-6 and 9).

    Reference code: ``cm_causal_softtopk.py`` (per modality batch, both views concatenated).
    With ``f̂ = normalize(features)`` and ``π_I = 1 - π_V``:

    * ``S_c = softmax(f̂ M_cᵀ / T)`` over the rows of the modality-c memory (paper Eq. 6);
    * ``Q_c`` (B × K) = ``S_c`` scattered into the unified columns ``ids_c``; absent ids get 0;
    * ``P_do = π_V·Q_V + π_I·Q_I`` (backdoor adjustment, paper Eq. 5; rows sum to 1);
    * ``L = mean_i(-Σ_k targets_ik · log P_do_ik)``.

    ``log P_do`` is evaluated in log space (``logaddexp`` of ``log π_c + log_softmax``) and only
    where ``targets > 0``: terms with ``targets_ik = 0`` contribute exactly 0 (``0·log 0 := 0``) and
    no gradient, even where ``P_do_ik = 0``; elsewhere value and gradient are exact. If a target
    puts mass on an id with ``P_do = 0`` (covered by no memory of positive prior) the loss is +inf.
    A memory whose prior is 0 is not evaluated.

    Gradients reach ``features`` through both memories; the memories are detached (they are
    momentum-updated buffers, §A5.5). ``targets`` are used as given (detach them beforehand; in
    DMDL they are the refined labels ỹ of :func:`refined_targets`, or one-hot).

    Args:
        features: (B, D) floating tensor (BN-neck features; L2-normalised here).
        memory_v: (|P_V|, D) visible cluster memory M^V; cast to the dtype/device of ``features``.
        memory_i: (|P_I|, D) infrared cluster memory M^I; cast likewise.
        ids_v: (|P_V|,) int64, the unified id in [0, K) that each row of ``memory_v`` stands for;
            distinct (any order).
        ids_i: (|P_I|,) int64, likewise for ``memory_i``.
        prior_v: π_V = N_V / (N_V + N_I) in [0, 1].
        targets: (B, K) floating soft targets (rows normally summing to 1); K = ``targets.shape[1]``.
        temperature: σ > 0 (0.05 in DMDL).

    Returns:
        A scalar tensor of the dtype and on the device of ``features``.

    Raises:
        ValueError: naming the offending argument, for: non-2-D / non-floating ``features`` or
            ``targets``; ``targets`` with another batch size; a memory not (rows, D) with D of
            ``features``; ids not 1-D integer, not one per memory row, outside [0, K) or
            duplicated; ``prior_v`` outside [0, 1] (or NaN); a memory with positive prior but no
            rows; ``temperature`` not > 0.
    """
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a floating (B, D) tensor, got shape {tuple(features.shape)} "
                         f"and dtype {features.dtype}")
    bsz, dim = features.shape
    if targets.dim() != 2 or not targets.is_floating_point() or targets.shape[0] != bsz:
        raise ValueError(f"targets must be a floating ({bsz}, K) tensor, got shape {tuple(targets.shape)} "
                         f"and dtype {targets.dtype}")
    num_classes = targets.shape[1]
    prior_v = float(prior_v)
    if not 0.0 <= prior_v <= 1.0:
        raise ValueError(f"prior_v must be in [0, 1], got {prior_v}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}")

    branches = []
    for suffix, memory, ids, prior in (("v", memory_v, ids_v, prior_v), ("i", memory_i, ids_i, 1.0 - prior_v)):
        if memory.dim() != 2 or memory.shape[1] != dim:
            raise ValueError(f"memory_{suffix} must have shape (rows, {dim}), got {tuple(memory.shape)}")
        _check_int_vector(f"ids_{suffix}", ids, memory.shape[0])
        if ids.numel() > 0:
            if int(ids.min()) < 0 or int(ids.max()) >= num_classes:
                raise ValueError(f"ids_{suffix} must lie in [0, {num_classes}) (K = targets.shape[1]), "
                                 f"got range [{int(ids.min())}, {int(ids.max())}]")
            if torch.unique(ids).numel() != ids.numel():
                raise ValueError(f"ids_{suffix} must not contain duplicate ids")
        if prior > 0 and memory.shape[0] == 0:
            raise ValueError(f"memory_{suffix} is empty but its modality prior is {prior} > 0")
        branches.append((memory, ids, prior))

    f_hat = F.normalize(features, dim=1)
    log_p = []
    for memory, ids, prior in branches:
        full = features.new_full((bsz, num_classes), float("-inf"))
        if prior > 0:
            mem = memory.detach().to(device=features.device, dtype=features.dtype)
            log_s = F.log_softmax(f_hat @ mem.t() / temperature, dim=1) + math.log(prior)  # (B, |P_c|)
            full = full.index_copy(1, ids.to(features.device), log_s)  # (B, K), -inf at absent ids
        log_p.append(full)

    targets = targets.to(dtype=features.dtype, device=features.device)
    support = targets > 0
    # Double `where` so that entries off the support (possibly -inf/-inf) give no NaN gradient.
    log_pv = torch.where(support, log_p[0], torch.zeros_like(log_p[0]))
    log_pi = torch.where(support, log_p[1], torch.zeros_like(log_p[1]))
    log_pdo = torch.logaddexp(log_pv, log_pi)  # (B, K) = log P_do on the support
    terms = torch.where(support, targets * log_pdo, torch.zeros_like(log_pdo))
    return -terms.sum(dim=1).mean()


def topk_prediction(features: Tensor, memory: Tensor, k: int, temperature: float = 0.05) -> Tensor:
    """Top-k-truncated memory softmax P̂(Y|X) used for label refinement (algorithm.md §A4.3, §A5.5).

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
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a floating (B, D) tensor, got shape {tuple(features.shape)} "
                         f"and dtype {features.dtype}")
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
    """Refined soft labels ``ỹ = w·onehot(y) + (1 - w)·P̂`` (algorithm.md §A7.2, paper Eq. 8; §A4.3, §A5.5).

    The prediction mixed in is that of the OTHER view of the same image (the "exchange" of CBT):
    the original view's target uses the augmented view's P̂ and the augmented view's target uses
    the original view's P̂. The caller performs the swap, e.g. with the batch laid out as
    ``[originals; augmented]``: ``swapped = torch.cat([pred[B:], pred[:B]])``. (The paper's
    "w/o exchange" ablation passes each view's own prediction instead.)

    Args:
        labels: (B,) int64 pseudo-labels y in [0, K) (outliers removed).
        certainty: (B,) floating certainty w in [0, 1] (GMM posterior, §A4.3/§A5.4; 1 = keep
            the one-hot label, e.g. before refinement starts).
        swapped_prediction: (B, K) floating P̂ of the other view (e.g. :func:`topk_prediction`),
            rows summing to 1.

    Returns:
        (B, K) detached tensor of the dtype/device of ``swapped_prediction``; rows sum to 1 when
        the rows of ``swapped_prediction`` do.

    Raises:
        ValueError: wrong shapes or dtypes; a label outside [0, K); a certainty outside [0, 1].
    """
    if swapped_prediction.dim() != 2 or not swapped_prediction.is_floating_point():
        raise ValueError(f"swapped_prediction must be a floating (B, K) tensor, got shape "
                         f"{tuple(swapped_prediction.shape)} and dtype {swapped_prediction.dtype}")
    bsz, num_classes = swapped_prediction.shape
    _check_int_vector("labels", labels, bsz)
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


from .oclr import oclr_loss  # noqa: E402  (MULT's loss, its own module)

__all__ += ["oclr_loss"]
