"""Differential check: one training step through the RELEASED DMDL / MULT code vs. dmdl's
``memory_semantics: reference`` (and ``forward``) step functions on identical inputs.

The released memory ops (DMDL cm_causal_softtopk.CM / cm_topk.CM, MULT memory.CM) and the released
trainers' ``train`` methods (DMDL clustercontrast/trainers.py, MULT trainer.py) are imported
unmodified from clones of the two repositories (extracted with ``git show HEAD:...`` into a
temporary folder) and run for one iteration with stub encoder / loader / optimizer objects that hand
them our synthetic features. The released code is not part of dmdl: clone it yourself.

    git clone https://github.com/priester3/DMDL && git -C DMDL checkout 2bbf7ec
    git clone https://github.com/FranklinLingfeng/code_for_MULT && git -C code_for_MULT checkout 4b38175
    OMP_NUM_THREADS=1 python tools/released_diffcheck.py --dmdl-repo DMDL --mult-repo code_for_MULT

Prints one row per case (DMDL stage 1, stage 2 on even / odd / refined / paired epochs, MULT single
and cross): the largest relative feature-gradient difference and the largest absolute memory
difference after the step, under ``memory_semantics: reference`` (target: 1e-5 and 1e-6) and under
``forward`` (which must differ wherever a memory is read twice in a step); ``--out`` also writes it.
"""
import argparse
import contextlib
import io
import os
import tempfile
os.environ.setdefault("OMP_NUM_THREADS", "1")
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
warnings.filterwarnings("ignore")

_parser = argparse.ArgumentParser(description="one step of the released DMDL / MULT code against dmdl's")
_parser.add_argument("--dmdl-repo", required=True, help="a clone of priester3/DMDL (tested at 2bbf7ec)")
_parser.add_argument("--mult-repo", required=True, help="a clone of FranklinLingfeng/code_for_MULT (tested at 4b38175)")
_parser.add_argument("--out", help="also write the table to this file")
ARGS = _parser.parse_args()
REL = Path(tempfile.mkdtemp(prefix="dmdl_released_")) / "released"
MIRRORS = {
    "dmdl": (ARGS.dmdl_repo, [
        "clustercontrast/__init__.py", "clustercontrast/dmdl/__init__.py", "clustercontrast/dmdl/acceleration.py",
        "clustercontrast/dmdl/defaults.py", "clustercontrast/dmdl/legacy.py", "clustercontrast/loss/__init__.py",
        "clustercontrast/loss/triplet.py", "clustercontrast/utils/__init__.py", "clustercontrast/utils/loss.py",
        "clustercontrast/utils/meters.py", "clustercontrast/models/__init__.py",
        "clustercontrast/models/cm_topk.py", "clustercontrast/models/cm_causal_softtopk.py",
        "clustercontrast/trainers.py", "clustercontrast/trainers_regdb.py", "dmdl_regdb.py"]),
    "mult": (ARGS.mult_repo, [
        "memory.py", "trainer.py", "optimizer.py", "utils/__init__.py", "utils/meters.py", "main.py"]),
}


def extract():
    for name, (repo, files) in MIRRORS.items():
        commit = subprocess.check_output(["git", "-C", repo, "rev-parse", "HEAD"], text=True).strip()
        for f in files:
            dst = REL / name / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(subprocess.check_output(["git", "-C", repo, "show", f"HEAD:{f}"]))
        (REL / name / "COMMIT").write_text(commit + "\n")


extract()

# ------------------------------------------------------------------ import the released code
# Stubs (no released file is edited): (1) Tensor.cuda -> identity, the released DMDL trainers call
# `.float().cuda()` unconditionally (trainers.py:58,65,183,190,309,316) and this host has no GPU;
# (2) the package `clustercontrast.models` is registered without running its __init__ (which
# imports the ResNet/AGW backbones, unused here), so its submodules cm_topk / cm_causal_softtopk
# import as released.
torch.Tensor.cuda = lambda self, *a, **k: self
sys.path.insert(0, str(REL / "dmdl"))
import clustercontrast  # noqa: E402

_models = types.ModuleType("clustercontrast.models")
_models.__path__ = [str(REL / "dmdl" / "clustercontrast" / "models")]
sys.modules["clustercontrast.models"] = _models
from clustercontrast.models.cm_topk import ClusterMemory as RelStage1Memory  # noqa: E402
from clustercontrast.models.cm_causal_softtopk import ClusterMemory as RelStage2Memory  # noqa: E402
from clustercontrast.trainers import (CausalTrainer_s1_woCAM, CausalTrainer_s2_woCAM,  # noqa: E402
                                      CausalTrainer_s2_woCAM_inter)
from clustercontrast.dmdl.acceleration import AmpController  # noqa: E402

sys.path.insert(0, str(REL / "mult"))
from memory import ClusterMemory as RelMultMemory  # noqa: E402
from trainer import AssignTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dmdl.config import parse_schedule  # noqa: E402
from dmdl.losses import triplet_weight  # noqa: E402
from dmdl.memories import CrossModalMemory  # noqa: E402
from dmdl.methods.dmdl import DMDLConfig  # noqa: E402
from dmdl.methods.dmdl.step import EpochPlan, dmdl_step  # noqa: E402
from dmdl.methods.mult import MULTConfig  # noqa: E402
from dmdl.methods.mult.step import MultPlan, mult_step  # noqa: E402

V, I = "visible", "infrared"


def rel(a, b):
    return float((a - b).norm() / b.norm())


def maxabs(a: dict, b: dict):
    return max(float((a[k].detach() - b[k].detach()).abs().max()) for k in b)


class Stub:
    """Optimizer / encoder stand-ins: nothing to step, features handed in."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.param_groups = [{"lr": 0.0}]

    def train(self, *a):
        pass

    def zero_grad(self, *a, **k):
        pass

    def step(self):
        pass


class RecordingAmp(AmpController):
    """The released AmpController (amp off on a CPU), recording the step's loss."""

    def step(self, loss, optimizer):
        self.loss = loss.detach().clone()
        super().step(loss, optimizer)


# ------------------------------------------------------------------------------- DMDL
def dmdl_plan(stage, epoch, lab, memory, cfg):
    """Our EpochPlan fields as DMDL.plan derives them (dmdl/methods/dmdl/method.py:150-162)."""
    if stage == 1:
        refine = cfg.cbt_label and epoch >= cfg.refine_from_stage1
        w_tri = triplet_weight(parse_schedule(cfg.stage1_triplet), epoch)
        return EpochPlan(1, epoch, lab, memory, {}, None, refine, False, w_tri)
    inter = 0 <= cfg.inter_modality_from <= epoch
    refine = cfg.cbt_label and (epoch >= cfg.refine_from_stage2 or inter)
    w_tri = 1.0 if inter else triplet_weight(parse_schedule(cfg.stage2_triplet), epoch)
    anchor = I if epoch % 2 == 0 else V
    return EpochPlan(2, epoch, lab, memory, {}, anchor, refine, inter, w_tri)


def dmdl_inputs(stage, epoch, size, seed):
    """Labels, memory-building features, batch labels (B per view), certainties, step features."""
    rng = np.random.default_rng(seed)
    if size == "small":
        D, B, K, k_map, n_id = 8, 4, 6, [0, 2, 3, 5], 2
    else:
        D, B, K, k_map, n_id = 128, 16, 60, sorted(rng.choice(60, 40, replace=False).tolist()), 4
    per = B // n_id
    if stage == 1:
        lab = {V: np.repeat(np.arange(K), 3), I: np.repeat(np.arange(len(k_map)), 3)}
        ids = {V: rng.choice(K, n_id, replace=False), I: rng.choice(len(k_map), n_id, replace=False)}
    else:
        anchor = I if epoch % 2 == 0 else V
        mapped = V if anchor == I else I
        lab = {anchor: np.repeat(np.arange(K), 3), mapped: np.repeat(k_map, 3)}
        shared = rng.choice(k_map, n_id, replace=False)  # paired / overlapping identities
        ids = {anchor: np.concatenate([shared[: n_id // 2], rng.choice(K, n_id - n_id // 2, replace=False)]),
               mapped: shared}
    batch = {m: np.repeat(ids[m], per) for m in (V, I)}
    feats = {m: rng.normal(size=(len(lab[m]), D)) for m in (V, I)}
    w = {m: rng.uniform(0.3, 1.0, size=B) if (stage == 2 and epoch >= 5) or epoch >= 30 else np.ones(B)
         for m in (V, I)}
    out = rng.normal(size=(4 * B, D))
    return lab, feats, batch, w, out


def build_dmdl_memory(stage, lab, feats):
    f = {m: torch.tensor(v, dtype=torch.float32) for m, v in feats.items()}
    return CrossModalMemory.build(f, lab, 0.05, 0.2, shared=stage == 2)


def released_dmdl(stage, epoch, lab, feats, batch, w, out0):
    """One iteration of the released trainer.train (trainers.py) on stub encoder/loaders."""
    mem0 = build_dmdl_memory(stage, lab, feats)  # the same centroids ours starts from
    out = torch.tensor(out0, dtype=torch.float32).requires_grad_()
    n = len(out) // 2
    encoder = lambda x1, x2, modal=0, label_1=None, label_2=None: (None, out[:n], out[n:], label_1, label_2, None, None)  # noqa: E731
    encoder.train = lambda *a: None
    B = len(batch[V])
    dummy = torch.zeros(B, 1)

    def item(m):  # (imgs, imgs1, fnames, pids, cpids, cids, indexes); cpids float64 as the default collate makes them
        return (dummy, dummy, None, torch.as_tensor(batch[m]), torch.as_tensor(w[m], dtype=torch.float64),
                torch.zeros(B, dtype=torch.long), torch.arange(B))

    class Loader:
        def __init__(self, it):
            self.it = it

        def next(self):
            return self.it

        def __len__(self):
            return 1

    args = types.SimpleNamespace(amp_mode="no-amp")
    if stage == 1:
        trainer = CausalTrainer_s1_woCAM(encoder)
        mems = {}
        for m, attr in ((I, "memory_ir"), (V, "memory_rgb")):  # dmdl_regdb.py:442-450
            cm = RelStage1Memory(out.shape[1], mem0.memories[m].num_clusters, topk=3, temp=0.05, momentum=0.2)
            cm.features = mem0.memories[m].features.detach().clone()
            setattr(trainer, attr, cm)
            mems[m] = cm
        get = lambda: {V: mems[V].features, I: mems[I].features}  # noqa: E731
    else:
        cm = RelStage2Memory(out.shape[1], len(mem0.row_ids(V)), len(mem0.row_ids(I)), mem0.num_ids, topk=10,
                             temp=0.05, momentum=0.2)  # dmdl_regdb.py:740-751, 793-794
        cm.features_rgb = mem0.memories[V].features.detach().clone()
        cm.features_ir = mem0.memories[I].features.detach().clone()
        cm.pids_rgb = mem0.row_ids(V).clone()
        cm.pids_ir = mem0.row_ids(I).clone()
        cm.features_all = mem0.memories["shared"].features.detach().clone()
        cm.pro_rgb, cm.pro_ir = mem0.prior[V], mem0.prior[I]
        inter = epoch >= 25  # dmdl_regdb.py:630-634
        trainer = (CausalTrainer_s2_woCAM_inter if inter else CausalTrainer_s2_woCAM)(encoder, cm)
        get = lambda: {V: cm.features_rgb, I: cm.features_ir, "shared": cm.features_all}  # noqa: E731
    trainer._amp_controller = RecordingAmp(args)
    trainer._amp_controller.requested_mode = "no-amp"
    if stage == 2 and epoch >= 25:
        both = item(V) + item(I)
        trainer.train(args, epoch, Loader(both), Stub(), train_iters=1, miu=0.5)
    else:
        trainer.train(args, epoch, Loader(item(I)), Loader(item(V)), Stub(), train_iters=1,
                      **({} if stage == 1 else {"miu": 0.5}))
    return trainer._amp_controller.loss, out.grad.clone(), {k: v.detach().clone() for k, v in get().items()}


def ours_dmdl(stage, epoch, lab, feats, batch, w, out0, semantics):
    """Our step: dmdl_step, as DMDL.step calls it."""
    cfg = DMDLConfig()
    memory = build_dmdl_memory(stage, lab, feats)
    plan = dmdl_plan(stage, epoch, lab, memory, cfg)
    out = torch.tensor(out0, dtype=torch.float32).requires_grad_()
    y = {m: torch.as_tensor(np.concatenate([batch[m], batch[m]])) for m in (V, I)}
    wt = {m: torch.tensor(np.tile(w[m], 2), dtype=torch.float32) for m in (V, I)}
    loss, _ = dmdl_step(out, y, wt, plan, cfg, semantics)
    return loss.detach(), out.grad.clone(), {k: v.features.detach().clone() for k, v in memory.memories.items()}


# ------------------------------------------------------------------------------- MULT
def mult_inputs(stage, size, seed):
    rng = np.random.default_rng(seed)
    D, B, KV, KI = (8, 4, 5, 4) if size == "small" else (128, 16, 50, 40)
    rows = {"v": KV, "va": KV, "rcm": KV, "r": KI, "ra": KI, "vcm": KI}
    names = ("v", "r") if stage == 1 else tuple(rows)
    cent = {k: rng.normal(size=(rows[k], D)) for k in names}
    f = {k: rng.normal(size=(B, D)) for k in "var"}
    hard = {"label1": rng.integers(0, KV, B), "label2": rng.integers(0, KI, B),
            "cm_label1": rng.integers(0, KI, B), "cm_label2": rng.integers(0, KV, B)}
    soft = {"y1": rng.dirichlet(np.ones(KV), B), "y2": rng.dirichlet(np.ones(KI), B),
            "cm_y1": rng.dirichlet(np.ones(KI), B), "cm_y2": rng.dirichlet(np.ones(KV), B)}
    return cent, f, hard, soft


def mult_memory(cent):
    return CrossModalMemory.from_centroids({k: torch.tensor(v, dtype=torch.float32) for k, v in cent.items()},
                                           0.05, 0.1)


def released_mult(stage, epoch, cent, f0, hard, soft):
    """One iteration of the released AssignTrainer.train (trainer.py) on a stub encoder/loader."""
    mem0 = mult_memory(cent)  # normalised centroids, as ours
    x = {k: torch.tensor(v, dtype=torch.float32).requires_grad_() for k, v in f0.items()}

    class Enc:
        def train(self):
            pass

        def __call__(self, input1, input2):
            return torch.cat([x["v"], x["a"]]), x["r"], torch.zeros(2 * B, 2), torch.zeros(B, 2)  # dis_* unused

    B = len(x["v"])
    trainer = AssignTrainer(None, Enc(), B, 1)
    for k in mem0.memories:  # main.py:387-416, momentum = momentum_cross = 0.1 (main.py:576-581)
        m = RelMultMemory(x["v"].shape[1], mem0.memories[k].num_clusters, temp=0.05, momentum=0.1)
        m.features = mem0.memories[k].features.detach().clone()
        setattr(trainer, "m_" + k, m)
    B = len(x["v"])
    img = torch.zeros(B, 1)
    h = {k: torch.as_tensor(v) for k, v in hard.items()}
    s = {k: torch.tensor(v, dtype=torch.float32) for k, v in soft.items()}
    batch = (img, img, img, h["label1"], h["label2"], h["cm_label1"], h["cm_label2"], s["y1"], s["y2"],
             s["cm_y1"], s["cm_y2"])
    args = types.SimpleNamespace(lr=0.0, print_step=10 ** 9)
    with contextlib.redirect_stdout(io.StringIO()):  # its 'epoch:' line
        trainer.train(args, epoch, [batch], Stub(), torch.device("cpu"), stage="single" if stage == 1 else "cross")
    grad = torch.cat([x[k].grad for k in "var"])
    return grad, {k: getattr(trainer, "m_" + k).features.detach().clone() for k in mem0.memories}


def ours_mult(stage, epoch, cent, f0, hard, soft, semantics):
    """Our step: mult_step, as MULT.step calls it."""
    memory = mult_memory(cent)
    h = {k: torch.as_tensor(v) for k, v in hard.items()}
    s = {k: torch.tensor(v, dtype=torch.float32) for k, v in soft.items()}
    plan = MultPlan(stage, None if stage == 1 else ("rgb" if epoch % 2 == 0 else "ir"), memory, h, s, {})
    x = {k: torch.tensor(v, dtype=torch.float32).requires_grad_() for k, v in f0.items()}
    mult_step(x, h, s, plan, MULTConfig(), semantics)
    return torch.cat([x[k].grad for k in "var"]), {k: v.features.detach().clone() for k, v in memory.memories.items()}


# ------------------------------------------------------------------------------- cases
DMDL_CASES = [  # (label, stage, epoch)
    ("DMDL s1 e10 (hard targets)", 1, 10),
    ("DMDL s1 e31 (refined, w<1)", 1, 31),
    ("DMDL s2 e2 even/IR anchor", 2, 2),
    ("DMDL s2 e3 odd/VIS anchor", 2, 3),
    ("DMDL s2 e12 even refined", 2, 12),
    ("DMDL s2 e13 odd refined", 2, 13),
    ("DMDL s2 e26 inter even", 2, 26),
    ("DMDL s2 e27 inter odd", 2, 27),
]
MULT_CASES = [("MULT single e3", 1, 3), ("MULT cross e40 rgb", 2, 40), ("MULT cross e41 ir", 2, 41)]


def main():
    rows = []
    for size in ("small", "large"):
        for seed in (0, 1):
            for label, stage, epoch in DMDL_CASES:
                inp = dmdl_inputs(stage, epoch, size, seed)
                rl, rg, rm = released_dmdl(stage, epoch, *inp)
                ol, og, om = ours_dmdl(stage, epoch, *inp, "reference")
                fl, fg, fm = ours_dmdl(stage, epoch, *inp, "forward")
                rows.append((f"{label} {size} s{seed}", rel(og, rg), maxabs(om, rm), abs(float(ol - rl)) / abs(float(rl)),
                             rel(fg, rg), maxabs(fm, rm)))
            for label, stage, epoch in MULT_CASES:
                inp = mult_inputs(stage, size, seed)
                rg, rm = released_mult(stage, epoch, *inp)
                og, om = ours_mult(stage, epoch, *inp, "reference")
                fg, fm = ours_mult(stage, epoch, *inp, "forward")
                rows.append((f"{label} {size} s{seed}", rel(og, rg), maxabs(om, rm), float("nan"), rel(fg, rg),
                             maxabs(fm, rm)))
    head = f"{'case':44s} {'ref grad rel':>12s} {'ref mem abs':>11s} {'ref loss rel':>12s} {'fwd grad rel':>12s} {'fwd mem abs':>11s}  ok"
    lines = [head, "-" * len(head)]
    for name, g, m, lo, fg, fm in rows:
        ok = g < 1e-5 and m < 1e-6
        lines.append(f"{name:44s} {g:12.2e} {m:11.2e} {lo:12.2e} {fg:12.2e} {fm:11.2e}  {'PASS' if ok else 'FAIL'}")
    n_ok = sum(r[1] < 1e-5 and r[2] < 1e-6 for r in rows)
    lines.append(f"{n_ok}/{len(rows)} cases within tolerance (grad rel < 1e-5, every memory max abs < 1e-6); "
                 f"'ref' = memory_semantics reference, 'fwd' = forward, both vs the released code. "
                 f"DMDL {open(REL / 'dmdl' / 'COMMIT').read().strip()[:7]}, MULT {open(REL / 'mult' / 'COMMIT').read().strip()[:7]}, "
                 f"torch {torch.__version__}, CPU float32, 1 thread.")
    text = "\n".join(lines)
    print(text)
    if ARGS.out:
        Path(ARGS.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
