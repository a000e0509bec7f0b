"""DMDL's training step as pure functions of features, labels and memories (docs/dmdl.md#A4.4,
#A5.5, #A6-#A8): the loss composition of each stage, and the memory updates of one step in order.

With f^c the BN-neck features of modality c (originals then augmented views, 2B rows), y^c their
labels and w^c their certainties:

- stage 1: ``L_id = CE_soft(f^V M^V, ỹ^V) + CE_soft(f^I M^I, ỹ^I)``, ỹ = onehot(y) until the
  refined targets start, then ``w onehot(y) + (1-w) P̂(swapped view)`` with P̂ the
  top-``topk_stage1`` prediction of the modality memory;
- stage 2: ``L_id = CE(f^V M^V, y^V) + CE(f^I M^I, y^I)`` (own memories, hard labels), plus
  ``L_cai = L_cai(f^V) + L_cai(f^I)`` (:func:`dmdl.losses.cai_loss`, soft targets ỹ from the
  shared memory's top-``topk_stage2`` prediction once refined, hard before), plus an optional
  non-DMDL cross term ``L_cross`` (PGM's mapped-vs-anchor memory, or the shared memory);
- both stages: ``L_tri = Tri(f^V) + Tri(f^I)`` (batch-hard, raw features), in the paired late
  stage-2 epochs plus the cross-modality ``Tri([f^V; f^I])``; ``L_mmd = MMD(f^V_o, f^V_a) +
  MMD(f^I_o, f^I_a)`` (``cbt_feature``);
- ``loss = L_id + lambda_cai L_cai + cross_weight L_cross + lambda_tri(e) L_tri + lambda_fa L_mmd``.

Two memory semantics (the run's ``memory_semantics``):

- ``forward`` (:func:`dmdl_losses`, :func:`dmdl_memory_updates`): every loss against the
  forward-time memories; after ``backward()``: visible <- visible samples; infrared <- infrared
  samples; stage 2: the anchor modality's memory <- the mapped modality's samples (docs/dmdl.md#A5.5), then
  the shared memory <- infrared samples, then visible samples, with DMDL's adaptive momentum
  ``eta_x = m / max(ỹ_x[y_x], m)`` (Eqs. 12-13) when ``adaptive_momentum``;
- ``reference`` (:func:`dmdl_reference_losses`, stage 2; stage 1 reads each memory once, where
  both semantics give the same step): the released code's reads (:class:`dmdl.memories.ReadTape`),
  created as its infrared call then its visible call create them, each call reading the visible
  memory then the infrared one: its own memory, and the anchor memory when its samples are the
  mapped modality (the semi-cross update; otherwise a forward-time product). The backward takes
  each read's gradient against the memory as it then stands and updates it, last read first: on
  even epochs (infrared anchor) the anchor memory receives the visible samples before its own
  infrared ones, and the infrared gradient sees the moved memory. The shared memory is updated as
  under ``forward`` (:func:`shared_memory_updates`; nothing reads it backward).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dmdl.losses import cai_loss, cai_loss_from_logits, mmd_loss, refined_targets, topk_prediction, triplet_loss
from dmdl.memories import CrossModalMemory, MemoryUpdate, ReadTape, step_backward
from dmdl.methods.dmdl.config import DMDLConfig
from dmdl.modalities import INFRARED, MODALITIES, VISIBLE, other


@dataclass
class EpochPlan:
    """What one DMDL epoch trains with (built by :meth:`dmdl.methods.dmdl.DMDL.plan`).

    Attributes:
        stage, epoch: where in the run (stage 1 or 2, 0-based epoch of the stage).
        labels: modality -> (N,) int64 label-space ids, -1 outliers.
        memory: the epoch's memories (per modality; stage 2 also the shared one).
        weights: modality -> (N,) float32 certainty (1 = hard label).
        anchor: the stage-2 anchor modality (None in stage 1).
        refine: train on refined soft targets.
        inter: late stage 2: paired-identity batches, cross-modality triplet.
        w_tri: the triplet weight lambda_tri of this epoch.
    """

    stage: int
    epoch: int
    labels: dict
    memory: CrossModalMemory
    weights: dict
    anchor: str | None
    refine: bool
    inter: bool
    w_tri: float


def _targets(plan: EpochPlan, cfg: DMDLConfig, name: str, f: Tensor, y: Tensor, w: Tensor, num_classes: int,
             k: int) -> Tensor:
    """Soft targets (2B, num_classes) over memory ``name``'s label space: one-hot, or the refined
    ỹ = w onehot(y) + (1-w) P̂(swapped view) (docs/dmdl.md#A4.3, #A7.2)."""
    if not plan.refine:
        return F.one_hot(y, num_classes).to(f.dtype)
    pred = topk_prediction(f, plan.memory.memories[name].features, k, cfg.temperature)  # (2B, K_name)
    b = f.shape[0] // 2
    if cfg.swap_predictions:
        pred = torch.cat([pred[b:], pred[:b]])
    return refined_targets(y, w.to(f.device, f.dtype), pred)


def _identity_loss(f: dict, y: dict, w: dict, plan: EpochPlan, cfg: DMDLConfig) -> Tensor:
    """L_id of either stage (module docstring)."""
    mem = plan.memory
    loss = f[VISIBLE].new_zeros(())
    for m in MODALITIES:
        if plan.stage == 1 and plan.refine:  # CE_soft against the refined targets (docs/dmdl.md#A4.3-#A4.4)
            rows = mem.rows(m, y[m])
            t = _targets(plan, cfg, m, f[m], rows, w[m], mem.memories[m].num_clusters, cfg.topk_stage1)
            loss = loss + mem.soft_loss(m, f[m], t)
        else:  # one-hot targets: the same loss by the hard-label path
            loss = loss + mem.loss(m, f[m], y[m])
    return loss


def _stage2_terms(f: dict, y: dict, w: dict, plan: EpochPlan, cfg: DMDLConfig) -> tuple[Tensor, Tensor, dict]:
    """(L_cai, L_cross, shared-memory targets per modality) of stage 2 (module docstring)."""
    mem = plan.memory
    zero = f[VISIBLE].new_zeros(())
    targets: dict[str, Tensor] = {}
    if cfg.cai or cfg.adaptive_momentum:
        for m in MODALITIES:
            targets[m] = _targets(plan, cfg, "shared", f[m], y[m], w[m], mem.num_ids, cfg.topk_stage2)
    cai = zero
    if cfg.cai:
        ids_v, ids_i = mem.row_ids(VISIBLE), mem.row_ids(INFRARED)
        for m in MODALITIES:
            cai = cai + cai_loss(f[m], mem.memories[VISIBLE].features, mem.memories[INFRARED].features, ids_v, ids_i,
                                 mem.prior[VISIBLE], targets[m], cfg.temperature)
    cross = zero
    if cfg.cross_weight > 0:
        if cfg.cross_memory == "shared":
            cross = mem.loss("shared", f[VISIBLE], y[VISIBLE]) + mem.loss("shared", f[INFRARED], y[INFRARED])
        else:
            mapped = other(plan.anchor)
            cross = mem.loss(plan.anchor, f[mapped], y[mapped])
    return cai, cross, targets


def split_modalities(features: Tensor) -> dict:
    """(4B, D) step features, visible rows then infrared rows -> ``{"visible": (2B, D), "infrared": (2B, D)}``."""
    n = features.shape[0] // 2
    return {VISIBLE: features[:n], INFRARED: features[n:]}


def _triplet_and_mmd(features: Tensor, f: dict, y: dict, plan: EpochPlan, cfg: DMDLConfig) -> tuple[Tensor, Tensor]:
    """(L_tri, L_mmd) of a step (module docstring); zero where their switches are off."""
    tri = mmd = features.new_zeros(())
    if plan.w_tri > 0:
        tri = triplet_loss(f[VISIBLE], y[VISIBLE], cfg.triplet_margin) + \
            triplet_loss(f[INFRARED], y[INFRARED], cfg.triplet_margin)
        if plan.inter:  # cross-modality term over the paired batch (docs/dmdl.md#A5.6)
            tri = tri + triplet_loss(features, torch.cat([y[VISIBLE], y[INFRARED]]), cfg.triplet_margin)
    if cfg.cbt_feature:
        b = f[VISIBLE].shape[0] // 2
        mmd = mmd_loss(f[VISIBLE][:b], f[VISIBLE][b:]) + mmd_loss(f[INFRARED][:b], f[INFRARED][b:])
    return tri, mmd


def dmdl_losses(features: Tensor, y: dict, w: dict, plan: EpochPlan, cfg: DMDLConfig) -> tuple[Tensor, dict, dict]:
    """The loss of one DMDL step (module docstring).

    Args:
        features: (4B, D) float32 features of the step (gradients flow to them): the visible rows
            (originals then augmented views, 2B), then the infrared rows (the same, 2B).
        y: ``{"visible": (2B,), "infrared": (2B,)}`` int64 label-space ids of those rows (no outliers).
        w: the same keys, (2B,) float32 certainties (1 = hard label).
        plan: the epoch's memories and switches.
        cfg: DMDL's section (temperature, top-k, the module switches and weights).

    Returns:
        (loss, parts, targets): the scalar loss; ``parts`` the unweighted ``loss_id``, ``loss_cai``,
        ``loss_cross``, ``loss_triplet``, ``loss_mmd``; ``targets`` the stage-2 shared-memory
        targets per modality (what the adaptive momentum reads; empty in stage 1).
    """
    f = split_modalities(features)
    zero = features.new_zeros(())
    parts = {"loss_id": _identity_loss(f, y, w, plan, cfg), "loss_cai": zero, "loss_cross": zero,
             "loss_triplet": zero, "loss_mmd": zero}
    targets: dict[str, Tensor] = {}
    if plan.stage == 2:
        parts["loss_cai"], parts["loss_cross"], targets = _stage2_terms(f, y, w, plan, cfg)
    parts["loss_triplet"], parts["loss_mmd"] = _triplet_and_mmd(features, f, y, plan, cfg)
    loss = (parts["loss_id"] + cfg.lambda_cai * parts["loss_cai"] + cfg.cross_weight * parts["loss_cross"]
            + plan.w_tri * parts["loss_triplet"] + cfg.lambda_fa * parts["loss_mmd"])
    return loss, parts, targets


def dmdl_memory_updates(features: Tensor, y: dict, targets: dict, plan: EpochPlan,
                        cfg: DMDLConfig) -> list[MemoryUpdate]:
    """The memory updates of one step under ``forward`` semantics, in the order they are applied
    (module docstring).

    Args:
        features, y: as :func:`dmdl_losses` (features are detached here).
        targets: the shared-memory targets :func:`dmdl_losses` returned (adaptive momentum).
    """
    f = split_modalities(features.detach())
    updates = [MemoryUpdate(m, f[m], y[m]) for m in MODALITIES]
    if plan.stage == 2:
        mapped = other(plan.anchor)
        updates.append(MemoryUpdate(plan.anchor, f[mapped], y[mapped]))  # semi-cross update (docs/dmdl.md#A5.5)
    return updates + shared_memory_updates(features, y, targets, plan, cfg)


def shared_memory_updates(features: Tensor, y: dict, targets: dict, plan: EpochPlan,
                          cfg: DMDLConfig) -> list[MemoryUpdate]:
    """Stage 2's shared-memory updates (infrared samples, then visible, the released forward's
    order), with the adaptive momentum ``eta_x = m / max(ỹ_x[y_x], m)`` (Eqs. 12-13) when
    ``adaptive_momentum``; none in stage 1."""
    if plan.stage != 2:
        return []
    f = split_modalities(features.detach())
    updates = []
    for m in (INFRARED, VISIBLE):  # the reference's order: IR memory forward first
        mu = None
        if cfg.adaptive_momentum and m in targets:  # eta_x = 0.2 / max(q, 0.2) (Eqs. 12-13)
            q = targets[m].gather(1, y[m].unsqueeze(1)).squeeze(1)
            mu = cfg.momentum / q.clamp_min(cfg.momentum)
        updates.append(MemoryUpdate("shared", f[m], y[m], mu))
    return updates


def dmdl_reference_losses(features: Tensor, y: dict, w: dict, plan: EpochPlan,
                          cfg: DMDLConfig) -> tuple[Tensor, dict, dict, ReadTape]:
    """The loss of one stage-2 DMDL step under ``reference`` semantics (module docstring): the same
    terms as :func:`dmdl_losses`, the identity, CAI and anchor cross terms built from the released
    code's memory reads.

    Args:
        features, y, w, plan, cfg: as :func:`dmdl_losses` (``plan.stage`` must be 2).

    Returns:
        (loss, parts, targets, tape): as :func:`dmdl_losses`, and the reads, whose
        :meth:`~dmdl.memories.ReadTape.objective` the optimiser step backpropagates (it updates
        the visible and infrared memories; :func:`shared_memory_updates` remain to apply).
    """
    f = split_modalities(features)
    mem = plan.memory
    tape = ReadTape(mem)
    logits = {}  # (samples' modality, memory) -> logits / T
    for m in (INFRARED, VISIBLE):  # the released infrared call, then the visible call
        for name in MODALITIES:  # each call: the visible memory, then the infrared one
            if name == m or name == plan.anchor:  # its own memory; the anchor memory when m is mapped
                logits[m, name] = tape.read(name, f[m], y[m])
            else:  # a forward-time product (a copy: the reads update the memory in place)
                frozen = mem.memories[name].features.detach().clone()
                logits[m, name] = F.normalize(f[m], dim=1) @ frozen.t() / mem.memories[name].temperature
    zero = features.new_zeros(())
    parts = {"loss_id": zero, "loss_cai": zero, "loss_cross": zero, "loss_triplet": zero, "loss_mmd": zero}
    for m in MODALITIES:
        parts["loss_id"] = parts["loss_id"] + F.cross_entropy(logits[m, m], mem.rows(m, y[m]))
    targets = {m: _targets(plan, cfg, "shared", f[m], y[m], w[m], mem.num_ids, cfg.topk_stage2)
               for m in MODALITIES} if cfg.cai or cfg.adaptive_momentum else {}
    if cfg.cai:
        ids_v, ids_i = mem.row_ids(VISIBLE), mem.row_ids(INFRARED)
        for m in MODALITIES:
            parts["loss_cai"] = parts["loss_cai"] + cai_loss_from_logits(
                logits[m, VISIBLE], logits[m, INFRARED], ids_v, ids_i, mem.prior[VISIBLE], targets[m])
    if cfg.cross_weight > 0 and cfg.cross_memory == "shared":
        parts["loss_cross"] = mem.loss("shared", f[VISIBLE], y[VISIBLE]) + mem.loss("shared", f[INFRARED], y[INFRARED])
    elif cfg.cross_weight > 0:
        mapped = other(plan.anchor)
        parts["loss_cross"] = F.cross_entropy(logits[mapped, plan.anchor], mem.rows(plan.anchor, y[mapped]))
    parts["loss_triplet"], parts["loss_mmd"] = _triplet_and_mmd(features, f, y, plan, cfg)
    loss = (parts["loss_id"] + cfg.lambda_cai * parts["loss_cai"] + cfg.cross_weight * parts["loss_cross"]
            + plan.w_tri * parts["loss_triplet"] + cfg.lambda_fa * parts["loss_mmd"])
    return loss, parts, targets, tape


def dmdl_step(features: Tensor, y: dict, w: dict, plan: EpochPlan, cfg: DMDLConfig, semantics: str,
              backward: Callable[[Tensor, ReadTape | None], None] = step_backward,
              precision: Callable[[], AbstractContextManager] = nullcontext) -> tuple[Tensor, dict]:
    """One DMDL step after the forward: the losses under ``semantics`` (``reference`` in stage 2:
    :func:`dmdl_reference_losses`; otherwise :func:`dmdl_losses`, stage 1 reading every memory
    once), the backward, and every memory update in its order (module docstring).

    Args:
        features, y, w, plan, cfg: as :func:`dmdl_losses`.
        semantics: ``"reference"`` or ``"forward"`` (the run's ``memory_semantics``).
        backward: ``backward(loss, tape)`` runs the backward (``tape`` None under ``forward``);
            the trainer passes its optimiser step, the default is :func:`dmdl.memories.step_backward`.
        precision: the context the losses are computed in (the run's loss autocast); the backward
            runs outside it.

    Returns:
        (loss, parts): the scalar loss and its float32 terms, as :func:`dmdl_losses`.

    Raises:
        FloatingPointError: from ``backward``, a non-finite loss (no memory is updated).
    """
    with precision():
        if semantics == "reference" and plan.stage == 2:
            loss, parts, targets, tape = dmdl_reference_losses(features, y, w, plan, cfg)
        else:  # stage 1 reads every memory once: both semantics give this step
            (loss, parts, targets), tape = dmdl_losses(features, y, w, plan, cfg), None
    backward(loss, tape)  # with a tape: the released backward, the read memories updated
    if tape is None:
        plan.memory.apply(dmdl_memory_updates(features, y, targets, plan, cfg))  # the documented order
    else:
        plan.memory.apply(shared_memory_updates(features, y, targets, plan, cfg))
    return loss, parts


def certainty_rows(w: np.ndarray, labels: np.ndarray) -> Tensor:
    """(N_labelled,) float32 certainties of the labelled samples (label >= 0), in dataset order:
    the loader's ``index`` looks them up."""
    return torch.as_tensor(w[labels >= 0])


__all__ = ["EpochPlan", "split_modalities", "dmdl_losses", "dmdl_reference_losses", "shared_memory_updates",
           "dmdl_memory_updates", "dmdl_step", "certainty_rows"]
