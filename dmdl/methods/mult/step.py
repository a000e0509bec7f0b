"""MULT's training step as pure functions of features, labels and memories (docs/mult.md#B4):
the loss of each stage and unified label space, and the memory updates of one step in order.

Views: ``v`` (visible, original), ``a`` (visible, channel-augmented), ``r`` (infrared). Memories
(the paper's names): ``v`` and ``r`` over the visible and infrared clusters; in the cross stage
also ``va``, ``rcm`` (over the visible clusters) and ``ra``, ``vcm`` (over the infrared clusters).

Single stage: ``L_ms = CE(m_v(v), y1) + CE(m_v(a), y1) + CE(m_r(r), y2)``.

Cross stage, with ``U`` the memory of each modality in the unified label space (even epochs, the
visible clusters: ``m_v`` for visible with ``y1``, ``m_rcm`` for infrared with ``cm_y2``; odd
epochs, the infrared clusters: ``m_vcm`` for visible with ``cm_y1``, ``m_r`` for infrared with
``y2``), ``O`` the other modality's own memory (even: ``m_r`` with ``y2`` on r; odd: ``m_v`` with
``y1`` on v and a) and ``G`` the aggregated memory (even ``m_va``, odd ``m_ra``)::

    L_ms   = CE(U_vis(v)) + CE(U_vis(a)) + CE(U_ir(r)) + CE(O(.))
    L_ma   = CE(G(v)) + CE(G(a)) + CE(G(r))                      (targets of U)
    L_oclr = SCE(G(v) <- U_vis(a)) + SCE(G(a) <- U_vis(v)) + SCE(G(r) <- U_ir(r))
           + SCE(G(v) <- <a, U_ir>) + SCE(G(a) <- <v, U_ir>) + SCE(G(r) <- <r, U_vis>)
    loss   = L_ms + L_ma + lambda_oclr L_oclr

Two memory semantics (the run's ``memory_semantics``):

- ``forward`` (:func:`mult_losses`, :func:`mult_memory_updates`): CE terms on
  :func:`dmdl.ops.memory_loss` against the forward-time memories (soft β-labels in the cross
  stage); SCE is :func:`dmdl.losses.oclr_loss` on plain logits (its targets keep their gradient,
  as MULT's); memory updates (hard labels) after ``backward()``: ``U_vis`` <- v then a;
  ``U_ir`` <- r; ``O``; ``G`` <- v, a, r;
- ``reference`` (:func:`mult_reference_losses`): the released code's reads
  (:class:`dmdl.memories.ReadTape`) in its order, ``U_vis(v), U_vis(a), U_ir(r), O(.), G(v),
  G(a), G(r)`` (single stage: ``m_v(v), m_v(a), m_r(r)``); the CE terms and the first three OCLR
  terms read them, the last three OCLR targets (``<a, U_ir>``, ``<v, U_ir>``, ``<r, U_vis>``) are
  forward-time products. Backward, last read first: within a memory read by v, a and r, the
  updates land r, then a, then v, and each read's gradient sees the memory the later reads moved.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from dmdl.losses import oclr_loss, soft_cross_entropy
from dmdl.memories import CrossModalMemory, MemoryUpdate, ReadTape, step_backward
from dmdl.methods.mult.config import MULTConfig


@dataclass
class MultPlan:
    """What one MULT epoch trains with (built by :meth:`dmdl.methods.mult.MULT.plan`).

    Attributes:
        stage: 1 (single) or 2 (cross).
        space: cross stage: ``"rgb"`` (even epochs: the visible clusters are the unified label
            space) or ``"ir"`` (odd epochs: the infrared clusters); None in stage 1.
        memory: the epoch's named memories.
        hard: ``label1`` (visible samples' visible clusters), ``label2`` (infrared samples'
            infrared clusters), cross stage also ``cm_label1`` (visible samples in the infrared
            clusters) and ``cm_label2``: (N,) int64 tensors over the dataset.
        soft: cross stage: ``y1``, ``y2``, ``cm_y1``, ``cm_y2``: (N, K) float32 β-labels.
        batches: modality -> list of (B,) index arrays (the epoch's batches).
    """

    stage: int
    space: str | None
    memory: CrossModalMemory
    hard: dict
    soft: dict
    batches: dict


def _roles(space: str) -> dict:
    """The memories and label names of a unified label space (module docstring)."""
    if space == "rgb":
        return {"u_vis": ("v", "y1", "label1"), "u_ir": ("rcm", "cm_y2", "cm_label2"), "agg": "va",
                "other": [("r", "r", "y2", "label2")]}
    return {"u_vis": ("vcm", "cm_y1", "cm_label1"), "u_ir": ("r", "y2", "label2"), "agg": "ra",
            "other": [("v", "v", "y1", "label1"), ("v", "a", "y1", "label1")]}


def mult_losses(f: dict, hard: dict, soft: dict, plan: MultPlan, cfg: MULTConfig) -> tuple[Tensor, dict]:
    """The loss of one MULT step (module docstring).

    Args:
        f: ``{"v": (B, D), "a": (B, D), "r": (B, D)}`` float32 features (gradients flow to them).
        hard: the batch's rows of ``plan.hard`` (same keys), (B,) int64.
        soft: the batch's rows of ``plan.soft`` (cross stage), (B, K) float32.
        plan: the epoch's memories and label space; cfg: MULT's section (``lambda_oclr``,
            ``oclr_sharpen``).

    Returns:
        (loss, parts): the scalar loss and the unweighted ``loss_ms``, ``loss_ma``, ``loss_oclr``.
    """
    mem = plan.memory
    if plan.stage == 1:
        loss_ms = mem.loss("v", f["v"], hard["label1"]) + mem.loss("v", f["a"], hard["label1"]) + \
            mem.loss("r", f["r"], hard["label2"])
        zero = loss_ms.new_zeros(())
        return loss_ms, {"loss_ms": loss_ms, "loss_ma": zero, "loss_oclr": zero}
    roles = _roles(plan.space)
    (u_vis, t_vis, _), (u_ir, t_ir, _), agg = roles["u_vis"], roles["u_ir"], roles["agg"]
    t_vis, t_ir = soft[t_vis], soft[t_ir]
    loss_ms = mem.soft_loss(u_vis, f["v"], t_vis) + mem.soft_loss(u_vis, f["a"], t_vis) + \
        mem.soft_loss(u_ir, f["r"], t_ir)
    for name, view, t, _ in roles["other"]:
        loss_ms = loss_ms + mem.soft_loss(name, f[view], soft[t])
    loss_ma = mem.soft_loss(agg, f["v"], t_vis) + mem.soft_loss(agg, f["a"], t_vis) + mem.soft_loss(agg, f["r"], t_ir)
    g = {k: mem.logits(agg, f[k]) for k in ("v", "a", "r")}
    s = cfg.oclr_sharpen
    loss_oclr = (oclr_loss(g["v"], mem.logits(u_vis, f["a"]), s) + oclr_loss(g["a"], mem.logits(u_vis, f["v"]), s)
                 + oclr_loss(g["r"], mem.logits(u_ir, f["r"]), s) + oclr_loss(g["v"], mem.logits(u_ir, f["a"]), s)
                 + oclr_loss(g["a"], mem.logits(u_ir, f["v"]), s) + oclr_loss(g["r"], mem.logits(u_vis, f["r"]), s))
    loss = loss_ms + loss_ma + cfg.lambda_oclr * loss_oclr
    return loss, {"loss_ms": loss_ms, "loss_ma": loss_ma, "loss_oclr": loss_oclr}


def mult_reference_losses(f: dict, hard: dict, soft: dict, plan: MultPlan,
                          cfg: MULTConfig) -> tuple[Tensor, dict, ReadTape]:
    """The loss of one MULT step under ``reference`` semantics (module docstring).

    Args:
        f, hard, soft, plan, cfg: as :func:`mult_losses`.

    Returns:
        (loss, parts, tape): as :func:`mult_losses`, and the reads, whose
        :meth:`~dmdl.memories.ReadTape.objective` the optimiser step backpropagates (it applies
        every memory update of the step).
    """
    mem, tape = plan.memory, ReadTape(plan.memory)
    if plan.stage == 1:
        loss_ms = (F.cross_entropy(tape.read("v", f["v"], hard["label1"]), hard["label1"])
                   + F.cross_entropy(tape.read("v", f["a"], hard["label1"]), hard["label1"])
                   + F.cross_entropy(tape.read("r", f["r"], hard["label2"]), hard["label2"]))
        zero = loss_ms.new_zeros(())
        return loss_ms, {"loss_ms": loss_ms, "loss_ma": zero, "loss_oclr": zero}, tape
    roles = _roles(plan.space)
    (u_vis, t_vis, h_vis), (u_ir, t_ir, h_ir), agg = roles["u_vis"], roles["u_ir"], roles["agg"]
    z = {("u", "v"): tape.read(u_vis, f["v"], hard[h_vis]), ("u", "a"): tape.read(u_vis, f["a"], hard[h_vis]),
         ("u", "r"): tape.read(u_ir, f["r"], hard[h_ir])}
    loss_ms = (soft_cross_entropy(z["u", "v"], soft[t_vis]) + soft_cross_entropy(z["u", "a"], soft[t_vis])
               + soft_cross_entropy(z["u", "r"], soft[t_ir]))
    for name, view, t, h in roles["other"]:
        loss_ms = loss_ms + soft_cross_entropy(tape.read(name, f[view], hard[h]), soft[t])
    g = {k: tape.read(agg, f[k], hard[h_ir if k == "r" else h_vis]) for k in ("v", "a", "r")}
    loss_ma = (soft_cross_entropy(g["v"], soft[t_vis]) + soft_cross_entropy(g["a"], soft[t_vis])
               + soft_cross_entropy(g["r"], soft[t_ir]))

    def frozen(name, view):  # a forward-time product (a copy: the reads update the memory in place)
        m = mem.memories[name]
        return F.normalize(f[view], dim=1) @ m.features.detach().clone().t() / m.temperature

    s = cfg.oclr_sharpen
    loss_oclr = (oclr_loss(g["v"], z["u", "a"], s) + oclr_loss(g["a"], z["u", "v"], s)
                 + oclr_loss(g["r"], z["u", "r"], s)
                 + oclr_loss(g["v"], frozen(u_ir, "a"), s) + oclr_loss(g["a"], frozen(u_ir, "v"), s)
                 + oclr_loss(g["r"], frozen(u_vis, "r"), s))
    loss = loss_ms + loss_ma + cfg.lambda_oclr * loss_oclr
    return loss, {"loss_ms": loss_ms, "loss_ma": loss_ma, "loss_oclr": loss_oclr}, tape


def mult_memory_updates(f: dict, hard: dict, plan: MultPlan) -> list[MemoryUpdate]:
    """The memory updates of one MULT step, in the order they are applied (module docstring);
    features detached."""
    f = {k: v.detach() for k, v in f.items()}
    if plan.stage == 1:
        return [MemoryUpdate("v", f["v"], hard["label1"]), MemoryUpdate("v", f["a"], hard["label1"]),
                MemoryUpdate("r", f["r"], hard["label2"])]
    roles = _roles(plan.space)
    (u_vis, _, h_vis), (u_ir, _, h_ir), agg = roles["u_vis"], roles["u_ir"], roles["agg"]
    return ([MemoryUpdate(u_vis, f["v"], hard[h_vis]), MemoryUpdate(u_vis, f["a"], hard[h_vis]),
             MemoryUpdate(u_ir, f["r"], hard[h_ir])]
            + [MemoryUpdate(name, f[view], hard[h]) for name, view, _, h in roles["other"]]
            + [MemoryUpdate(agg, f["v"], hard[h_vis]), MemoryUpdate(agg, f["a"], hard[h_vis]),
               MemoryUpdate(agg, f["r"], hard[h_ir])])


def mult_step(f: dict, hard: dict, soft: dict, plan: MultPlan, cfg: MULTConfig, semantics: str,
              backward: Callable[[Tensor, ReadTape | None], None] = step_backward,
              precision: Callable[[], AbstractContextManager] = nullcontext) -> tuple[Tensor, dict]:
    """One MULT step after the forward: the losses under ``semantics``
    (:func:`mult_reference_losses` or :func:`mult_losses`), the backward, and every memory update
    in its order (module docstring).

    Args:
        f, hard, soft, plan, cfg: as :func:`mult_losses`.
        semantics, backward, precision: the run's ``memory_semantics``, the backward (the
            trainer's optimiser step; default :func:`dmdl.memories.step_backward`) and the losses'
            autocast context, as in DMDL's ``dmdl_step``.

    Returns:
        (loss, parts): as :func:`mult_losses`.

    Raises:
        FloatingPointError: a non-finite loss, from ``backward`` (no memory is updated).
    """
    with precision():
        if semantics == "reference":
            loss, parts, tape = mult_reference_losses(f, hard, soft, plan, cfg)
        else:
            (loss, parts), tape = mult_losses(f, hard, soft, plan, cfg), None
    backward(loss, tape)  # with a tape: the released backward, every memory updated
    if tape is None:
        plan.memory.apply(mult_memory_updates(f, hard, plan))  # after backward: the forward-time memories
    return loss, parts


__all__ = ["MultPlan", "mult_losses", "mult_reference_losses", "mult_memory_updates", "mult_step"]
