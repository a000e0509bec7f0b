"""``memory_semantics: reference`` reproduces the released DMDL and MULT steps; ``forward`` does not.

The released code (Cluster-Contrast's memory op, as docs/decisions.md and issue 16 describe it)
is modelled here from that description alone, in plain PyTorch: a memory call is an autograd
Function whose forward returns ``x̂ M^T`` and whose backward computes ``grad @ M`` against the
buffer *as it is then* and afterwards updates the buffer with its samples (``m <- mu m + (1-mu)
x̂``, renormalised, in batch order, rows holding the sample's label). Autograd runs the calls'
backwards in reverse creation order, as it does in the released code. The loss compositions are
written from the papers' formulas (docs/dmdl.md docs/dmdl.md#A4-#A7, docs/mult.md docs/mult.md#B4): DMDL's stage-2
infrared call then visible call, each reading the visible then the infrared memory (its own, and
the anchor's when its samples are the mapped modality; otherwise a copy's product); MULT's reads
``U_vis(v), U_vis(a), U_ir(r), O, G(v), G(a), G(r)``.

For one step on the same features and memories, the feature gradients must agree within 1e-5
(relative, norm-wise) and every memory within 1e-6 after the step; under ``forward`` they differ.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmdl.memories import CrossModalMemory
from dmdl.methods.dmdl import DMDLConfig
from dmdl.methods.dmdl.step import EpochPlan, dmdl_step
from dmdl.methods.mult import MULTConfig
from dmdl.methods.mult.step import MultPlan, mult_step

B, D, T = 4, 8, 0.05  # samples per modality (two views each for DMDL), feature size, temperature


# --------------------------------------------------------------------- the released memory call
class LiveMemoryCall(torch.autograd.Function):
    """x̂ M^T; backward: the gradient against the live buffer, then the momentum update."""

    @staticmethod
    def forward(ctx, x_hat, labels, buffer, row_labels, momentum):
        ctx.save_for_backward(x_hat, labels)
        ctx.buffer, ctx.row_labels, ctx.momentum = buffer, row_labels, momentum
        return x_hat @ buffer.t()

    @staticmethod
    def backward(ctx, grad):
        x_hat, labels = ctx.saved_tensors
        grad_x = grad @ ctx.buffer
        with torch.no_grad():
            for x, y in zip(x_hat, labels):
                for r in torch.nonzero(ctx.row_labels == y).flatten():
                    row = ctx.momentum * ctx.buffer[r] + (1 - ctx.momentum) * x
                    ctx.buffer[r] = row / row.norm()
        return grad_x, None, None, None, None


def call(x_hat, labels, buffer, row_labels, momentum):
    return LiveMemoryCall.apply(x_hat, labels, buffer, row_labels, momentum)


def frozen(x_hat, buffer):
    return x_hat @ buffer.detach().clone().t()


def triplet(x, y, margin=0.3):
    """Batch-hard triplet on raw features (Hermans et al.), anchors with a negative only."""
    d = (x.pow(2).sum(1, keepdim=True) + x.pow(2).sum(1) - 2 * x @ x.t()).clamp_min(1e-12).sqrt()
    same = y[:, None] == y[None]
    ap = torch.where(same, d, torch.full_like(d, -1e9)).max(1).values
    an = torch.where(~same, d, torch.full_like(d, 1e9)).min(1).values
    keep = (~same).any(1)
    return (ap - an + margin).clamp_min(0)[keep].mean()


def mmd(s, t):
    """Multi-kernel MMD between two views (5 Gaussian kernels, bandwidth from the detached distances)."""
    z = torch.cat([s, t])
    n, m = len(s), 2 * len(s)
    d2 = (z[:, None] - z[None]).pow(2).sum(-1)
    b = d2.detach().sum() / (m * m - m) / 4
    k = sum(torch.exp(-d2 / (b * 2 ** q)) for q in range(5))
    off = ~torch.eye(m, dtype=torch.bool)
    ss = k[:n, :n][off[:n, :n]].sum()
    tt = k[n:, n:][off[n:, n:]].sum()
    return (ss + tt) / (n * (n - 1)) - (k[:n, n:].sum() + k[n:, :n].sum()) / n ** 2


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------- DMDL, stage 2
def dmdl_case(anchor, refine, inter, seed):
    """Stage-2 features (4B, D), unified labels 0..5 (the anchor memory covers all six, the mapped
    one {0, 2, 3, 5}), certainties and the plan; several samples share a label, so a memory row
    is updated more than once in a step."""
    rng = np.random.default_rng(seed)
    mapped = "visible" if anchor == "infrared" else "infrared"
    lab = {anchor: np.repeat(np.arange(6), 3), mapped: np.repeat([0, 2, 3, 5], 3)}
    feats = {m: torch.tensor(rng.normal(size=(len(v), D)), dtype=torch.float32) for m, v in lab.items()}
    memory = CrossModalMemory.build(feats, lab, T, 0.2, shared=True)
    batch = {anchor: np.array([1, 2, 2, 5]), mapped: np.array([0, 2, 2, 5])}
    y = {m: torch.as_tensor(np.concatenate([batch[m], batch[m]])) for m in lab}
    w = {m: torch.tensor(np.tile(rng.uniform(0.3, 1.0, size=B), 2), dtype=torch.float32) for m in lab}
    out = torch.tensor(rng.normal(size=(4 * B, D)), dtype=torch.float32)
    plan = EpochPlan(2, 0 if anchor == "infrared" else 1, lab, memory, {}, anchor, refine, inter, 1.0 if inter else 0.5)
    return out, y, w, plan


def released_dmdl_stage2(out, y, w, plan, cfg: DMDLConfig):
    """The released stage-2 step on copies of the plan's memories; returns (loss, grad, memories)."""
    out = out.clone().requires_grad_()
    mem = {k: v.features.detach().clone() for k, v in plan.memory.memories.items()}
    rows = {m: plan.memory.row_ids(m) for m in ("visible", "infrared")}
    n = len(out) // 2
    f = {"visible": out[:n], "infrared": out[n:]}
    k_all = mem["shared"].shape[0]
    targets = {}
    for m in ("visible", "infrared"):  # refined targets from the shared memory, before any update
        onehot = F.one_hot(y[m], k_all).float()
        if plan.refine:
            logits = F.normalize(f[m].detach(), dim=1) @ mem["shared"].t() / T
            top = logits.topk(min(cfg.topk_stage2, k_all), dim=1)
            pred = torch.zeros_like(logits).scatter(1, top.indices, F.softmax(top.values, dim=1))
            pred = torch.cat([pred[B:], pred[:B]])  # the other view's prediction
            onehot = w[m][:, None] * onehot + (1 - w[m][:, None]) * pred
        targets[m] = onehot
    loss = out.new_zeros(())
    prior = {"visible": plan.memory.prior["visible"], "infrared": 1 - plan.memory.prior["visible"]}
    for m in ("infrared", "visible"):  # the infrared call, then the visible call
        x_hat = F.normalize(f[m], dim=1)
        z = {}
        for name in ("visible", "infrared"):
            reads = name == m or name == plan.anchor
            z[name] = (call(x_hat, y[m], mem[name], rows[name], 0.2) if reads else frozen(x_hat, mem[name])) / T
        own_rows = torch.tensor([int(torch.nonzero(rows[m] == lab)) for lab in y[m]])  # rows of the own memory
        loss = loss + F.cross_entropy(z[m], own_rows)
        p_do = sum(prior[name] * torch.zeros(len(x_hat), k_all).index_copy(1, rows[name], F.softmax(z[name], dim=1))
                   for name in ("visible", "infrared"))
        loss = loss + cfg.lambda_cai * -(targets[m] * p_do.log()).sum(1).mean()
        with torch.no_grad():  # the shared memory, in the forward pass, adaptive momentum
            for x, lab, t in zip(x_hat, y[m], targets[m]):
                eta = 0.2 / max(float(t[lab]), 0.2)
                row = eta * mem["shared"][lab] + (1 - eta) * x
                mem["shared"][lab] = row / row.norm()
    tri = triplet(f["visible"], y["visible"]) + triplet(f["infrared"], y["infrared"])
    if plan.inter:
        tri = tri + triplet(out, torch.cat([y["visible"], y["infrared"]]))
    loss = loss + plan.w_tri * tri
    loss = loss + cfg.lambda_fa * sum(mmd(f[m][:B], f[m][B:]) for m in ("visible", "infrared"))
    loss.backward()
    return loss.detach(), out.grad, mem


def ours_dmdl(out, y, w, plan, cfg, semantics):
    out = out.clone().requires_grad_()
    loss, _ = dmdl_step(out, y, w, plan, cfg, semantics)
    return loss.detach(), out.grad, {k: v.features for k, v in plan.memory.memories.items()}


DMDL_CASES = [  # (anchor, refined targets, paired inter-modality epoch)
    ("infrared", False, False), ("infrared", True, False), ("visible", False, False), ("visible", True, False),
    ("infrared", True, True), ("visible", True, True),
]


@pytest.mark.parametrize("anchor,refine,inter", DMDL_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_dmdl_stage2_reference_is_the_released_step(anchor, refine, inter, seed):
    cfg = DMDLConfig()
    out, y, w, plan = dmdl_case(anchor, refine, inter, seed)
    want_loss, want_grad, want_mem = released_dmdl_stage2(out, y, w, plan, cfg)
    loss, grad, mem = ours_dmdl(out, y, w, plan, cfg, "reference")
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
    assert rel(grad, want_grad) < 1e-5
    for name in ("visible", "infrared", "shared"):
        torch.testing.assert_close(mem[name], want_mem[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("anchor", ["infrared", "visible"])
def test_dmdl_stage2_forward_differs_where_a_memory_is_read_twice(anchor):
    """The infrared call is created first, so its reads see memories the visible reads moved: on
    even epochs (infrared anchor) its own memory M^I, which the visible samples also read; on odd
    epochs M^V, which it reads for CAI. Only on even epochs do the anchor memory's writers come in
    another order than ``forward``'s (own samples, then mapped ones)."""
    cfg = DMDLConfig()
    out, y, w, plan = dmdl_case(anchor, refine=True, inter=False, seed=0)
    _, want_grad, want_mem = released_dmdl_stage2(out, y, w, plan, cfg)
    _, grad, mem = ours_dmdl(out, y, w, plan, cfg, "forward")
    n = len(out) // 2
    assert rel(grad[n:], want_grad[n:]) > 1e-3  # the infrared rows
    assert rel(grad[:n], want_grad[:n]) < 1e-5  # the visible rows: read last, against unmoved memories
    diff = {m: float((mem[m] - want_mem[m]).abs().max()) for m in ("visible", "infrared")}
    if anchor == "infrared":
        assert diff["infrared"] > 1e-3 and diff["visible"] < 1e-6
    else:
        assert diff["infrared"] < 1e-6 and diff["visible"] < 1e-6


# ------------------------------------------------------------------------------- DMDL, stage 1
def test_dmdl_stage1_reads_each_memory_once_so_both_semantics_are_the_released_step():
    """Stage 1 (docs/dmdl.md docs/dmdl.md#A4): one read of each modality memory by both views, refined soft
    targets; the released call updates after its own gradient, which is the forward-time one."""
    rng = np.random.default_rng(3)
    cfg = DMDLConfig()
    lab = {"visible": np.repeat(np.arange(5), 3), "infrared": np.repeat(np.arange(4), 3)}
    feats = {m: torch.tensor(rng.normal(size=(len(v), D)), dtype=torch.float32) for m, v in lab.items()}
    memory = CrossModalMemory.build(feats, lab, T, 0.2)
    y = {"visible": torch.tensor([0, 1, 1, 4] * 2), "infrared": torch.tensor([0, 0, 2, 3] * 2)}
    w = {m: torch.tensor(np.tile(rng.uniform(0.3, 1, B), 2), dtype=torch.float32) for m in lab}
    out = torch.tensor(rng.normal(size=(4 * B, D)), dtype=torch.float32)
    plan = EpochPlan(1, 0, lab, memory, {}, None, True, False, 0.0)
    cfg_no_mmd = DMDLConfig(cbt_feature=False)
    # released: per modality, CE_soft(read, refined targets) with the modality memory as the read
    x = out.clone().requires_grad_()
    mem = {k: v.features.detach().clone() for k, v in memory.memories.items()}
    loss = x.new_zeros(())
    for m, rows in (("infrared", slice(2 * B, None)), ("visible", slice(0, 2 * B))):
        f = x[rows]
        logits = F.normalize(f.detach(), dim=1) @ mem[m].t() / T
        top = logits.topk(cfg.topk_stage1, dim=1)
        pred = torch.zeros_like(logits).scatter(1, top.indices, F.softmax(top.values, dim=1))
        t = w[m][:, None] * F.one_hot(y[m], len(mem[m])) + (1 - w[m][:, None]) * torch.cat([pred[B:], pred[:B]])
        z = call(F.normalize(f, dim=1), y[m], mem[m], torch.arange(len(mem[m])), 0.2) / T
        loss = loss + -(t * F.log_softmax(z, dim=1)).sum(1).mean()
    loss.backward()
    _, grad, ours = ours_dmdl(out, y, w, plan, cfg_no_mmd, "forward")
    assert rel(grad, x.grad) < 1e-5
    for m in ("visible", "infrared"):
        torch.testing.assert_close(ours[m], mem[m], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------- MULT
K_VIS, K_IR = 5, 4
ROWS = {"v": K_VIS, "va": K_VIS, "rcm": K_VIS, "r": K_IR, "ra": K_IR, "vcm": K_IR}


def mult_case(stage, space, seed):
    rng = np.random.default_rng(seed)
    names = ("v", "r") if stage == 1 else tuple(ROWS)
    memory = CrossModalMemory.from_centroids(
        {k: torch.tensor(rng.normal(size=(ROWS[k], D)), dtype=torch.float32) for k in names}, T, 0.1)
    f = {k: torch.tensor(rng.normal(size=(B, D)), dtype=torch.float32) for k in "var"}
    hard = {"label1": torch.tensor([0, 1, 1, 3]), "label2": torch.tensor([2, 2, 0, 3]),
            "cm_label1": torch.tensor([1, 1, 3, 0]), "cm_label2": torch.tensor([4, 0, 0, 2])}
    soft = {"y1": rng.dirichlet(np.ones(K_VIS), B), "y2": rng.dirichlet(np.ones(K_IR), B),
            "cm_y1": rng.dirichlet(np.ones(K_IR), B), "cm_y2": rng.dirichlet(np.ones(K_VIS), B)}
    soft = {k: torch.tensor(v, dtype=torch.float32) for k, v in soft.items()}
    return f, hard, soft, MultPlan(stage, space, memory, hard, soft, {})


def sce(pred, target, sharpen=0.2):
    """MULT's OCLR term: -sum softmax(target / s) log softmax(pred), batch mean (target not detached)."""
    return -(F.softmax(target / sharpen, dim=1) * F.log_softmax(pred, dim=1)).sum(1).mean()


def released_mult(f, hard, soft, plan):
    x = {k: v.clone().requires_grad_() for k, v in f.items()}
    mem = {k: v.features.detach().clone() for k, v in plan.memory.memories.items()}
    hat = {k: F.normalize(v, dim=1) for k, v in x.items()}

    def read(name, view, labels):
        return call(hat[view], labels, mem[name], torch.arange(len(mem[name])), 0.1) / T

    if plan.stage == 1:
        loss = (F.cross_entropy(read("v", "v", hard["label1"]), hard["label1"])
                + F.cross_entropy(read("v", "a", hard["label1"]), hard["label1"])
                + F.cross_entropy(read("r", "r", hard["label2"]), hard["label2"]))
    else:
        if plan.space == "rgb":  # even epochs: m_v(v), m_v(a), m_rcm(r), m_r(r), m_va(v, a, r)
            u_vis, t_vis, h_vis, u_ir, t_ir, h_ir, agg = "v", "y1", "label1", "rcm", "cm_y2", "cm_label2", "va"
            outs = [read("v", "v", hard["label1"]), read("v", "a", hard["label1"]), read("rcm", "r", hard["cm_label2"])]
            own = [(read("r", "r", hard["label2"]), "y2")]
        else:  # odd epochs: m_vcm(v), m_vcm(a), m_r(r), m_v(v), m_v(a), m_ra(v, a, r)
            u_vis, t_vis, h_vis, u_ir, t_ir, h_ir, agg = "vcm", "cm_y1", "cm_label1", "r", "y2", "label2", "ra"
            outs = [read("vcm", "v", hard["cm_label1"]), read("vcm", "a", hard["cm_label1"]), read("r", "r", hard["label2"])]
            own = [(read("v", "v", hard["label1"]), "y1"), (read("v", "a", hard["label1"]), "y1")]
        g = [read(agg, "v", hard[h_vis]), read(agg, "a", hard[h_vis]), read(agg, "r", hard[h_ir])]

        def ce(z, t):
            return F.cross_entropy(z, soft[t])

        loss_ms = ce(outs[0], t_vis) + ce(outs[1], t_vis) + ce(outs[2], t_ir) + sum(ce(z, t) for z, t in own)
        loss_ma = ce(g[0], t_vis) + ce(g[1], t_vis) + ce(g[2], t_ir)
        loss_oclr = (sce(g[0], outs[1]) + sce(g[1], outs[0]) + sce(g[2], outs[2])
                     + sce(g[0], frozen(hat["a"], mem[u_ir]) / T) + sce(g[1], frozen(hat["v"], mem[u_ir]) / T)
                     + sce(g[2], frozen(hat["r"], mem[u_vis]) / T))
        loss = loss_ms + loss_ma + loss_oclr
    loss.backward()
    return loss.detach(), torch.cat([x[k].grad for k in "var"]), mem


def ours_mult(f, hard, soft, plan, semantics):
    x = {k: v.clone().requires_grad_() for k, v in f.items()}
    loss, _ = mult_step(x, hard, soft, plan, MULTConfig(), semantics)
    return loss.detach(), torch.cat([x[k].grad for k in "var"]), {k: v.features for k, v in plan.memory.memories.items()}


@pytest.mark.parametrize("stage,space", [(1, None), (2, "rgb"), (2, "ir")])
@pytest.mark.parametrize("seed", [0, 1])
def test_mult_reference_is_the_released_step(stage, space, seed):
    want_loss, want_grad, want_mem = released_mult(*mult_case(stage, space, seed))
    loss, grad, mem = ours_mult(*mult_case(stage, space, seed), "reference")
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
    assert rel(grad, want_grad) < 1e-5
    for name in want_mem:
        torch.testing.assert_close(mem[name], want_mem[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("stage,space", [(1, None), (2, "rgb"), (2, "ir")])
def test_mult_forward_differs_where_a_memory_is_read_twice(stage, space):
    _, want_grad, want_mem = released_mult(*mult_case(stage, space, 0))
    _, grad, mem = ours_mult(*mult_case(stage, space, 0), "forward")
    assert rel(grad[:B], want_grad[:B]) > 1e-3  # the v view's reads see memories that a and r moved
    assert (mem["v"] - want_mem["v"]).abs().max() > 1e-3  # m_v: updated a then v by the released code


# ------------------------------------------------------------------- the other released choices
def test_resize_follows_each_methods_released_code():
    from dmdl.config import load_config
    from dmdl.data.transforms import test_transform

    assert load_config("regdb-cpu").resize() == "bicubic"  # DMDL's code
    assert load_config("regdb-cpu-mult").resize() == "bilinear"  # MULT's code: torchvision's default
    assert load_config("regdb-cpu-mult", ["--resize", "bicubic"]).resize() == "bicubic"
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 20, 3), dtype=np.uint8))
    a, b = test_transform(64, 32, "bicubic")(img), test_transform(64, 32, "bilinear")(img)
    assert a.shape == b.shape == (3, 64, 32) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="interpolation"):
        test_transform(64, 32, "nearest")


def test_loss_precision_is_fp16_autocast_with_tf32_only_when_asked():
    from dmdl.training.context import RunContext, _tf32_autocast

    ctx = RunContext(model=torch.nn.Linear(2, 2), device=torch.device("cpu"), train={}, height=1, width=1,
                     batch_size=1, amp_dtype=None, amp_losses=True)
    with ctx.loss_precision():  # amp is off (always on the CPU): the losses stay float32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with _tf32_autocast(torch.device("cpu")):  # what amp + amp_losses run on CUDA, here on the CPU
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
