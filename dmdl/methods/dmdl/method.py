"""DMDL's two-stage method (algorithm.md §A1-§A8): pseudo-labels, memories, the training step.

Inside every epoch (the engine runs the epochs, see :mod:`dmdl.engine`):

1. features of both modalities' training images (flip-averaged; L2-renormalised
   per ``cfg.renormalize``: RegDB renormalises in stage 2 only, SYSU/LLCM never);
2. Jaccard + DBSCAN per modality (stage 2: the mapped modality with
   ``k1_mapped`` when set, §A5.1);
3. stage 2: association into one unified label space (§A5.2, Table 4):
   ``association`` (iMCA, Hungarian, OT, MULT's label transfer), or on RegDB's cycle (``matching:
   regdb-cycle``) sample-level nearest-neighbour matching on epochs with
   ``epoch % 5 >= 2``; the anchor modality is IR on even epochs, visible on odd;
4. memories from centroids (:class:`dmdl.memories.CrossModalMemory`; stage 2
   also the modality-shared memory and the modality prior);
5. CBT label level (``cbt_label``): per-sample certainty w from GMMs on
   ``-p(y)`` (§A4.3, §A5.4; :func:`dmdl.pseudo_labels.certainty`);
6. ``iters`` steps on two-view batches (late stage 2: paired-identity batches,
   §A5.6).

Losses of a step (§A4.4, §A5.5, §A8), with f^c the BN-neck features of modality c
(originals then augmented views, 2B rows), y^c their labels:

- stage 1: ``CE_soft(f^V M^V, ỹ^V) + CE_soft(f^I M^I, ỹ^I)``, ỹ = onehot(y) until
  ``refine_from_stage1``, then ``w onehot(y) + (1-w) P̂(swapped view)`` with P̂ the
  top-``topk_stage1`` prediction of the modality memory;
- stage 2: ``CE(f^V M^V, y^V) + CE(f^I M^I, y^I)`` (own-memory, hard labels) plus
  ``lambda_cai [L_cai(f^V) + L_cai(f^I)]`` (``cai``; :func:`dmdl.losses.cai_loss`
  with soft targets ỹ from the shared memory's top-``topk_stage2`` prediction
  from ``refine_from_stage2`` on, hard before), plus an optional non-DMDL cross
  term ``cross_weight L_cross`` (PGM's, or the shared memory);
- both stages: ``lambda_tri(e) [Tri(f^V) + Tri(f^I)]`` (batch-hard, raw
  features), late stage 2 with ``lambda_tri = 1`` and the cross-modality
  ``Tri([f^V; f^I])``; ``lambda_fa [MMD(f^V_o, f^V_a) + MMD(f^I_o, f^I_a)]``
  (``cbt_feature``).

Every memory loss and update runs :func:`dmdl.ops.memory_loss` / :func:`dmdl.ops.momentum_update_`
(through :class:`dmdl.memories.CrossModalMemory`); CAI needs raw logits and keeps its own
matmuls (:func:`dmdl.losses.cai_loss`). Memory updates follow :mod:`dmdl.memories`; the
shared memory takes DMDL's adaptive momentum ``eta_x = 0.2 / max(ỹ_x[y_x], 0.2)`` (paper
Eqs. 12-13; the reference applies it in the forward pass, after the predictions it feeds are
taken; here after ``backward()``, with the same effect on every loss).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dmdl.config import parse_schedule
from dmdl.data.sampler import shared_identity_order
from dmdl.engine import run_steps
from dmdl.losses import cai_loss, mmd_loss, refined_targets, topk_prediction, triplet_loss, triplet_weight
from dmdl.memories import MODALITIES, CrossModalMemory
from dmdl.models.ghost_bn import dataparallel_order
from dmdl.pseudo_labels import associate, certainty, cluster_features, nearest_sample_matching
from dmdl.pseudo_labels.clustering import NoClustersError


def _other(modality: str) -> str:
    return "infrared" if modality == "visible" else "visible"


@dataclass
class EpochPlan:
    """What one epoch trains with (built by :meth:`DMDL.plan`)."""

    stage: int
    epoch: int
    labels: dict  # modality -> (N,) int64 label-space ids, -1 outliers
    memory: CrossModalMemory
    weights: dict  # modality -> (N,) float32 certainty (1 = hard label)
    anchor: str | None
    refine: bool  # use refined soft targets
    inter: bool  # late stage 2: paired-identity batches, cross-modality triplet
    w_tri: float


class DMDL:
    """The DMDL method: pseudo-labels, memories and the training step of one epoch.

    Args:
        engine: the :class:`dmdl.engine.Engine` running it (model, optimizer,
            data factory, config).
    """

    def __init__(self, engine):
        self.engine = engine
        self.cfg = engine.cfg
        self.triplet_schedule = {1: parse_schedule(self.cfg.stage1_triplet, "stage1_triplet"),
                                 2: parse_schedule(self.cfg.stage2_triplet, "stage2_triplet")}

    # ------------------------------------------------------------------ pseudo-labels
    def anchor(self, epoch: int) -> str:
        """Stage-2 anchor modality: infrared on even epochs, visible on odd ones (§A5.2)."""
        return "infrared" if epoch % 2 == 0 else "visible"

    def matching(self, epoch: int) -> str:
        """The stage-2 association of an epoch: ``cfg.association`` (cluster level) or
        ``"sample"`` (RegDB's cycle, §A5.2)."""
        if self.cfg.matching == "regdb-cycle" and epoch % 5 >= 2:
            return "sample"
        return self.cfg.association

    def pseudo_labels(self, stage: int, epoch: int, feats: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """DBSCAN labels per modality, unified in stage 2.

        Returns:
            (labels, stats): ``labels[m]`` (N_m,) int64 NumPy, -1 outliers (stage 1:
            each modality's clusters; stage 2: unified ids); stats for the log.
        """
        cfg = self.cfg
        eng = self.engine
        anchor = self.anchor(epoch) if stage == 2 else None
        labels, stats, dists = {}, {}, {}
        keep_dist = stage == 2 and cfg.association == "mult"  # MULT's transfer reads the Jaccard graphs
        for m in MODALITIES:
            k1 = cfg.k1_mapped if (stage == 2 and cfg.k1_mapped and m != anchor) else cfg.k1
            kw = dict(k1=k1, k2=cfg.k2, eps=cfg.eps, min_samples=cfg.min_samples, renormalize=False,
                      name=f"{m} training features")
            try:
                if keep_dist:
                    labels[m], dists[m] = cluster_features(feats[m], return_distance=True, **kw)
                else:
                    labels[m] = cluster_features(feats[m], **kw)
            except NoClustersError:
                labels[m] = np.full(len(feats[m]), -1, dtype=np.int64)  # the guard below says what to do
            if hasattr(eng, "check_clusters"):  # stops on no / one cluster, warns on many outliers
                eng.check_clusters(stage, epoch, m, labels[m], k1)
            stats[f"clusters_{m}"] = int(labels[m].max() + 1)
            stats[f"outliers_{m}"] = int((labels[m] < 0).sum())
            stats[f"ari_{m}"] = eng.label_quality((m,), labels[m])
        if stage == 2:
            how = self.matching(epoch)
            args = (feats["visible"], labels["visible"], feats["infrared"], labels["infrared"])
            if how == "sample":
                uv, ui, num_unified = nearest_sample_matching(*args, anchor=anchor)
            elif how == "mult":  # MULT's label transfer (algorithm.md §B3) on this epoch's Jaccard graphs
                uv, ui, num_unified = associate(
                    how, *args, anchor=anchor, dist_visible=dists["visible"], dist_infrared=dists["infrared"],
                    alpha=cfg.mult_alpha, temperature=cfg.temperature, lam=cfg.mult_lambda,
                    cross_affinity=cfg.cross_affinity, cross_k=cfg.cross_k)
            else:
                uv, ui, num_unified = associate(how, *args, anchor=anchor)
            labels = {"visible": uv, "infrared": ui}
            stats["unified_ids"] = num_unified
            stats["ari_unified"] = eng.label_quality(MODALITIES, np.concatenate([uv, ui]))
            stats["matching"] = f"{how}->{anchor}"
        return labels, stats

    def certainties(self, stage: int, feats: dict, labels: dict, memory: CrossModalMemory) -> dict:
        """Per-sample certainty w (§A4.3, §A5.4): GMMs on ``-p(y)`` under the memory.

        Stage 1: per modality, its own memory and clusters. Stage 2:
        the shared memory over the unified ids, both modalities' samples together
        Both stages: per-cluster GMMs, or with ``certainty_per_cluster`` False one global
        GMM (RegDB's reference in both stages). Outliers get 1.
        """
        cfg = self.cfg
        out = {}
        if stage == 1:
            for m in MODALITIES:
                out[m] = self._certainty_under(memory, m, feats[m], labels[m], per_cluster=cfg.certainty_per_cluster)
            return out
        both = torch.cat([feats[m] for m in MODALITIES])
        lab = np.concatenate([labels[m] for m in MODALITIES])
        w = self._certainty_under(memory, "shared", both, lab, per_cluster=cfg.certainty_per_cluster)
        n = len(labels["visible"])
        return {"visible": w[:n], "infrared": w[n:]}

    def _certainty_under(self, memory: CrossModalMemory, name: str, feats: torch.Tensor, labels: np.ndarray,
                         per_cluster: bool) -> np.ndarray:
        with torch.no_grad():
            prob = F.softmax(memory.logits(name, feats.float()), dim=1)
        lab = torch.as_tensor(labels, dtype=torch.long, device=prob.device)
        rows = torch.full_like(lab, prob.shape[1] - 1)  # outliers: column -1, as the reference indexes them
        inl = lab >= 0
        rows[inl] = memory.rows(name, lab[inl])
        p = prob.gather(1, rows.unsqueeze(1)).squeeze(1).double().cpu().numpy().clip(0.0, 1.0)
        return certainty(p, labels, per_cluster=per_cluster, loss=self.cfg.certainty_loss).astype(np.float32)

    # ------------------------------------------------------------------ one epoch
    def plan(self, stage: int, epoch: int, feats: dict) -> tuple[EpochPlan, dict]:
        """Pseudo-labels, memories, certainties and switches of one epoch."""
        cfg = self.cfg
        labels, stats = self.pseudo_labels(stage, epoch, feats)
        shared = stage == 2
        memory = CrossModalMemory.build(feats, labels, cfg.temperature, cfg.momentum, shared=shared)
        refine_from = cfg.refine_from_stage1 if stage == 1 else cfg.refine_from_stage2
        inter = stage == 2 and 0 <= cfg.inter_modality_from <= epoch
        refine = cfg.cbt_label and (epoch >= refine_from or inter)
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

    def epoch(self, stage: int, epoch: int) -> dict:
        """Features, the epoch's plan and ``cfg.iters_for(stage)`` training steps; returns log fields."""
        cfg = self.cfg
        num_iters = cfg.iters_for(stage)
        eng = self.engine
        t0 = time.time()
        renorm = cfg.renormalize == "always" or (cfg.renormalize == "stage2" and stage == 2)
        feats = {m: eng.extract(m, renormalize=renorm, flip=cfg.feature_flip) for m in MODALITIES}
        t1 = time.time()
        plan, stats = self.plan(stage, epoch, feats)
        t2 = time.time()

        seed = cfg.seed * 100003 + stage * 1000 + epoch
        self.last_plan = plan  # for the checkpoint (see checkpoint_state)
        self.last_sampler = {"seeds": {m: seed + 1 + i for i, m in enumerate(MODALITIES)}, "batches": num_iters,
                             "paired": plan.inter}
        order = shared_identity_order(plan.labels["visible"], plan.labels["infrared"], seed) if plan.inter else None
        loaders, kept, iters = {}, {}, {}
        for i, m in enumerate(MODALITIES):
            loaders[m] = eng.train_loader(m, plan.labels[m], stage, seed + 1 + i, id_order=order,
                                          pseudo_color=cfg.cbt_data)
            kept[m] = torch.as_tensor(plan.weights[m][plan.labels[m] >= 0])  # dataset index -> certainty
            iters[m] = iter(loaders[m])

        def next_batch(m):
            try:
                return next(iters[m])
            except StopIteration:
                iters[m] = iter(loaders[m])
                return next(iters[m])

        def batches():
            for _ in range(num_iters):
                yield {m: next_batch(m) for m in MODALITIES}

        def step(batch):
            return self.step(batch, {m: kept[m][batch[m][3]] for m in MODALITIES}, plan)

        eng.model.train()
        stats.update(run_steps(batches(), num_iters, step, f"stage {stage} epoch {epoch}"))
        stats["seconds_features"] = round(t1 - t0, 1)
        stats["seconds_clustering"] = round(t2 - t1, 1)
        stats["seconds_training"] = round(time.time() - t2, 1)
        return stats

    def checkpoint_state(self) -> dict:
        """The last epoch's pseudo-labels, memories (as built and updated by its steps) and
        sampler seeds, for the engine's checkpoint. Resuming does not need them (an epoch
        rebuilds its labels and memories from the model's features); they record what the
        epoch trained on."""
        plan = getattr(self, "last_plan", None)
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

    # ------------------------------------------------------------------ one step
    def _targets(self, plan: EpochPlan, name: str, f: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                 num_classes: int, k: int) -> torch.Tensor:
        """Soft targets (2B, num_classes) over memory ``name``'s label space: one-hot, or the
        refined ỹ = w onehot(y) + (1-w) P̂(swapped view) (§A4.3, §A7.2)."""
        if not plan.refine:
            return F.one_hot(y, num_classes).to(f.dtype)
        mem = plan.memory
        pred = topk_prediction(f, mem.memories[name].features, k, self.cfg.temperature)  # (2B, K_name)
        b = f.shape[0] // 2
        if self.cfg.swap_predictions:
            pred = torch.cat([pred[b:], pred[:b]])
        return refined_targets(y, w.to(f.device, f.dtype), pred)

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
        cfg = self.cfg
        eng = self.engine
        device = eng.device
        mem = plan.memory
        views, y, w = [], {}, {}
        for m in MODALITIES:
            v0, v1, lab, _ = batch[m]
            views += [v0, v1]
            y[m] = torch.cat([lab, lab]).to(device)  # both views share the pseudo-label and certainty
            w[m] = torch.cat([certainty_batch[m], certainty_batch[m]]).to(device)
        x = torch.cat(views).to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n = len(y["visible"])
        perm = None
        if cfg.ghost_bn_groups > 1:  # the reference's DataParallel replica layout (dmdl.models.ghost_bn)
            perm = dataparallel_order(n, cfg.ghost_bn_groups).to(device)
            x = x[perm]
        args = ()
        if getattr(eng.model, "two_stream", False):  # each row through its modality's stem (§B2)
            infrared = torch.arange(x.shape[0], device=device) >= n  # rows of x before the permutation
            args = (infrared if perm is None else infrared[perm],)
        with torch.autocast(device.type, dtype=torch.float16, enabled=eng.amp):
            out = eng.model(x, *args)
        out = out.float()
        if perm is not None:
            out = out[torch.argsort(perm)]
        f = {"visible": out[:n], "infrared": out[n:]}
        zero = out.new_zeros(())
        parts = {"loss_id": zero, "loss_cai": zero, "loss_cross": zero, "loss_triplet": zero, "loss_mmd": zero}
        targets: dict[str, torch.Tensor] = {}

        if plan.stage == 1:
            for m in MODALITIES:
                if plan.refine:  # CE_soft against the refined targets (§A4.3-§A4.4)
                    rows = mem.rows(m, y[m])
                    k_m = mem.memories[m].num_clusters
                    t = self._targets(plan, m, f[m], rows, w[m], k_m, cfg.topk_stage1)
                    parts["loss_id"] = parts["loss_id"] + mem.soft_loss(m, f[m], t)
                else:  # one-hot targets: the same loss by the hard-label path
                    parts["loss_id"] = parts["loss_id"] + mem.loss(m, f[m], y[m])
        else:
            for m in MODALITIES:
                parts["loss_id"] = parts["loss_id"] + mem.loss(m, f[m], y[m])
            if cfg.cai or cfg.adaptive_momentum:
                for m in MODALITIES:
                    targets[m] = self._targets(plan, "shared", f[m], y[m], w[m], mem.num_ids, cfg.topk_stage2)
            if cfg.cai:
                ids_v, ids_i = mem.row_ids("visible"), mem.row_ids("infrared")
                for m in MODALITIES:
                    parts["loss_cai"] = parts["loss_cai"] + cai_loss(
                        f[m], mem.memories["visible"].features, mem.memories["infrared"].features, ids_v, ids_i,
                        mem.prior["visible"], targets[m], cfg.temperature)
            if cfg.cross_weight > 0:
                if cfg.cross_memory == "shared":
                    parts["loss_cross"] = mem.loss("shared", f["visible"], y["visible"]) + \
                        mem.loss("shared", f["infrared"], y["infrared"])
                else:
                    mapped = _other(plan.anchor)
                    parts["loss_cross"] = mem.loss(plan.anchor, f[mapped], y[mapped])
        if plan.w_tri > 0:
            parts["loss_triplet"] = triplet_loss(f["visible"], y["visible"], cfg.triplet_margin) + \
                triplet_loss(f["infrared"], y["infrared"], cfg.triplet_margin)
            if plan.inter:  # cross-modality term over the paired batch (§A5.6)
                parts["loss_triplet"] = parts["loss_triplet"] + triplet_loss(
                    out, torch.cat([y["visible"], y["infrared"]]), cfg.triplet_margin)
        if cfg.cbt_feature:
            b = n // 2
            parts["loss_mmd"] = mmd_loss(f["visible"][:b], f["visible"][b:]) + \
                mmd_loss(f["infrared"][:b], f["infrared"][b:])
        loss = (parts["loss_id"] + cfg.lambda_cai * parts["loss_cai"] + cfg.cross_weight * parts["loss_cross"]
                + plan.w_tri * parts["loss_triplet"] + cfg.lambda_fa * parts["loss_mmd"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage {plan.stage} epoch {plan.epoch}: the loss is {loss.item()}; "
                                     "lower the learning rate (--lr)")
        eng.optimizer.zero_grad(set_to_none=True)
        eng.scaler.scale(loss).backward()
        eng.scaler.step(eng.optimizer)
        eng.scaler.update()

        with torch.no_grad():  # the documented update order (dmdl.memories)
            for m in MODALITIES:
                mem.update(m, f[m], y[m])
            if plan.stage == 2:
                mapped = _other(plan.anchor)
                mem.update(plan.anchor, f[mapped], y[mapped])  # semi-cross-modality update (§A5.5)
                for m in ("infrared", "visible"):  # the reference's order: IR memory forward first
                    mu = None
                    if cfg.adaptive_momentum and m in targets:  # eta_x = 0.2 / max(q, 0.2) (Eqs. 12-13)
                        q = targets[m].gather(1, y[m].unsqueeze(1)).squeeze(1)
                        mu = cfg.momentum / q.clamp_min(cfg.momentum)
                    mem.update("shared", f[m], y[m], mu)
        res = {k: v.item() for k, v in parts.items()}
        res["loss"] = loss.item()
        return res
