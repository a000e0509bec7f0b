"""MULT, the second method (docs/mult.md#B; MULT arXiv 2402.00672, IJCV 2024).

Inside every epoch (the engine runs the epochs and the LR schedule, see :mod:`dmdl.engine`):

1. features of both modalities' training images: eval mode, each modality through its own stem of
   the two-stream backbone, L2-normalised per ``renormalize`` (MULT: ``always``) and not
   flip-averaged (MULT: ``feature_flip: false``);
2. per modality, the sparse k-reciprocal Jaccard distance and DBSCAN
   (:func:`dmdl.training.steps.cluster_modalities`, keeping the distances for the label
   transfer); centroids = mean of the members' features (docs/mult.md#B1.3);
3. stage 1 ("single", docs/mult.md#B4): memories ``v`` (visible clusters) and ``r`` (infrared clusters),
   outliers dropped;
4. stage 2 ("cross"): every sample kept; :func:`dmdl.pseudo_labels.mult.mult_label_transfer`
   gives new intra-modality labels and cross-modality labels, softened by the β step; six
   memories, all from the DBSCAN centroids (docs/mult.md#B4); the unified label space alternates with the
   epoch (even: the visible clusters, odd: the infrared clusters);
5. ``iters`` steps on paired visible/infrared batches (:mod:`dmdl.data.mult_sampler`), visible
   images in two views ``v`` (original) and ``a`` (channel-augmented), infrared in one view ``r``;
   the losses and memory updates of a step are :mod:`dmdl.methods.mult.step`'s.

Left out on purpose: MULT's adversarial modality head (its loss is hard-coded to 0), and its
``--pretrained`` shortcut (loading a separately trained stage-1 checkpoint): here stage 1 runs.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from dmdl.config import Config
from dmdl.data.loading import ImageListDataset, TwoViewDataset
from dmdl.data.mult_sampler import cross_stage_batches, single_stage_batches
from dmdl.data.transforms_mult import mult_train_views
from dmdl.memories import CrossModalMemory
from dmdl.methods.mult.step import MultPlan, mult_step
from dmdl.modalities import INFRARED, MODALITIES, VISIBLE
from dmdl.pseudo_labels import ground_truth_labels
from dmdl.pseudo_labels.mult import dbscan_centers, mult_label_transfer, mult_soft_labels
from dmdl.training.context import RunContext
from dmdl.training.steps import cluster_modalities, epoch_seed, forward_views, optimizer_step, run_epoch

#: memory name -> the modality whose DBSCAN centroids initialise it (docs/mult.md#B4)
MEMORY_CLUSTERS = {"v": VISIBLE, "va": VISIBLE, "rcm": VISIBLE, "r": INFRARED, "ra": INFRARED, "vcm": INFRARED}


class MULT:
    """The MULT method: pseudo-labels, label transfer, memories and the training steps of one epoch.

    Args:
        ctx: the run's services (a two-stream model, see :class:`dmdl.methods.mult.MULTConfig`).
        cfg: the run's config; MULT reads its own section ``cfg.method`` and the shared ``data``,
            ``schedule``, ``clustering`` and ``transfer`` sections.
    """

    def __init__(self, ctx: RunContext, cfg: Config):
        self.ctx = ctx
        self.cfg = cfg
        self.mult = cfg.method
        self.num_ids = cfg.data.batch_size // cfg.data.num_instances
        self.last_plan: MultPlan | None = None

    # ------------------------------------------------------------------ pseudo-labels
    def transfer(self, feats: dict, labels: dict, dists: dict, centers: dict, space: str) -> tuple[dict, dict, dict]:
        """MULT's label transfer and β-labels of a cross-stage epoch (docs/mult.md#B3).

        Returns:
            (hard, soft, stats): (N,) int64 hard labels ``label1``, ``label2``, ``cm_label1``,
            ``cm_label2``; (N, K) β-labels ``y1``, ``y2``, ``cm_y1``, ``cm_y2`` on the device;
            the log fields of the transfer and of the unified labels.
        """
        tr = self.cfg.transfer
        t0 = time.perf_counter()
        out = mult_label_transfer(feats[VISIBLE], feats[INFRARED], centers[VISIBLE], centers[INFRARED],
                                  dists[VISIBLE], dists[INFRARED], alpha=tr.mult_alpha,
                                  temperature=self.mult.temperature, lam=tr.mult_lambda,
                                  cross_affinity=tr.cross_affinity, cross_k=tr.cross_k)
        stats = {"seconds_transfer": round(time.perf_counter() - t0, 2),
                 "transfer_iterations": f"{out['iterations']['ir_space']}+{out['iterations']['rgb_space']}"}
        hard = {"label1": out["labels_rgb"], "label2": out["labels_ir"], "cm_label1": out["rgb_in_ir"],
                "cm_label2": out["ir_in_rgb"]}
        soft = {"y1": out["y_rgb"], "y2": out["y_ir"], "cm_y1": out["y_rgb_cm"], "cm_y2": out["y_ir_cm"]}
        soft = {k: mult_soft_labels(v, self.mult.mult_beta).to(self.ctx.device) for k, v in soft.items()}
        stats["ari_visible"] = self.ctx.label_quality((VISIBLE,), hard["label1"])
        stats["ari_infrared"] = self.ctx.label_quality((INFRARED,), hard["label2"])
        unified = (np.concatenate([hard["label1"], hard["cm_label2"]]) if space == "rgb"
                   else np.concatenate([hard["cm_label1"], hard["label2"]]))
        stats["unified_ids"] = int(len(np.unique(unified)))
        stats["ari_unified"] = self.ctx.label_quality(MODALITIES, unified)
        stats["matching"] = f"mult->{space}"
        return hard, soft, stats

    def ground_truth(self, feats: dict, labels: dict, dists: dict, centers: dict,
                     space: str) -> tuple[dict, dict, dict]:
        """The label transfer's output from the true identities (``labels: ground-truth``): each
        sample's own-modality label and its label in the other modality's space, one-hot (the β
        step leaves one-hot labels unchanged). Same returns as :meth:`transfer`."""
        pids = {m: [r.pid for r in self.ctx.train[m]] for m in MODALITIES}
        hard = {"label1": labels[VISIBLE], "label2": labels[INFRARED],
                "cm_label1": ground_truth_labels(pids[VISIBLE], pids[INFRARED]),
                "cm_label2": ground_truth_labels(pids[INFRARED], pids[VISIBLE])}
        sizes = {"label1": int(labels[VISIBLE].max()) + 1, "label2": int(labels[INFRARED].max()) + 1}
        sizes.update(cm_label1=sizes["label2"], cm_label2=sizes["label1"])
        names = {"y1": "label1", "y2": "label2", "cm_y1": "cm_label1", "cm_y2": "cm_label2"}
        soft = {k: torch.nn.functional.one_hot(torch.as_tensor(hard[h]), sizes[h]).float().to(self.ctx.device)
                for k, h in names.items()}
        unified = (np.concatenate([hard["label1"], hard["cm_label2"]]) if space == "rgb"
                   else np.concatenate([hard["cm_label1"], hard["label2"]]))
        stats = {"unified_ids": int(len(np.unique(unified))), "matching": f"ground-truth->{space}",
                 "ari_unified": self.ctx.label_quality(MODALITIES, unified)}
        return hard, soft, stats

    def plan(self, stage: int, epoch: int, feats: dict) -> tuple[MultPlan, dict]:
        """Labels, memories and batches of one epoch (stage 1: single, stage 2: cross)."""
        labels, dists, stats = cluster_modalities(self.ctx, feats, self.cfg.clustering, f"stage {stage} epoch {epoch}",
                                                  keep_distance=True)
        centers = {m: dbscan_centers(feats[m], labels[m]) for m in MODALITIES}
        names = ("v", "r") if stage == 1 else tuple(MEMORY_CLUSTERS)
        memory = CrossModalMemory.from_centroids({k: centers[MEMORY_CLUSTERS[k]].to(self.ctx.device) for k in names},
                                                 self.mult.temperature, self.mult.momentum)
        seed = epoch_seed(self.cfg.run.seed, stage, epoch)
        iters, num_instances = self.cfg.schedule.iters_for(stage), self.cfg.data.num_instances
        if stage == 1:
            vis, ir = single_stage_batches(labels[VISIBLE], labels[INFRARED], iters, self.num_ids, num_instances, seed)
            hard = {"label1": torch.as_tensor(labels[VISIBLE]), "label2": torch.as_tensor(labels[INFRARED])}
            return MultPlan(1, None, memory, hard, {}, {VISIBLE: vis, INFRARED: ir}), stats
        space = "rgb" if epoch % 2 == 0 else "ir"
        transfer = self.ground_truth if self.cfg.clustering.labels == "ground-truth" else self.transfer
        hard, soft, more = transfer(feats, labels, dists, centers, space)
        stats.update(more)
        vis, ir = cross_stage_batches(hard["label1"], hard["label2"], hard["cm_label1"], hard["cm_label2"], iters,
                                      self.num_ids, num_instances, seed)
        hard = {k: torch.as_tensor(v) for k, v in hard.items()}
        return MultPlan(2, space, memory, hard, soft, {VISIBLE: vis, INFRARED: ir}), stats

    # ------------------------------------------------------------------ data
    def loaders(self, plan: MultPlan) -> dict:
        """One DataLoader per modality over all its training images, batches fixed by the plan:
        visible items ``(v, a, label, index)``, infrared items ``(r, label, index)``."""
        ctx, data = self.ctx, self.cfg.data
        out = {}
        for m in MODALITIES:
            paths = [r.path for r in ctx.train[m]]
            views = mult_train_views(m, data.height, data.width, plan.stage)
            if m == VISIBLE:
                ds = TwoViewDataset(paths, [0] * len(paths), views, cache=ctx.image_cache)
            else:
                ds = ImageListDataset(paths, [0] * len(paths), views[0], cache=ctx.image_cache)
            out[m] = DataLoader(ds, batch_sampler=[b.tolist() for b in plan.batches[m]], num_workers=ctx.workers,
                                pin_memory=ctx.device.type == "cuda")
        return out

    # ------------------------------------------------------------------ one epoch
    def epoch(self, stage: int, epoch: int) -> dict:
        """Features, the epoch's plan and its training steps (:func:`run_epoch`); returns log fields."""
        def batches(plan: MultPlan):
            loaders = self.loaders(plan)
            return zip(loaders[VISIBLE], loaders[INFRARED]), len(plan.batches[VISIBLE])

        self.last_plan, stats = run_epoch(self.ctx, self.cfg.clustering, stage, lambda f: self.plan(stage, epoch, f),
                                          batches, lambda p, b: self.step(p, *b), f"mult stage {stage} epoch {epoch}")
        return stats

    def step(self, plan: MultPlan, vis: tuple, ir: tuple) -> dict:
        """One optimisation step on a paired visible (two views) and infrared batch (docs/mult.md#B4).

        Returns:
            The loss and its parts as floats.

        Raises:
            FloatingPointError: a non-finite loss.
        """
        v_img, a_img, _, idx_v = vis
        r_img, _, idx_r = ir
        b = len(v_img)
        out = forward_views(self.ctx, [v_img, a_img, r_img], torch.arange(2 * b + len(r_img)) >= 2 * b)
        f = {"v": out[:b], "a": out[b:2 * b], "r": out[2 * b:]}
        dev = out.device
        rows = {"label1": idx_v, "cm_label1": idx_v, "label2": idx_r, "cm_label2": idx_r}
        hard = {k: plan.hard[k][rows[k]].to(dev) for k in plan.hard}
        soft_rows = {"y1": idx_v, "cm_y1": idx_v, "y2": idx_r, "cm_y2": idx_r}
        soft = {k: v[soft_rows[k].to(dev)] for k, v in plan.soft.items()}
        loss, parts = mult_step(f, hard, soft, plan, self.mult, self.cfg.run.memory_semantics,
                                backward=lambda loss, tape: optimizer_step(self.ctx, loss, f"stage {plan.stage}", tape),
                                precision=self.ctx.loss_precision)
        res = {"loss": float(loss.detach())}
        res.update({k: float(v.detach()) for k, v in parts.items()})
        return res

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """The last epoch's hard labels and memories (as its steps left them) for the checkpoint;
        resuming does not need them (an epoch rebuilds everything from the model's features)."""
        plan = self.last_plan
        if plan is None:
            return {}
        return {"pseudo_labels": {k: v.clone() for k, v in plan.hard.items()},
                "memories": {k: m.features.detach().cpu().clone() for k, m in plan.memory.memories.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: every epoch rebuilds its labels and memories (see :meth:`state_dict`)."""


__all__ = ["MULT", "MultPlan", "MEMORY_CLUSTERS"]
