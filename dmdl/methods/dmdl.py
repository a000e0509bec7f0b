"""DMDL's two-stage method (algorithm.md §A1-§A5, §A8), baseline losses.

Inside every epoch (the engine runs the epochs, see :mod:`dmdl.engine`):

1. features of both modalities' training images (flip-averaged; L2-renormalised
   per ``cfg.renormalize``: RegDB renormalises in stage 2 only, SYSU/LLCM never);
2. Jaccard + DBSCAN per modality (stage 2: the mapped modality with
   ``k1_mapped`` when set, §A5.1);
3. stage 2: association into one unified label space (§A5.2): iMCA, or on
   RegDB's cycle (``matching: regdb-cycle``) sample-level nearest-neighbour
   matching on epochs with ``epoch % 5 >= 2``; the anchor modality is IR on
   even epochs and visible on odd ones;
4. memories from centroids (:class:`dmdl.memories.CrossModalMemory`);
5. ``iters`` steps. Each step: 2 x batch_size visible images (originals, then
   their CA views) and 2 x batch_size infrared images (originals, then their
   pseudo-colour views), one forward through the shared backbone, and

   ``L = L_id^V + L_id^I + lambda_tri(e) [Tri(f^V) + Tri(f^I)] (+ cross_weight L_cross in stage 2)``

   where ``L_id^c`` is the memory contrastive loss of modality c against its own
   memory (both views, hard pseudo-labels, tau = 0.05), Tri the batch-hard
   triplet loss on raw BN features (margin 0.3) within a modality, and
   ``L_cross`` PGM's term (the mapped modality's features against the anchor
   memory) or, with ``cross_memory: shared``, both modalities against the shared
   memory. Memory updates follow the order documented in :mod:`dmdl.memories`.

DMDL's own modules (CAI, CBT's label and feature levels) replace ``L_cross``
and add terms in a later version; this module is the baseline they build on.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from dmdl.config import parse_schedule
from dmdl.losses import triplet_loss, triplet_weight
from dmdl.memories import MODALITIES, CrossModalMemory
from dmdl.pseudo_labels import cluster_features, imca, nearest_sample_matching

# kept importable from here for older scripts
from dmdl.engine import CHECKPOINT_NAME, RESULTS_NAME, Engine, train  # noqa: F401


def _other(modality: str) -> str:
    return "infrared" if modality == "visible" else "visible"


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
        """``"cluster"`` (iMCA) or ``"sample"`` (nearest sample) for a stage-2 epoch (§A5.2)."""
        if self.cfg.matching == "regdb-cycle" and epoch % 5 >= 2:
            return "sample"
        return "cluster"

    def pseudo_labels(self, stage: int, epoch: int, feats: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """DBSCAN labels per modality, unified in stage 2.

        Returns:
            (labels, stats): ``labels[m]`` (N_m,) int64 NumPy, -1 outliers (stage 1:
            each modality's clusters; stage 2: unified ids); stats for the log.
        """
        cfg = self.cfg
        eng = self.engine
        anchor = self.anchor(epoch) if stage == 2 else None
        labels, stats = {}, {}
        for m in MODALITIES:
            k1 = cfg.k1_mapped if (stage == 2 and cfg.k1_mapped and m != anchor) else cfg.k1
            labels[m] = cluster_features(feats[m], k1=k1, k2=cfg.k2, eps=cfg.eps, min_samples=cfg.min_samples,
                                         renormalize=False, name=f"{m} training features")
            stats[f"clusters_{m}"] = int(labels[m].max() + 1)
            stats[f"outliers_{m}"] = int((labels[m] < 0).sum())
            stats[f"ari_{m}"] = eng.label_quality((m,), labels[m])
        if stage == 2:
            how = self.matching(epoch)
            assoc = imca if how == "cluster" else nearest_sample_matching
            uv, ui, num_unified = assoc(feats["visible"], labels["visible"], feats["infrared"], labels["infrared"],
                                        anchor=anchor)
            labels = {"visible": uv, "infrared": ui}
            stats["unified_ids"] = num_unified
            stats["ari_unified"] = eng.label_quality(MODALITIES, np.concatenate([uv, ui]))
            stats["matching"] = f"{how}->{anchor}"
        return labels, stats

    # ------------------------------------------------------------------ one epoch
    def epoch(self, stage: int, epoch: int) -> dict:
        """Pseudo-labels, memories and ``cfg.iters`` training steps; returns log fields."""
        cfg = self.cfg
        eng = self.engine
        t0 = time.time()
        renorm = cfg.renormalize == "always" or (cfg.renormalize == "stage2" and stage == 2)
        feats = {m: eng.extract(m, renormalize=renorm) for m in MODALITIES}
        t1 = time.time()
        labels, stats = self.pseudo_labels(stage, epoch, feats)
        shared = stage == 2 and cfg.cross_weight > 0 and cfg.cross_memory == "shared"
        memory = CrossModalMemory.build(feats, labels, cfg.temperature, cfg.momentum, shared=shared)
        t2 = time.time()

        seed = cfg.seed * 100003 + stage * 1000 + epoch
        loaders = {m: eng.train_loader(m, labels[m], stage, seed + i) for i, m in enumerate(MODALITIES)}
        iters = {m: iter(loaders[m]) for m in loaders}

        def next_batch(m):
            try:
                return next(iters[m])
            except StopIteration:
                iters[m] = iter(loaders[m])
                return next(iters[m])

        anchor = self.anchor(epoch) if stage == 2 else None
        w_tri = triplet_weight(self.triplet_schedule[stage], epoch)
        eng.model.train()
        sums = {"loss": 0.0, "loss_id": 0.0, "loss_cross": 0.0, "loss_triplet": 0.0}
        bar = tqdm(range(cfg.iters), desc=f"stage {stage} epoch {epoch}", leave=False, dynamic_ncols=True)
        for _ in bar:
            batch = {m: next_batch(m) for m in MODALITIES}
            parts = self.step(batch, memory, stage, anchor, w_tri)
            for k, v in parts.items():
                sums[k] += v
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
        stats.update({k: v / max(cfg.iters, 1) for k, v in sums.items()})
        stats["seconds_features"] = round(t1 - t0, 1)
        stats["seconds_clustering"] = round(t2 - t1, 1)
        stats["seconds_training"] = round(time.time() - t2, 1)
        return stats

    def step(self, batch: dict, memory: CrossModalMemory, stage: int, anchor: str | None, w_tri: float) -> dict:
        """One optimisation step on a visible and an infrared two-view batch.

        Args:
            batch: ``{m: (view0 (B,3,H,W), view1 (B,3,H,W), labels (B,), index (B,))}``.
            memory: this epoch's memories; updated after the step (order in :mod:`dmdl.memories`).
            stage: 1 or 2. anchor: stage-2 anchor modality.
            w_tri: lambda_tri of this epoch.

        Returns:
            The loss and its parts as floats.

        Raises:
            FloatingPointError: a non-finite loss.
        """
        cfg = self.cfg
        eng = self.engine
        device = eng.device
        views, y = [], {}
        for m in MODALITIES:
            v0, v1, lab, _ = batch[m]
            views += [v0, v1]
            y[m] = torch.cat([lab, lab]).to(device)  # both views share the pseudo-label
        x = torch.cat(views).to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = eng.model(x)
        n = len(y["visible"])
        f = {"visible": out[:n], "infrared": out[n:]}

        loss_id = memory.loss("visible", f["visible"], y["visible"]) + memory.loss("infrared", f["infrared"], y["infrared"])
        loss = loss_id
        loss_cross = torch.zeros((), device=device)
        if stage == 2 and cfg.cross_weight > 0:
            if cfg.cross_memory == "shared":
                loss_cross = memory.loss("shared", f["visible"], y["visible"]) + \
                    memory.loss("shared", f["infrared"], y["infrared"])
            else:
                mapped = _other(anchor)
                loss_cross = memory.loss(anchor, f[mapped], y[mapped])
            loss = loss + cfg.cross_weight * loss_cross
        loss_tri = torch.zeros((), device=device)
        if w_tri > 0:
            loss_tri = triplet_loss(f["visible"], y["visible"], cfg.triplet_margin) + \
                triplet_loss(f["infrared"], y["infrared"], cfg.triplet_margin)
            loss = loss + w_tri * loss_tri
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage {stage}: the loss is {loss.item()}; lower the learning rate (--lr)")
        eng.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        eng.optimizer.step()

        with torch.no_grad():  # the documented update order (dmdl.memories)
            for m in MODALITIES:
                memory.update(m, f[m], y[m])
            if stage == 2:
                mapped = _other(anchor)
                memory.update(anchor, f[mapped], y[mapped])
                if "shared" in memory.memories:
                    for m in MODALITIES:
                        memory.update("shared", f[m], y[m])
        return {"loss": loss.item(), "loss_id": loss_id.item(), "loss_cross": loss_cross.item(),
                "loss_triplet": loss_tri.item()}
