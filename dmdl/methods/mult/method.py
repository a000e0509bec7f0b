"""MULT, the second method (algorithm.md Part B; MULT arXiv 2402.00672, IJCV 2024).

Inside every epoch (the engine runs the epochs and the LR schedule, see :mod:`dmdl.engine`):

1. features of both modalities' training images: eval mode, each modality through its own stem of
   the two-stream backbone, L2-normalised (MULT: no flip; ``feature_flip``);
2. per modality, the sparse k-reciprocal Jaccard distance and DBSCAN
   (:func:`dmdl.pseudo_labels.cluster_features`, keeping the distances for the label transfer);
   centroids = mean of the members' normalised features (§B1 step 3);
3. stage 1 ("single", §B4): memories ``m_v`` (RGB clusters) and ``m_r`` (IR clusters), outliers
   dropped, loss ``CE(m_v(v), y) + CE(m_v(a), y) + CE(m_r(r), y)``;
4. stage 2 ("cross"): every sample kept; :func:`dmdl.pseudo_labels.mult.mult_label_transfer` gives
   new intra-modality labels and cross-modality labels, softened by the β step; six memories, all
   from the DBSCAN centroids (§B4): ``m_v``, ``m_va``, ``m_rcm`` over the RGB clusters and
   ``m_r``, ``m_ra``, ``m_vcm`` over the IR clusters; the unified label space alternates with
   the epoch (even: RGB, odd: IR) and the loss is ``L_ms + L_ma + lambda_oclr L_oclr`` (below);
5. ``iters`` steps on paired RGB/IR batches (:mod:`dmdl.data.mult_sampler`), RGB images in two
   views ``v`` (original) and ``a`` (channel-augmented), IR in one view ``r``.

Cross-stage losses, with ``U`` the modality memory of each modality in the unified space (even
epochs: ``m_v`` for RGB with labels ``y1``, ``m_rcm`` for IR with ``cm_y2``; odd: ``m_vcm`` for RGB
with ``cm_y1``, ``m_r`` for IR with ``y2``), ``O`` the other modality's own memory (even: ``m_r``
with ``y2`` on r; odd: ``m_v`` with ``y1`` on v and a) and ``G`` the aggregated memory (even
``m_va``, odd ``m_ra``)::

    L_ms   = CE(U_rgb(v)) + CE(U_rgb(a)) + CE(U_ir(r)) + CE(O(.))
    L_ma   = CE(G(v)) + CE(G(a)) + CE(G(r))                      (targets of U)
    L_oclr = SCE(G(v) <- U_rgb(a)) + SCE(G(a) <- U_rgb(v)) + SCE(G(r) <- U_ir(r))
           + SCE(G(v) <- <a, U_ir>) + SCE(G(a) <- <v, U_ir>) + SCE(G(r) <- <r, U_rgb>)

CE terms and memory updates run on :func:`dmdl.ops.memory_loss` / :func:`dmdl.ops.momentum_update_`
(through :class:`dmdl.ops.ClusterMemory`); SCE is :func:`dmdl.losses.oclr_loss` on plain logits
(its targets keep their gradient, as MULT's). Memory updates (hard labels, momentum ``momentum``,
0.1 in MULT) run after ``backward()``, in this order: ``U_rgb`` <- v then a; ``U_ir`` <- r; ``O``;
``G`` <- v, a, r. MULT leaves that order to autograd.

Left out on purpose: MULT's adversarial modality head (its loss is hard-coded to 0), and its
``--pretrained`` shortcut (loading a separately trained stage-1 checkpoint): here stage 1 runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from dmdl.data.loading import ImageListDataset, TwoViewDataset
from dmdl.data.mult_sampler import cross_stage_batches, single_stage_batches
from dmdl.engine import run_steps
from dmdl.losses import oclr_loss
from dmdl.ops import ClusterMemory
from dmdl.pseudo_labels import NoClustersError, cluster_features
from dmdl.pseudo_labels.mult import dbscan_centers, mult_label_transfer, mult_soft_labels

MODALITIES = ("visible", "infrared")


@dataclass
class MultPlan:
    """What one MULT epoch trains with (built by :meth:`MULT.plan`)."""

    stage: int
    space: str | None  # cross stage: "rgb" (even epochs) or "ir" (odd): the unified label space
    memories: dict  # name -> ClusterMemory
    hard: dict  # "label1", "label2", "cm_label1", "cm_label2": (N,) int64 tensors (cross) / labels (single)
    soft: dict  # "y1", "y2", "cm_y1", "cm_y2": (N, K) float32 tensors (cross stage only)
    batches: dict  # modality -> list of index arrays


class MULT:
    """The MULT method: pseudo-labels, label transfer, memories and the training step of one epoch.

    Args:
        engine: the :class:`dmdl.engine.Engine` running it (model, optimizer, data, config).

    Raises:
        ValueError: a config MULT cannot train with (one-stream backbone, batch not divisible).
    """

    def __init__(self, engine):
        self.engine = engine
        self.cfg = cfg = engine.cfg
        if not getattr(engine.model, "two_stream", False):
            raise ValueError("method mult trains the two-stream backbone: set --two-stream true (the mult presets do)")
        if cfg.batch_size % cfg.num_instances or (cfg.batch_size // cfg.num_instances) % 2:
            raise ValueError(f"method mult: batch_size / num_instances must be an even number of identities (half "
                             f"from each label space in the cross stage), got {cfg.batch_size} / {cfg.num_instances}")
        self.num_ids = cfg.batch_size // cfg.num_instances

    # ------------------------------------------------------------------ pseudo-labels
    def cluster(self, stage: int, epoch: int, feats: dict) -> tuple[dict, dict, dict, dict]:
        """Jaccard + DBSCAN per modality. Returns (labels, distances, centers, stats)."""
        cfg, eng = self.cfg, self.engine
        labels, dists, centers, stats = {}, {}, {}, {}
        for m in MODALITIES:
            f = feats[m]
            try:
                labels[m], dists[m] = cluster_features(f, k1=cfg.k1, k2=cfg.k2, eps=cfg.eps, min_samples=cfg.min_samples,
                                                       renormalize=False, name=f"{m} training features",
                                                       return_distance=True)
            except NoClustersError:
                labels[m] = np.full(len(f), -1, dtype=np.int64)  # the guard below says what to do
            eng.check_clusters(stage, epoch, m, labels[m], min(cfg.k1, len(f)))
            centers[m] = dbscan_centers(f, labels[m])
            stats[f"clusters_{m}"] = int(labels[m].max() + 1)
            stats[f"outliers_{m}"] = int((labels[m] < 0).sum())
            stats[f"ari_{m}"] = eng.label_quality((m,), labels[m])
        return labels, dists, centers, stats

    def plan(self, stage: int, epoch: int, feats: dict) -> tuple[MultPlan, dict]:
        """Labels, memories and batches of one epoch (stage 1: single, stage 2: cross)."""
        cfg, eng = self.cfg, self.engine
        labels, dists, centers, stats = self.cluster(stage, epoch, feats)
        device = eng.device

        def memory(name_centers):
            return ClusterMemory.from_centroids(centers[name_centers].to(device), cfg.temperature, cfg.momentum)

        seed = cfg.seed * 100003 + stage * 1000 + epoch
        iters = cfg.iters_for(stage)
        if stage == 1:
            memories = {"v": memory("visible"), "r": memory("infrared")}
            rgb, ir = single_stage_batches(labels["visible"], labels["infrared"], iters, self.num_ids,
                                           cfg.num_instances, seed)
            hard = {"label1": torch.as_tensor(labels["visible"]), "label2": torch.as_tensor(labels["infrared"])}
            return MultPlan(1, None, memories, hard, {}, {"visible": rgb, "infrared": ir}), stats

        t0 = time.perf_counter()
        out = mult_label_transfer(feats["visible"], feats["infrared"], centers["visible"], centers["infrared"],
                                  dists["visible"], dists["infrared"], alpha=cfg.mult_alpha,
                                  temperature=cfg.temperature, lam=cfg.mult_lambda,
                                  cross_affinity=cfg.cross_affinity, cross_k=cfg.cross_k)
        stats["seconds_transfer"] = round(time.perf_counter() - t0, 2)
        stats["transfer_iterations"] = f"{out['iterations']['ir_space']}+{out['iterations']['rgb_space']}"
        hard = {"label1": out["labels_rgb"], "label2": out["labels_ir"], "cm_label1": out["rgb_in_ir"],
                "cm_label2": out["ir_in_rgb"]}
        soft = {"y1": out["y_rgb"], "y2": out["y_ir"], "cm_y1": out["y_rgb_cm"], "cm_y2": out["y_ir_cm"]}
        soft = {k: mult_soft_labels(v, cfg.mult_beta).to(device) for k, v in soft.items()}
        space = "rgb" if epoch % 2 == 0 else "ir"
        stats["ari_visible"] = eng.label_quality(("visible",), hard["label1"])
        stats["ari_infrared"] = eng.label_quality(("infrared",), hard["label2"])
        unified = (np.concatenate([hard["label1"], hard["cm_label2"]]) if space == "rgb"
                   else np.concatenate([hard["cm_label1"], hard["label2"]]))
        stats["unified_ids"] = int(len(np.unique(unified)))
        stats["ari_unified"] = eng.label_quality(MODALITIES, unified)
        stats["matching"] = f"mult->{space}"
        memories = {"v": memory("visible"), "va": memory("visible"), "rcm": memory("visible"),
                    "r": memory("infrared"), "ra": memory("infrared"), "vcm": memory("infrared")}
        rgb, ir = cross_stage_batches(hard["label1"], hard["label2"], hard["cm_label1"], hard["cm_label2"], iters,
                                      self.num_ids, cfg.num_instances, seed)
        hard = {k: torch.as_tensor(v) for k, v in hard.items()}
        return MultPlan(2, space, memories, hard, soft, {"visible": rgb, "infrared": ir}), stats

    # ------------------------------------------------------------------ data
    def loaders(self, plan: MultPlan) -> dict:
        """One DataLoader per modality over all its training images, batches fixed by the plan:
        visible items ``(v, a, label, index)``, infrared items ``(r, label, index)``."""
        from dmdl.data.transforms_mult import mult_train_views

        cfg, eng = self.cfg, self.engine
        out = {}
        for m in MODALITIES:
            paths = [r.path for r in eng.train[m]]
            views = mult_train_views(m, cfg.height, cfg.width, plan.stage)
            if m == "visible":
                ds = TwoViewDataset(paths, [0] * len(paths), views, cache=eng.image_cache)
            else:
                ds = ImageListDataset(paths, [0] * len(paths), views[0], cache=eng.image_cache)
            out[m] = DataLoader(ds, batch_sampler=[b.tolist() for b in plan.batches[m]], num_workers=eng.workers,
                                pin_memory=eng.device.type == "cuda")
        return out

    # ------------------------------------------------------------------ one epoch
    def epoch(self, stage: int, epoch: int) -> dict:
        """Features, the epoch's plan and its training steps; returns log fields."""
        cfg, eng = self.cfg, self.engine
        t0 = time.time()
        feats = {m: eng.extract(m, renormalize=True, flip=cfg.feature_flip) for m in MODALITIES}
        t1 = time.time()
        plan, stats = self.plan(stage, epoch, feats)
        t2 = time.time()
        self.last_plan = plan
        loaders = self.loaders(plan)
        eng.model.train()
        n = len(plan.batches["visible"])
        stats.update(run_steps(zip(loaders["visible"], loaders["infrared"]), n, lambda b: self.step(plan, *b),
                               f"mult stage {stage} epoch {epoch}"))
        stats["seconds_features"] = round(t1 - t0, 1)
        stats["seconds_clustering"] = round(t2 - t1, 1)
        stats["seconds_training"] = round(time.time() - t2, 1)
        return stats

    def checkpoint_state(self) -> dict:
        """The last epoch's hard labels and memories (as its steps left them) for the checkpoint;
        resuming does not need them (an epoch rebuilds everything from the model's features)."""
        plan = getattr(self, "last_plan", None)
        if plan is None:
            return {}
        return {"pseudo_labels": {k: v.clone() for k, v in plan.hard.items()},
                "memories": {k: m.features.detach().cpu().clone() for k, m in plan.memories.items()}}

    # ------------------------------------------------------------------ one step
    def _forward(self, v: torch.Tensor, a: torch.Tensor, r: torch.Tensor) -> tuple:
        eng = self.engine
        x = torch.cat([v, a, r]).to(eng.device, non_blocking=True)
        modality = torch.cat([torch.zeros(len(v) + len(a), dtype=torch.bool), torch.ones(len(r), dtype=torch.bool)])
        with torch.autocast(eng.device.type, dtype=torch.float16, enabled=eng.amp):
            out = eng.model(x, modality.to(eng.device))
        out = out.float()
        b = len(v)
        return out[:b], out[b:2 * b], out[2 * b:]

    def step(self, plan: MultPlan, vis: tuple, ir: tuple) -> dict:
        """One optimisation step on a paired RGB (two views) and IR batch (§B4).

        Returns:
            The loss and its parts as floats.

        Raises:
            FloatingPointError: a non-finite loss.
        """
        cfg = self.cfg
        v_img, a_img, _, idx_v = vis
        r_img, _, idx_r = ir
        fv, fa, fr = self._forward(v_img, a_img, r_img)
        mem = plan.memories
        dev = fv.device
        label1 = plan.hard["label1"][idx_v].to(dev)
        label2 = plan.hard["label2"][idx_r].to(dev)
        if plan.stage == 1:
            loss_ms = mem["v"](fv, label1) + mem["v"](fa, label1) + mem["r"](fr, label2)
            zero = loss_ms.new_zeros(())
            loss = self._backward(plan, loss_ms)
            updates = [("v", fv, label1), ("v", fa, label1), ("r", fr, label2)]
            parts = {"loss_ms": loss_ms, "loss_ma": zero, "loss_oclr": zero}
        else:
            y1, y2 = plan.soft["y1"][idx_v.to(dev)], plan.soft["y2"][idx_r.to(dev)]
            cm_y1, cm_y2 = plan.soft["cm_y1"][idx_v.to(dev)], plan.soft["cm_y2"][idx_r.to(dev)]
            cm_label1 = plan.hard["cm_label1"][idx_v].to(dev)
            cm_label2 = plan.hard["cm_label2"][idx_r].to(dev)
            if plan.space == "rgb":  # RGB clusters are the unified space
                u_rgb, t_rgb, h_rgb = "v", y1, label1
                u_ir, t_ir, h_ir = "rcm", cm_y2, cm_label2
                agg = "va"
                other = [("r", fr, y2, label2)]
            else:  # IR clusters are the unified space
                u_rgb, t_rgb, h_rgb = "vcm", cm_y1, cm_label1
                u_ir, t_ir, h_ir = "r", y2, label2
                agg = "ra"
                other = [("v", fv, y1, label1), ("v", fa, y1, label1)]
            loss_ms = mem[u_rgb](fv, t_rgb) + mem[u_rgb](fa, t_rgb) + mem[u_ir](fr, t_ir)
            for name, f, t, _ in other:
                loss_ms = loss_ms + mem[name](f, t)
            loss_ma = mem[agg](fv, t_rgb) + mem[agg](fa, t_rgb) + mem[agg](fr, t_ir)
            g = {k: mem[agg].logits(f) for k, f in (("v", fv), ("a", fa), ("r", fr))}
            s = cfg.oclr_sharpen
            loss_oclr = (oclr_loss(g["v"], mem[u_rgb].logits(fa), s) + oclr_loss(g["a"], mem[u_rgb].logits(fv), s)
                         + oclr_loss(g["r"], mem[u_ir].logits(fr), s) + oclr_loss(g["v"], mem[u_ir].logits(fa), s)
                         + oclr_loss(g["a"], mem[u_ir].logits(fv), s) + oclr_loss(g["r"], mem[u_rgb].logits(fr), s))
            loss = self._backward(plan, loss_ms + loss_ma + cfg.lambda_oclr * loss_oclr)
            updates = ([(u_rgb, fv, h_rgb), (u_rgb, fa, h_rgb), (u_ir, fr, h_ir)]
                       + [(name, f, h) for name, f, _, h in other]
                       + [(agg, fv, h_rgb), (agg, fa, h_rgb), (agg, fr, h_ir)])
            parts = {"loss_ms": loss_ms, "loss_ma": loss_ma, "loss_oclr": loss_oclr}
        with torch.no_grad():  # after backward: every loss saw the memories of the forward pass
            for name, f, h in updates:
                mem[name].update(f, h)
        out = {"loss": loss}
        out.update({k: float(v.detach()) for k, v in parts.items()})
        return out

    def _backward(self, plan: MultPlan, loss: torch.Tensor) -> float:
        eng = self.engine
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage {plan.stage}: the loss is {loss.item()}; lower the learning rate (--lr)")
        eng.optimizer.zero_grad(set_to_none=True)
        eng.scaler.scale(loss).backward()
        eng.scaler.step(eng.optimizer)
        eng.scaler.update()
        return float(loss.detach())
