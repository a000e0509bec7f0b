"""MULT's training step as pure functions of features, labels and memories (algorithm.md §B4):
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

CE terms run on :func:`dmdl.ops.memory_loss` (soft β-labels in the cross stage); SCE is
:func:`dmdl.losses.oclr_loss` on plain logits (its targets keep their gradient, as MULT's).
Memory updates (hard labels; :func:`mult_memory_updates`), applied after ``backward()``:
``U_vis`` <- v then a; ``U_ir`` <- r; ``O``; ``G`` <- v, a, r.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from dmdl.losses import oclr_loss
from dmdl.memories import CrossModalMemory, MemoryUpdate
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


__all__ = ["MultPlan", "mult_losses", "mult_memory_updates"]
