"""The methods' training steps as pure functions (dmdl/methods/*/step.py), each against an independent
NumPy composition written here from the loss formulas (docs/dmdl.md, docs/mult.md), and the memory
update order of one step against a hand-written sequence.

The memories are the code's (read back as arrays); every loss term is recomputed in float64 by the
references of tests/_reference.py, summed with the documented weights and schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _reference import np_cai, np_memory_ce, np_mmd, np_normalize, np_sce, np_topk, np_triplet

from dmdl.memories import CrossModalMemory
from dmdl.methods.dmdl import DMDLConfig
from dmdl.methods.dmdl.step import EpochPlan, dmdl_losses, dmdl_memory_updates
from dmdl.methods.mult import MULTConfig
from dmdl.methods.mult.step import MultPlan, mult_losses, mult_memory_updates

B, D = 4, 6  # images per modality and batch (each in two views for DMDL), feature size
T = 0.05


def _arr(t):
    return t.detach().double().cpu().numpy()


# ------------------------------------------------------------------------------------------ DMDL
def dmdl_case(stage: int, anchor: str | None, refine: bool, inter: bool, w_tri: float, seed: int = 0):
    """Features (4B, D), labels, certainties and a plan whose memories come from random training
    features: stage 1 per-modality clusters (5 visible, 4 infrared); stage 2 unified ids 0..4, the
    anchor modality's memory covering all five and the mapped one {0, 2, 3, 4}."""
    rng = np.random.default_rng(seed)
    if stage == 1:
        lab = {"visible": np.repeat(np.arange(5), 3), "infrared": np.repeat(np.arange(4), 3)}
        batch = {"visible": np.array([0, 1, 3, 4]), "infrared": np.array([0, 1, 2, 3])}
    else:
        mapped = "visible" if anchor == "infrared" else "infrared"
        lab = {mapped: np.repeat([0, 2, 3, 4], 3), anchor: np.repeat(np.arange(5), 3)}
        batch = {mapped: np.array([0, 2, 3, 4]), anchor: np.array([1, 2, 0, 4])}
    feats = {m: torch.tensor(rng.normal(size=(len(v), D)), dtype=torch.float32) for m, v in lab.items()}
    memory = CrossModalMemory.build(feats, lab, T, 0.2, shared=stage == 2)
    out = torch.tensor(rng.normal(size=(4 * B, D)), dtype=torch.float32, requires_grad=True)
    y = {m: torch.as_tensor(np.concatenate([batch[m], batch[m]])) for m in lab}  # both views share a label
    w = {m: torch.tensor(np.tile(rng.uniform(0.3, 1.0, size=B), 2), dtype=torch.float32) for m in lab}
    plan = EpochPlan(stage, 0, lab, memory, {}, anchor, refine, inter, w_tri)
    return out, y, w, plan


def np_dmdl_targets(f, y, w, mem, k, refine, swap, num):
    """Soft targets: one-hot, or w onehot(y) + (1 - w) P_hat(swapped view) (docs/dmdl.md#A4.3, #A7.2)."""
    onehot = np.eye(num)[y]
    if not refine:
        return onehot
    pred = np_topk(f, mem, k, T)
    if swap:
        pred = np.concatenate([pred[B:], pred[:B]])
    return w[:, None] * onehot + (1 - w[:, None]) * pred


def np_dmdl_loss(out, y, w, plan, cfg: DMDLConfig):
    """The DMDL loss of one step, composed in NumPy from the formulas (docs/dmdl.md#A4.4, #A5.5, #A6-#A8)."""
    f = {"visible": out[: 2 * B], "infrared": out[2 * B:]}
    mem = {k: _arr(v.features) for k, v in plan.memory.memories.items()}
    row = {k: v.cpu().numpy() for k, v in plan.memory.id_to_row.items()}
    parts = dict.fromkeys(("loss_id", "loss_cai", "loss_cross", "loss_triplet", "loss_mmd"), 0.0)
    targets = {}
    for m in ("visible", "infrared"):
        rows = row[m][y[m]]
        if plan.stage == 1 and plan.refine:
            t = np_dmdl_targets(f[m], rows, w[m], mem[m], cfg.topk_stage1, True, cfg.swap_predictions, len(mem[m]))
            parts["loss_id"] += np_memory_ce(f[m], mem[m], t, T)
        else:
            parts["loss_id"] += np_memory_ce(f[m], mem[m], rows, T)
    if plan.stage == 2:
        k = len(mem["shared"])
        ids = {m: np.flatnonzero(row[m] >= 0)[np.argsort(row[m][row[m] >= 0])] for m in ("visible", "infrared")}
        prior_v = plan.memory.prior["visible"]
        for m in ("visible", "infrared"):
            targets[m] = np_dmdl_targets(f[m], y[m], w[m], mem["shared"], cfg.topk_stage2, plan.refine,
                                         cfg.swap_predictions, k)
            if cfg.cai:
                parts["loss_cai"] += np_cai(f[m], mem["visible"], mem["infrared"], ids["visible"], ids["infrared"],
                                            prior_v, targets[m], T)
        if cfg.cross_weight > 0 and cfg.cross_memory == "shared":
            parts["loss_cross"] = sum(np_memory_ce(f[m], mem["shared"], y[m], T) for m in ("visible", "infrared"))
        elif cfg.cross_weight > 0:
            mapped = "visible" if plan.anchor == "infrared" else "infrared"
            parts["loss_cross"] = np_memory_ce(f[mapped], mem[plan.anchor], row[plan.anchor][y[mapped]], T)
    if plan.w_tri > 0:
        parts["loss_triplet"] = sum(np_triplet(f[m], y[m], cfg.triplet_margin) for m in ("visible", "infrared"))
        if plan.inter:
            parts["loss_triplet"] += np_triplet(out, np.concatenate([y["visible"], y["infrared"]]), cfg.triplet_margin)
    if cfg.cbt_feature:
        parts["loss_mmd"] = sum(np_mmd(f[m][:B], f[m][B:]) for m in ("visible", "infrared"))
    loss = (parts["loss_id"] + cfg.lambda_cai * parts["loss_cai"] + cfg.cross_weight * parts["loss_cross"]
            + plan.w_tri * parts["loss_triplet"] + cfg.lambda_fa * parts["loss_mmd"])
    return loss, parts, targets


DMDL_CASES = {  # name: (stage, anchor, refine, inter, w_tri, config overrides)
    "stage1 one-hot": (1, None, False, False, 0.0, {}),
    "stage1 refined, triplet": (1, None, True, False, 0.5, {}),
    "stage1 refined, own views": (1, None, True, False, 0.0, {"swap_predictions": False}),
    "stage2 IR anchor, hard": (2, "infrared", False, False, 0.5, {}),
    "stage2 visible anchor, refined": (2, "visible", True, False, 1.0, {}),
    "stage2 paired epoch": (2, "infrared", True, True, 1.0, {}),
    "stage2 no CAI, PGM cross term": (2, "visible", False, False, 0.0,
                                      {"cai": False, "cross_weight": 0.25, "cbt_feature": False}),
    "stage2 shared cross term, weights": (2, "infrared", True, False, 0.5,
                                          {"cross_weight": 0.5, "cross_memory": "shared", "lambda_cai": 0.3,
                                           "lambda_fa": 2.0}),
}


@pytest.mark.parametrize("name", sorted(DMDL_CASES))
def test_dmdl_loss_composition_matches_numpy(name):
    stage, anchor, refine, inter, w_tri, over = DMDL_CASES[name]
    cfg = DMDLConfig(**over)
    out, y, w, plan = dmdl_case(stage, anchor, refine, inter, w_tri)
    loss, parts, targets = dmdl_losses(out, y, w, plan, cfg)
    want, want_parts, want_targets = np_dmdl_loss(_arr(out), {m: v.numpy() for m, v in y.items()},
                                                  {m: _arr(v) for m, v in w.items()}, plan, cfg)
    for k, v in want_parts.items():
        assert float(parts[k].detach()) == pytest.approx(v, rel=2e-5, abs=1e-6), k
    assert float(loss.detach()) == pytest.approx(want, rel=2e-5, abs=1e-6)
    assert set(targets) == set(want_targets)
    for m, t in want_targets.items():
        np.testing.assert_allclose(_arr(targets[m]), t, rtol=1e-5, atol=1e-6)
    loss.backward()  # every term reaches the features
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0


@pytest.mark.parametrize("stage,anchor,adaptive", [(1, None, True), (2, "infrared", True), (2, "visible", True),
                                                   (2, "infrared", False)])
def test_dmdl_memory_update_order(stage, anchor, adaptive):
    cfg = DMDLConfig(adaptive_momentum=adaptive)
    out, y, w, plan = dmdl_case(stage, anchor, refine=True, inter=False, w_tri=0.0)
    _, _, targets = dmdl_losses(out, y, w, plan, cfg)
    got = dmdl_memory_updates(out, y, targets, plan, cfg)
    vis, ir = out[: 2 * B], out[2 * B:]
    # the documented order, written out: own memories, then (stage 2) the anchor <- mapped samples,
    # then the shared memory <- infrared, then visible samples
    want = [("visible", vis, y["visible"]), ("infrared", ir, y["infrared"])]
    if stage == 2:
        mapped = (vis, y["visible"]) if anchor == "infrared" else (ir, y["infrared"])
        want += [(anchor, *mapped), ("shared", ir, y["infrared"]), ("shared", vis, y["visible"])]
    assert [u.memory for u in got] == [m for m, _, _ in want]
    for u, (_, f, lab) in zip(got, want):
        assert torch.equal(u.features, f.detach()) and torch.equal(u.labels, lab) and not u.features.requires_grad
    for u in got:
        if u.memory != "shared" or not adaptive:
            assert u.momentum is None
            continue
        m = "infrared" if u.features.data_ptr() == ir.data_ptr() else "visible"
        q = _arr(targets[m])[np.arange(2 * B), y[m].numpy()]
        np.testing.assert_allclose(_arr(u.momentum), 0.2 / np.maximum(q, 0.2), rtol=1e-6)  # Eqs. 12-13


# ------------------------------------------------------------------------------------------ MULT
K_VIS, K_IR = 5, 4
MEMORY_ROWS = {"v": K_VIS, "va": K_VIS, "rcm": K_VIS, "r": K_IR, "ra": K_IR, "vcm": K_IR}


def mult_case(stage: int, space: str | None, seed: int = 0):
    rng = np.random.default_rng(seed)
    names = ("v", "r") if stage == 1 else tuple(MEMORY_ROWS)
    cent = {k: torch.tensor(rng.normal(size=(MEMORY_ROWS[k], D)), dtype=torch.float32) for k in names}
    memory = CrossModalMemory.from_centroids(cent, T, 0.1)
    f = {k: torch.tensor(rng.normal(size=(B, D)), dtype=torch.float32, requires_grad=True) for k in "var"}
    hard = {"label1": torch.as_tensor(rng.integers(0, K_VIS, B)), "label2": torch.as_tensor(rng.integers(0, K_IR, B)),
            "cm_label1": torch.as_tensor(rng.integers(0, K_IR, B)),
            "cm_label2": torch.as_tensor(rng.integers(0, K_VIS, B))}
    soft = {"y1": rng.dirichlet(np.ones(K_VIS), B), "y2": rng.dirichlet(np.ones(K_IR), B),
            "cm_y1": rng.dirichlet(np.ones(K_IR), B), "cm_y2": rng.dirichlet(np.ones(K_VIS), B)}
    soft = {k: torch.tensor(v, dtype=torch.float32) for k, v in soft.items()}
    return f, hard, soft, MultPlan(stage, space, memory, hard, soft, {})


def np_mult_loss(f, hard, soft, plan, cfg: MULTConfig):
    """MULT's loss of one step, composed in NumPy from docs/mult.md#B4 (docs/mult.md)."""
    mem = {k: _arr(v.features) for k, v in plan.memory.memories.items()}

    def ce(name, view, t):
        return np_memory_ce(f[view], mem[name], t, T)

    def logits(name, view):
        return np_normalize(f[view]) @ mem[name].T / T

    if plan.stage == 1:
        ms = ce("v", "v", hard["label1"]) + ce("v", "a", hard["label1"]) + ce("r", "r", hard["label2"])
        return ms, {"loss_ms": ms, "loss_ma": 0.0, "loss_oclr": 0.0}
    if plan.space == "rgb":  # the visible clusters are the unified space
        u_vis, t_vis, u_ir, t_ir, agg = "v", soft["y1"], "rcm", soft["cm_y2"], "va"
        ms = ce("r", "r", soft["y2"])  # the infrared samples' own memory
    else:
        u_vis, t_vis, u_ir, t_ir, agg = "vcm", soft["cm_y1"], "r", soft["y2"], "ra"
        ms = ce("v", "v", soft["y1"]) + ce("v", "a", soft["y1"])
    ms += ce(u_vis, "v", t_vis) + ce(u_vis, "a", t_vis) + ce(u_ir, "r", t_ir)
    ma = ce(agg, "v", t_vis) + ce(agg, "a", t_vis) + ce(agg, "r", t_ir)
    s = cfg.oclr_sharpen
    oclr = (np_sce(logits(agg, "v"), logits(u_vis, "a"), s) + np_sce(logits(agg, "a"), logits(u_vis, "v"), s)
            + np_sce(logits(agg, "r"), logits(u_ir, "r"), s) + np_sce(logits(agg, "v"), logits(u_ir, "a"), s)
            + np_sce(logits(agg, "a"), logits(u_ir, "v"), s) + np_sce(logits(agg, "r"), logits(u_vis, "r"), s))
    return ms + ma + cfg.lambda_oclr * oclr, {"loss_ms": ms, "loss_ma": ma, "loss_oclr": oclr}


@pytest.mark.parametrize("stage,space,lam", [(1, None, 1.0), (2, "rgb", 1.0), (2, "ir", 1.0), (2, "rgb", 0.5)])
def test_mult_loss_composition_matches_numpy(stage, space, lam):
    cfg = MULTConfig(lambda_oclr=lam)
    f, hard, soft, plan = mult_case(stage, space)
    loss, parts = mult_losses(f, hard, soft, plan, cfg)
    want, want_parts = np_mult_loss({k: _arr(v) for k, v in f.items()}, {k: v.numpy() for k, v in hard.items()},
                                    {k: _arr(v) for k, v in soft.items()}, plan, cfg)
    for k, v in want_parts.items():
        assert float(parts[k].detach()) == pytest.approx(v, rel=2e-5, abs=1e-6), k
    assert float(loss.detach()) == pytest.approx(want, rel=2e-5, abs=1e-6)
    loss.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in f.values())


@pytest.mark.parametrize("stage,space", [(1, None), (2, "rgb"), (2, "ir")])
def test_mult_memory_update_order(stage, space):
    f, hard, soft, plan = mult_case(stage, space)
    got = [(u.memory, u.features, u.labels) for u in mult_memory_updates(f, hard, plan)]
    l1, l2, c1, c2 = hard["label1"], hard["label2"], hard["cm_label1"], hard["cm_label2"]
    v, a, r = f["v"], f["a"], f["r"]
    want = {  # the documented order: U_vis <- v, a; U_ir <- r; the other modality's own memory; G <- v, a, r
        (1, None): [("v", v, l1), ("v", a, l1), ("r", r, l2)],
        (2, "rgb"): [("v", v, l1), ("v", a, l1), ("rcm", r, c2), ("r", r, l2), ("va", v, l1), ("va", a, l1),
                     ("va", r, c2)],
        (2, "ir"): [("vcm", v, c1), ("vcm", a, c1), ("r", r, l2), ("v", v, l1), ("v", a, l1), ("ra", v, c1),
                    ("ra", a, c1), ("ra", r, l2)],
    }[(stage, space)]
    assert [g[0] for g in got] == [w[0] for w in want]
    for (_, gf, gl), (_, wf, wl) in zip(got, want):
        assert torch.equal(gf, wf.detach()) and torch.equal(gl, wl) and not gf.requires_grad
