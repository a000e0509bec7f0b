"""The two-stage USL-VI-ReID trainer (algorithm.md §A1), baseline losses.

Stage 1 (single-modality): per modality, every epoch: features -> Jaccard ->
DBSCAN -> cluster memory from centroids -> ``iters`` iterations of
``L = L_id^V + L_id^I`` (memory contrastive loss, algorithm.md §A4.4 without
the CBT terms).

Stage 2 (cross-modality): the same clustering, then iMCA (§A5.2) maps one
modality's clusters into the other's label space (the anchor alternates: IR on
even epochs, visible on odd ones). Per modality a memory over the unified ids
it covers (§A5.3); loss ``L_id^V + L_id^I + cross_weight * L_cross`` where
``L_cross`` is the mapped modality's features against the anchor memory (PGM's
alternating cross-contrastive term, spec part C). Memory updates after each
backward, in this order: visible samples -> visible memory, infrared samples ->
infrared memory, mapped-modality samples -> anchor memory (the
"semi-cross-modality update" of §A5.5).

CAI and CBT (DMDL's contributions) replace ``L_cross`` in a later version.

Stage 2 starts with a fresh optimizer and LR schedule (§A1) and continues from
the stage-1 weights. No test-set model selection: the final model is the one
evaluated (the reference code picks the best epoch on the test set; we don't).
"""

from __future__ import annotations

import csv
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score
from torch.utils.data import DataLoader
from tqdm import tqdm

from dmdl.config import Config
from dmdl.data.loading import ImageListDataset
from dmdl.data.records import ImageRecord
from dmdl.data.sampler import PseudoIdentitySampler
from dmdl.data.transforms import train_transform
from dmdl.evaluation.runner import evaluate_model, extract_features, format_table
from dmdl.ops.memory import ClusterMemory, cluster_centroids
from dmdl.pseudo_labels import cluster_features, imca

CHECKPOINT_NAME = "checkpoint.pth"
RESULTS_NAME = "results.json"
# one row per epoch; the unified-label columns stay empty in stage 1
LOG_FIELDS = (
    "stage", "epoch", "lr",
    "clusters_visible", "outliers_visible", "ari_visible",
    "clusters_infrared", "outliers_infrared", "ari_infrared",
    "unified_ids", "ari_unified", "loss", "seconds",
)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``.

    Raises:
        RuntimeError: a CUDA device was asked for but torch sees none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but torch.cuda.is_available() is False")
    return dev


def load_dataset(name: str, root: str, trial: int = 1):
    """The reader of ``name`` (``regdb``, ``sysu``, ``llcm``) on ``root``.

    Raises:
        ValueError: unknown name or missing root.
    """
    from dmdl.data.llcm import LLCM
    from dmdl.data.regdb import RegDB
    from dmdl.data.sysu import SYSUMM01

    if not root:
        raise ValueError("data_root is not set: pass --data-root DIR")
    if name == "regdb":
        return RegDB(root, trial=trial)
    if name == "sysu":
        return SYSUMM01(root)
    if name == "llcm":
        return LLCM(root)
    raise ValueError(f"unknown dataset {name!r}; expected regdb, sysu or llcm")


def build_model_from_config(cfg: Config, pretrained: str | None = None):
    from dmdl.models import build_model

    return build_model(cfg.arch, pretrained=cfg.pretrained if pretrained is None else pretrained,
                       non_local=cfg.non_local)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """Runs :class:`Config` end to end: untrained evaluation, stage 1, stage 2,
    final evaluation; a checkpoint every epoch (resumable with ``cfg.resume``).
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg.validate()
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)
        self.dataset = load_dataset(cfg.dataset, cfg.data_root, cfg.trial)
        vis, ir = self.dataset.train_visible, self.dataset.train_infrared
        if cfg.max_train_images:
            vis, ir = vis[: cfg.max_train_images], ir[: cfg.max_train_images]
        if not vis or not ir:
            raise ValueError(f"{cfg.data_root}: the training split has no visible or no infrared image")
        self.train: dict[str, list[ImageRecord]] = {"visible": vis, "infrared": ir}
        self.model = build_model_from_config(cfg).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.image_cache: dict | bool = {} if cfg.cache_images else False
        self.results: dict[str, dict] = {}
        self.start = (1, 0)  # (stage, epoch) to run next
        self.optimizer = None
        self.scheduler = None
        self._optim_state = None
        if cfg.resume:
            self._load_checkpoint(cfg.resume)
        (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    # ------------------------------------------------------------------ checkpoints
    def _load_checkpoint(self, path: str) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: checkpoint not found: {path}")
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(ckpt["model"])
        self.results = ckpt.get("results", {})
        stage, epoch = ckpt["stage"], ckpt["epoch"]
        epochs = self.cfg.stage1_epochs if stage == 1 else self.cfg.stage2_epochs
        self.start = (stage, epoch + 1) if epoch + 1 < epochs else (stage + 1, 0)
        if self.start[0] == stage:
            self._optim_state = (ckpt["optimizer"], ckpt["scheduler"])
        rng = ckpt["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        print(f"resumed from {path}: stage {stage} epoch {epoch} done; next stage {self.start[0]} epoch {self.start[1]}")

    def _save_checkpoint(self, stage: int, epoch: int) -> None:
        _atomic_save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "stage": stage,
                "epoch": epoch,
                "config": self.cfg.to_dict(),
                "results": self.results,
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            },
            self.out / CHECKPOINT_NAME,
        )

    # ------------------------------------------------------------------ pieces
    def _extract(self, modality: str) -> torch.Tensor:
        cfg = self.cfg
        return extract_features(
            self.model, [r.path for r in self.train[modality]], cfg.height, cfg.width, self.device,
            batch_size=max(cfg.batch_size, 32), workers=cfg.workers, desc=f"features {modality}",
            cache=self.image_cache,
        )

    def _cluster(self, feats: torch.Tensor, modality: str) -> np.ndarray:
        cfg = self.cfg
        return cluster_features(feats, k1=cfg.k1, k2=cfg.k2, eps=cfg.eps, min_samples=cfg.min_samples,
                                name=f"{modality} training features")

    def _loader(self, modality: str, labels: np.ndarray, seed: int):
        cfg = self.cfg
        keep = np.flatnonzero(labels >= 0)
        recs = [self.train[modality][i] for i in keep]
        ds = ImageListDataset([r.path for r in recs], labels[keep].tolist(),
                              train_transform(modality, cfg.height, cfg.width, channel_exchange=cfg.channel_exchange,
                                              random_invert=cfg.random_invert),
                              cache=self.image_cache)
        sampler = PseudoIdentitySampler(labels[keep], [r.camid for r in recs], cfg.num_instances, seed=seed,
                                        min_length=cfg.batch_size)
        return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                          drop_last=True, pin_memory=self.device.type == "cuda")

    def _label_quality(self, modalities: tuple[str, ...], labels: np.ndarray) -> float:
        """Adjusted Rand index of pseudo-labels (the modalities' samples, concatenated)
        against the true pids, over non-outliers: a diagnostic only, never used to train."""
        pids = np.array([r.pid for m in modalities for r in self.train[m]])
        keep = labels >= 0
        return float(adjusted_rand_score(pids[keep], labels[keep])) if keep.sum() > 1 else float("nan")

    # ------------------------------------------------------------------ epochs
    def _make_optimizer(self, stage: int) -> None:
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        if self._optim_state is not None:  # resuming inside this stage
            self.optimizer.load_state_dict(self._optim_state[0])
            self.scheduler.load_state_dict(self._optim_state[1])
            self._optim_state = None

    def _epoch(self, stage: int, epoch: int) -> dict:
        cfg = self.cfg
        t0 = time.time()
        feats = {m: self._extract(m) for m in ("visible", "infrared")}
        labels = {m: self._cluster(feats[m], m) for m in ("visible", "infrared")}
        stats = {"stage": stage, "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        for m in labels:
            stats[f"clusters_{m}"] = int(labels[m].max() + 1)
            stats[f"outliers_{m}"] = int((labels[m] < 0).sum())
            stats[f"ari_{m}"] = self._label_quality((m,), labels[m])

        anchor = mapped = None
        if stage == 2:
            anchor = "infrared" if epoch % 2 == 0 else "visible"
            mapped = "visible" if anchor == "infrared" else "infrared"
            uv, ui, num_unified = imca(feats["visible"], labels["visible"], feats["infrared"],
                                       labels["infrared"], anchor=anchor)
            labels = {"visible": uv, "infrared": ui}
            stats["unified_ids"] = num_unified
            stats["ari_unified"] = self._label_quality(("visible", "infrared"),
                                                      np.concatenate([uv, ui]))

        # memories over the (unified) ids each modality covers; lookup unified id -> memory row
        memories, to_row = {}, {}
        for m in ("visible", "infrared"):
            lab = torch.as_tensor(labels[m])
            ids = torch.unique(lab[lab >= 0])
            lut = torch.full((int(lab.max()) + 1,), -1, dtype=torch.long)
            lut[ids] = torch.arange(len(ids))
            rows = torch.where(lab >= 0, lut[lab.clamp_min(0)], lab)
            cent = cluster_centroids(feats[m], rows.to(feats[m].device), len(ids))
            memories[m] = ClusterMemory.from_centroids(cent, cfg.temperature, cfg.momentum).to(self.device)
            to_row[m] = lut.to(self.device)
        if stage == 2 and cfg.cross_memory == "shared":
            both = torch.cat([torch.as_tensor(labels["visible"]), torch.as_tensor(labels["infrared"])])
            cent = cluster_centroids(torch.cat([feats["visible"], feats["infrared"]]), both.to(self.device),
                                     num_unified)
            memories["shared"] = ClusterMemory.from_centroids(cent, cfg.temperature, cfg.momentum).to(self.device)

        seed = cfg.seed * 100003 + stage * 1000 + epoch
        loaders = {m: self._loader(m, labels[m], seed + i) for i, m in enumerate(("visible", "infrared"))}
        iters = {m: iter(loaders[m]) for m in loaders}

        def next_batch(m):
            try:
                return next(iters[m])
            except StopIteration:
                iters[m] = iter(loaders[m])
                return next(iters[m])

        self.model.train()
        losses = []
        bar = tqdm(range(cfg.iters), desc=f"stage {stage} epoch {epoch}", leave=False, dynamic_ncols=True)
        for _ in bar:
            xv, yv, _ = next_batch("visible")
            xi, yi, _ = next_batch("infrared")
            x = torch.cat([xv, xi]).to(self.device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = {"visible": yv.to(self.device), "infrared": yi.to(self.device)}
            f = self.model(x)
            f = {"visible": f[: len(xv)], "infrared": f[len(xv):]}
            rows = {m: to_row[m][y[m]] for m in f}
            loss = memories["visible"](f["visible"], rows["visible"]) + memories["infrared"](f["infrared"], rows["infrared"])
            if stage == 2 and cfg.cross_weight > 0:
                if cfg.cross_memory == "shared":  # rows of the shared memory are the unified ids
                    cross = memories["shared"](f["visible"], y["visible"]) + memories["shared"](f["infrared"], y["infrared"])
                else:  # the anchor memory covers every unified id: its rows are the unified ids
                    cross = memories[anchor](f[mapped], to_row[anchor][y[mapped]])
                loss = loss + cfg.cross_weight * cross
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage {stage} epoch {epoch}: the loss is {loss.item()}; lower lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for m in ("visible", "infrared"):
                memories[m].update(f[m].detach(), rows[m])
            if stage == 2:
                memories[anchor].update(f[mapped].detach(), to_row[anchor][y[mapped]])
                if "shared" in memories:
                    for m in ("visible", "infrared"):
                        memories["shared"].update(f[m].detach(), y[m])
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        self.scheduler.step()
        stats["loss"] = float(np.mean(losses))
        stats["seconds"] = round(time.time() - t0, 1)
        return stats

    # ------------------------------------------------------------------ run
    def evaluate(self) -> dict:
        cfg = self.cfg
        return evaluate_model(self.model, cfg.dataset, self.dataset, cfg.height, cfg.width, self.device,
                              workers=cfg.workers, batch_size=max(cfg.batch_size, 32))

    def run(self) -> dict:
        """Train both stages and evaluate; returns ``{"untrained": ..., "trained": ...}``."""
        cfg = self.cfg
        t_start = time.time()
        if cfg.eval_untrained and "untrained" not in self.results:
            print("evaluating the untrained model ...")
            self.results["untrained"] = self.evaluate()
            print(format_table({"untrained": self.results["untrained"]}))
        log_path = self.out / "log.csv"
        writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tensorboard"))
        except ImportError:  # tensorboard is an install requirement; keep training if it is broken
            print("tensorboard is not importable: logging to log.csv only")
        for stage, epochs in ((1, cfg.stage1_epochs), (2, cfg.stage2_epochs)):
            if stage < self.start[0] or epochs == 0:
                continue
            self._make_optimizer(stage)
            first = self.start[1] if stage == self.start[0] else 0
            for epoch in range(first, epochs):
                stats = self._epoch(stage, epoch)
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
                new = not log_path.exists()
                with open(log_path, "a", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=LOG_FIELDS, restval="")
                    if new:
                        w.writeheader()
                    w.writerow(stats)
                if writer is not None:
                    step = (0 if stage == 1 else cfg.stage1_epochs) + epoch
                    for k, v in stats.items():
                        if k not in ("stage", "epoch"):
                            writer.add_scalar(f"stage{stage}/{k}", v, step)
                self._save_checkpoint(stage, epoch)
        if writer is not None:
            writer.close()
        print("evaluating the trained model ...")
        self.results["trained"] = self.evaluate()
        self.results["train_seconds"] = round(time.time() - t_start, 1)
        if self.optimizer is not None:
            # add the results to the last checkpoint, keeping its end-of-epoch RNG states (evaluation
            # draws from torch's RNG: DataLoader seeds), so that resuming from it stays exact
            ckpt = torch.load(self.out / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
            ckpt["results"] = self.results
            _atomic_save(ckpt, self.out / CHECKPOINT_NAME)
        report = {k: v for k, v in self.results.items() if k in ("untrained", "trained")}
        print(format_table(report))
        write_results(self.out / RESULTS_NAME, self.results, cfg.to_dict())
        return self.results


def write_results(path: Path, results: dict, config: dict) -> None:
    """Results JSON: metrics in percent, plus the config that produced them."""
    payload = {"units": "percent", "results": results, "config": config}
    Path(path).write_text(json.dumps(payload, indent=2))


def train(cfg: Config) -> dict:
    """Train with ``cfg``; see :class:`Trainer`."""
    return Trainer(cfg).run()
