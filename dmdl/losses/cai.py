"""CAI, DMDL's backdoor-adjusted loss L_cai over the two modality memories (docs/dmdl.md#A6;
paper Eqs. 4-6 and 9)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_floating_matrix, check_int_vector

__all__ = ["cai_loss", "cai_loss_from_logits"]


def cai_loss(features: Tensor, memory_v: Tensor, memory_i: Tensor, ids_v: Tensor, ids_i: Tensor,
             prior_v: float, targets: Tensor, temperature: float = 0.05) -> Tensor:
    """CAI backdoor-adjusted soft NLL ``L_cai`` (docs/dmdl.md#A6; paper Eqs. 4-6 and 9).

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
    momentum-updated buffers, docs/dmdl.md#A5.5). ``targets`` are used as given (detach them beforehand; in
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
    check_floating_matrix("features", features)
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
        check_int_vector(f"ids_{suffix}", ids, memory.shape[0])
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
    logits = [f_hat @ memory.detach().to(device=features.device, dtype=features.dtype).t() / temperature
              if prior > 0 else None for memory, _, prior in branches]
    return cai_loss_from_logits(logits[0], logits[1], ids_v, ids_i, prior_v, targets)


def cai_loss_from_logits(logits_v: Tensor | None, logits_i: Tensor | None, ids_v: Tensor, ids_i: Tensor,
                         prior_v: float, targets: Tensor) -> Tensor:
    """``L_cai`` from the two memories' logits ``f̂ M_cᵀ / T`` (see :func:`cai_loss`, which checks the
    arguments and computes them): the released code's form, where each logit matrix is the output
    of a memory read (its gradient may be taken against the memory of another moment, see
    :class:`dmdl.memories.ReadTape`).

    Args:
        logits_v, logits_i: (B, |P_c|) floating logits over each memory's rows (already divided by
            the temperature), or None for a modality whose prior is 0 (not evaluated).
        ids_v, ids_i, prior_v, targets: as :func:`cai_loss` (not checked again here).

    Returns:
        A scalar tensor of the logits' dtype and device.
    """
    ref = logits_v if logits_v is not None else logits_i
    bsz, num_classes = targets.shape
    log_p = []
    for logits, ids, prior in ((logits_v, ids_v, prior_v), (logits_i, ids_i, 1.0 - prior_v)):
        full = ref.new_full((bsz, num_classes), float("-inf"))
        if logits is not None and prior > 0:
            log_s = F.log_softmax(logits, dim=1) + math.log(prior)  # (B, |P_c|)
            full = full.index_copy(1, ids.to(ref.device), log_s)  # (B, K), -inf at absent ids
        log_p.append(full)

    targets = targets.to(dtype=ref.dtype, device=ref.device)
    support = targets > 0
    # Double `where` so that entries off the support (possibly -inf/-inf) give no NaN gradient.
    log_pv = torch.where(support, log_p[0], torch.zeros_like(log_p[0]))
    log_pi = torch.where(support, log_p[1], torch.zeros_like(log_p[1]))
    log_pdo = torch.logaddexp(log_pv, log_pi)  # (B, K) = log P_do on the support
    terms = torch.where(support, targets * log_pdo, torch.zeros_like(log_pdo))
    return -terms.sum(dim=1).mean()
