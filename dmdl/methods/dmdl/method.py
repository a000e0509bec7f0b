"""DMDL's two-stage method (docs/dmdl.md#A1-#A8): pseudo-labels, memories, the epoch.

Inside every epoch (the engine runs the epochs, see :mod:`dmdl.engine`):

1. features of both modalities' training images (flip-averaged; L2-renormalised per
   ``renormalize``: RegDB renormalises in stage 2 only, SYSU/LLCM never);
2. Jaccard + DBSCAN per modality (stage 2: the mapped modality with ``k1_mapped`` when set, docs/dmdl.md#A5.1);
3. stage 2: association into one unified label space (docs/dmdl.md#A5.2, Table 4): ``association`` (iMCA,
   Hungarian, OT, MULT's label transfer), or on RegDB's cycle (``matching: regdb-cycle``)
   sample-level nearest-neighbour matching on epochs with ``epoch % 5 >= 2``; the anchor
   modality is IR on even epochs, visible on odd;
4. memories from centroids (:class:`dmdl.memories.CrossModalMemory`; stage 2 also the
   modality-shared memory and the modality prior);
5. CBT label level (``cbt_label``): per-sample certainty w from GMMs on ``-p(y)`` (docs/dmdl.md#A4.3, #A5.4;
   :func:`dmdl.pseudo_labels.certainty`);
6. ``iters`` steps on two-view batches (late stage 2: paired-identity batches, docs/dmdl.md#A5.6), each
   step's losses and memory updates as :mod:`dmdl.methods.dmdl.step` composes them.

Every memory loss and update runs :func:`dmdl.ops.memory_loss` / :func:`dmdl.ops.momentum_update_`
(through :class:`dmdl.memories.CrossModalMemory`); CAI needs raw logits and keeps its own matmuls.
The shared memory takes DMDL's adaptive momentum (paper Eqs. 12-13; the reference applies it in
the forward pass, after the predictions it feeds are taken; here after ``backward()``, with the
same effect on every loss). ``memory_semantics`` picks the released step (``reference``, the
default) or the forward-time one (``forward``), see :mod:`dmdl.methods.dmdl.step`; with ``amp``
and ``amp_losses`` on CUDA the losses run under fp16 autocast with TF32 matmuls, as the released
code.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dmdl.config import Config, parse_schedule
from dmdl.data.loading import TwoViewDataset
from dmdl.data.sampler import PseudoIdentitySampler, shared_identity_order
from dmdl.data.transforms import train_views
from dmdl.losses import triplet_weight
from dmdl.memories import CrossModalMemory
from dmdl.methods.dmdl.step import EpochPlan, certainty_rows, dmdl_step
from dmdl.modalities import INFRARED, MODALITIES, VISIBLE
from dmdl.pseudo_labels import associate, certainty, ground_truth_unified, nearest_sample_matching
from dmdl.training.context import RunContext
from dmdl.training.steps import cluster_modalities, epoch_seed, forward_views, optimizer_step, run_epoch


class DMDL:
    """The DMDL method: pseudo-labels, memories and the training steps of one epoch.

    Args:
        ctx: the run's services (model, device, optimizer of the stage, training images, ...).
        cfg: the run's config; DMDL reads its own section ``cfg.method`` and the shared
            ``data``, ``schedule``, ``clustering`` (and ``transfer`` with ``association: mult``).
    """

    def __init__(self, ctx: RunContext, cfg: Config):
        self.ctx = ctx
        self.cfg = cfg
        self.dmdl = cfg.method
        self.triplet_schedule = {1: parse_schedule(self.dmdl.stage1_triplet, "stage1_triplet"),
                                 2: parse_schedule(self.dmdl.stage2_triplet, "stage2_triplet")}
        self.last_plan: EpochPlan | None = None
        self.last_sampler: dict = {}

    # ------------------------------------------------------------------ pseudo-labels
    def anchor(self, epoch: int) -> str:
        """Stage-2 anchor modality: infrared on even epochs, visible on odd ones (docs/dmdl.md#A5.2)."""
        return INFRARED if epoch % 2 == 0 else VISIBLE

    def matching(self, epoch: int) -> str:
        """The stage-2 association of an epoch: ``association`` (cluster level) or ``"sample"``
        (RegDB's cycle, docs/dmdl.md#A5.2)."""
        if self.dmdl.matching == "regdb-cycle" and epoch % 5 >= 2:
            return "sample"
        return self.dmdl.association

    def pseudo_labels(self, stage: int, epoch: int, feats: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """DBSCAN labels per modality, unified in stage 2.

        Returns:
            (labels, stats): ``labels[m]`` (N_m,) int64 NumPy, -1 outliers (stage 1: each
            modality's clusters; stage 2: unified ids); stats for the log.
        """
        dmdl = self.dmdl
        anchor = self.anchor(epoch) if stage == 2 else None
        k1 = {m: dmdl.k1_mapped for m in MODALITIES if stage == 2 and dmdl.k1_mapped and m != anchor}
        labels, dists, stats = cluster_modalities(
            self.ctx, feats, self.cfg.clustering, f"stage {stage} epoch {epoch}", k1=k1,
            keep_distance=stage == 2 and dmdl.association == "mult")  # MULT's transfer reads the Jaccard graphs
        if stage == 1:
            return labels, stats
        if self.cfg.clustering.labels == "ground-truth":  # the supervised ceiling: the true unified ids
            unified, stats["unified_ids"] = ground_truth_unified({m: [r.pid for r in self.ctx.train[m]]
                                                                  for m in MODALITIES})
            stats["ari_unified"] = self.ctx.label_quality(MODALITIES, np.concatenate([unified[m] for m in MODALITIES]))
            stats["matching"] = f"ground-truth->{anchor}"
            return unified, stats
        how = self.matching(epoch)
        args = (feats[VISIBLE], labels[VISIBLE], feats[INFRARED], labels[INFRARED])
        if how == "sample":
            uv, ui, num_unified = nearest_sample_matching(*args, anchor=anchor)
        elif how == "mult":  # MULT's label transfer (docs/mult.md#B3) on this epoch's Jaccard graphs
            tr = self.cfg.transfer
            uv, ui, num_unified = associate(
                how, *args, anchor=anchor, dist_visible=dists[VISIBLE], dist_infrared=dists[INFRARED],
                alpha=tr.mult_alpha, temperature=dmdl.temperature, lam=tr.mult_lambda,
                cross_affinity=tr.cross_affinity, cross_k=tr.cross_k)
        else:
            uv, ui, num_unified = associate(how, *args, anchor=anchor)
        stats["unified_ids"] = num_unified
        stats["ari_unified"] = self.ctx.label_quality(MODALITIES, np.concatenate([uv, ui]))
        stats["matching"] = f"{how}->{anchor}"
        return {VISIBLE: uv, INFRARED: ui}, stats

    def certainties(self, stage: int, feats: dict, labels: dict, memory: CrossModalMemory) -> dict:
        """Per-sample certainty w (docs/dmdl.md#A4.3, #A5.4): GMMs on ``-p(y)`` under the memory.

        Stage 1: per modality, its own memory and clusters. Stage 2: the shared memory over the
        unified ids, both modalities' samples together. Both stages: per-cluster GMMs, or with
        ``certainty_per_cluster`` False one global GMM (RegDB's reference). Outliers get 1.
        """
        if stage == 1:
            return {m: self._certainty_under(memory, m, feats[m], labels[m]) for m in MODALITIES}
        both = torch.cat([feats[m] for m in MODALITIES])
        w = self._certainty_under(memory, "shared", both, np.concatenate([labels[m] for m in MODALITIES]))
        n = len(labels[VISIBLE])
        return {VISIBLE: w[:n], INFRARED: w[n:]}

    def _certainty_under(self, memory: CrossModalMemory, name: str, feats: torch.Tensor,
                         labels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            prob = F.softmax(memory.logits(name, feats.float()), dim=1)
        lab = torch.as_tensor(labels, dtype=torch.long, device=prob.device)
        rows = torch.full_like(lab, prob.shape[1] - 1)  # outliers: column -1, as the reference indexes them
        inl = lab >= 0
        rows[inl] = memory.rows(name, lab[inl])
        p = prob.gather(1, rows.unsqueeze(1)).squeeze(1).double().cpu().numpy().clip(0.0, 1.0)
        return certainty(p, labels, per_cluster=self.dmdl.certainty_per_cluster,
                         loss=self.dmdl.certainty_loss).astype(np.float32)

    # ------------------------------------------------------------------ one epoch
    def plan(self, stage: int, epoch: int, feats: dict) -> tuple[EpochPlan, dict]:
        """Pseudo-labels, memories, certainties and switches of one epoch."""
        dmdl = self.dmdl
        labels, stats = self.pseudo_labels(stage, epoch, feats)
        memory = CrossModalMemory.build(feats, labels, dmdl.temperature, dmdl.momentum, shared=stage == 2)
        refine_from = dmdl.refine_from_stage1 if stage == 1 else dmdl.refine_from_stage2
        inter = stage == 2 and 0 <= dmdl.inter_modality_from <= epoch
        refine = dmdl.cbt_label and (epoch >= refine_from or inter)
        if refine:
            weights = self.certainties(stage, feats, labels, memory)
            for m in MODALITIES:
                keep = labels[m] >= 0
                stats[f"certainty_{m}"] = float(weights[m][keep].mean()) if keep.any() else float("nan")
        else:
            weights = {m: np.ones(len(labels[m]), dtype=np.float32) for m in MODALITIES}
        w_tri = 1.0 if inter else triplet_weight(self.triplet_schedule[stage], epoch)
        anchor = self.anchor(epoch) if stage == 2 else None
        return EpochPlan(stage, epoch, labels, memory, weights, anchor, refine, inter, w_tri), stats

    def loader(self, modality: str, labels: np.ndarray, stage: int, seed: int, id_order=None) -> DataLoader:
        """Two-view loader over a modality's labelled images (docs/dmdl.md#A3, #A4.2).

        Batches are ``(view0, view1, label, index)``, ``batch_size`` images of ``batch_size /
        num_instances`` pseudo-identities, drawn by the camera-aware :class:`PseudoIdentitySampler`;
        samples labelled -1 are left out, and ``index`` counts the labelled samples in their
        original order. ``id_order``: paired-identity batches (docs/dmdl.md#A5.6, see the sampler), replayed on
        every pass with ``inter_sampler: replay``. The infrared second view is the pseudo-colour view
        with ``cbt_data`` (see :func:`train_views`).
        """
        ctx, data, dmdl = self.ctx, self.cfg.data, self.dmdl
        keep = np.flatnonzero(labels >= 0)
        recs = [ctx.train[modality][i] for i in keep]
        area = dmdl.erasing_max_area_stage2 if stage == 2 else dmdl.erasing_max_area
        ds = TwoViewDataset([r.path for r in recs], labels[keep].tolist(),
                            train_views(modality, data.height, data.width, erasing_max_area=area,
                                        pseudo_color=dmdl.cbt_data),
                            cache=ctx.image_cache)
        sampler = PseudoIdentitySampler(labels[keep], [r.camid for r in recs], data.num_instances, seed=seed,
                                        min_length=data.batch_size, id_order=id_order,
                                        replay=id_order is not None and dmdl.inter_sampler == "replay")
        return DataLoader(ds, batch_size=data.batch_size, sampler=sampler, num_workers=ctx.workers,
                          drop_last=True, pin_memory=ctx.device.type == "cuda")

    def batches(self, plan: EpochPlan, seed: int, num_iters: int):
        """``num_iters`` steps' worth of ``({m: batch}, {m: certainties})``, each modality's loader
        restarted when it runs out."""
        order = shared_identity_order(plan.labels[VISIBLE], plan.labels[INFRARED], seed) if plan.inter else None
        loaders = {m: self.loader(m, plan.labels[m], plan.stage, seed + 1 + i, id_order=order)
                   for i, m in enumerate(MODALITIES)}
        kept = {m: certainty_rows(plan.weights[m], plan.labels[m]) for m in MODALITIES}  # dataset index -> w
        iters = {m: iter(loaders[m]) for m in MODALITIES}

        def next_batch(m):
            try:
                return next(iters[m])
            except StopIteration:
                iters[m] = iter(loaders[m])
                return next(iters[m])

        for _ in range(num_iters):
            batch = {m: next_batch(m) for m in MODALITIES}
            yield batch, {m: kept[m][batch[m][3]] for m in MODALITIES}

    def epoch(self, stage: int, epoch: int) -> dict:
        """Features, the epoch's plan and the stage's training steps (:func:`run_epoch`); returns log fields."""
        num_iters = self.cfg.schedule.iters_for(stage)
        seed = epoch_seed(self.cfg.run.seed, stage, epoch)
        plan, stats = run_epoch(self.ctx, self.cfg.clustering, stage, lambda f: self.plan(stage, epoch, f),
                                lambda p: (self.batches(p, seed, num_iters), num_iters),
                                lambda p, b: self.step(*b, p), f"stage {stage} epoch {epoch}")
        self.last_plan = plan  # for the checkpoint (see state_dict)
        self.last_sampler = {"seeds": {m: seed + 1 + i for i, m in enumerate(MODALITIES)}, "batches": num_iters,
                             "paired": plan.inter}
        return stats

    def step(self, batch: dict, certainty_batch: dict, plan: EpochPlan) -> dict:
        """One optimisation step on a visible and an infrared two-view batch.

        Args:
            batch: ``{m: (view0 (B,3,H,W), view1 (B,3,H,W), labels (B,), index (B,))}``.
            certainty_batch: ``{m: (B,) float}`` certainties w of the batch's samples.
            plan: the epoch's labels, memories and switches.

        Returns:
            The loss and its parts as floats.

        Raises:
            FloatingPointError: a non-finite loss.
        """
        device = self.ctx.device
        views, y, w = [], {}, {}
        for m in MODALITIES:
            v0, v1, lab, _ = batch[m]
            views += [v0, v1]
            y[m] = torch.cat([lab, lab]).to(device)  # both views share the pseudo-label and certainty
            w[m] = torch.cat([certainty_batch[m], certainty_batch[m]]).to(device)
        n = len(y[VISIBLE])
        out = forward_views(self.ctx, views, torch.arange(2 * n) >= n)
        where = f"stage {plan.stage} epoch {plan.epoch}"
        loss, parts = dmdl_step(out, y, w, plan, self.dmdl, self.cfg.run.memory_semantics,
                                backward=lambda loss, tape: optimizer_step(self.ctx, loss, where, tape),
                                precision=self.ctx.loss_precision)
        res = {k: v.item() for k, v in parts.items()}
        res["loss"] = loss.item()
        return res

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """The last epoch's pseudo-labels, memories (as built and updated by its steps) and sampler
        seeds, for the engine's checkpoint. Resuming does not need them (an epoch rebuilds its
        labels and memories from the model's features); they record what the epoch trained on."""
        plan = self.last_plan
        if plan is None:
            return {}
        mem = plan.memory
        return {
            "pseudo_labels": {m: np.asarray(plan.labels[m]).copy() for m in MODALITIES},
            "memories": {
                "features": {k: v.features.detach().cpu().clone() for k, v in mem.memories.items()},
                "id_to_row": {k: v.detach().cpu().clone() for k, v in mem.id_to_row.items()},
                "prior": dict(mem.prior), "num_ids": mem.num_ids,
            },
            "sampler": dict(self.last_sampler),
        }

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: every epoch rebuilds its labels and memories (see :meth:`state_dict`)."""


__all__ = ["DMDL", "EpochPlan"]
