"""The training engine: everything a run needs that is not the method's own idea.

The engine owns the run loop (stage 1 then stage 2, algorithm.md §A1), the
model, the optimizer and LR schedule per stage (§A10), checkpoints and exact
resume, logs (CSV + TensorBoard), the data factory (feature extraction over a
modality's training images, two-view training loaders, §A3-§A4.2) and the
evaluation calls. A *method* (``dmdl.methods``) owns what happens inside an
epoch: pseudo-labels, memories, the training step. ``Engine(cfg).run()``
trains one model; :func:`train_trials` trains one per RegDB trial and
averages them, as the papers report RegDB.

Data flow of one epoch: images -> features (:meth:`Engine.extract`) ->
Jaccard -> DBSCAN -> association -> memories -> losses -> step (the method).
"""

from __future__ import annotations

import csv
import json
import os
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score
from torch.utils.data import DataLoader

from dmdl.config import Config
from dmdl.data.loading import TwoViewDataset
from dmdl.data.records import ImageRecord
from dmdl.data.sampler import PseudoIdentitySampler
from dmdl.data.transforms import train_views
from dmdl.evaluation.runner import METRIC_KEYS, evaluate_model, extract_features, format_table

CHECKPOINT_NAME = "checkpoint.pth"
RESULTS_NAME = "results.json"
MODALITIES = ("visible", "infrared")
# one row per epoch; the unified-label columns stay empty in stage 1
LOG_FIELDS = (
    "stage", "epoch", "lr",
    "clusters_visible", "outliers_visible", "ari_visible",
    "clusters_infrared", "outliers_infrared", "ari_infrared",
    "unified_ids", "ari_unified", "matching", "certainty_visible", "certainty_infrared",
    "loss", "loss_id", "loss_cai", "loss_cross", "loss_triplet", "loss_mmd",
    "seconds_features", "seconds_clustering", "seconds_training", "seconds", "test_mAP",
)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs (CUDA too); cuDNN deterministic, no benchmark (§A10)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


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


def build_model_from_config(cfg: Config, pretrained: str | None = None) -> torch.nn.Module:
    """The backbone of ``cfg`` (``arch``, ``last_stride``, ``non_local``) with its weights
    (``cfg.pretrained`` unless ``pretrained`` is given), on the CPU."""
    from dmdl.models import build_model

    kwargs = {"last_stride": cfg.last_stride}
    if cfg.arch != "mobilenet_v2":
        kwargs["non_local"] = cfg.non_local
    return build_model(cfg.arch, pretrained=cfg.pretrained if pretrained is None else pretrained, **kwargs)


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a killed run never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_results(path: Path, results: dict, config: dict) -> None:
    """Results JSON: metrics in percent, plus the config that produced them."""
    payload = {"units": "percent", "results": results, "config": config}
    Path(path).write_text(json.dumps(payload, indent=2))


class Engine:
    """Runs :class:`Config` end to end with one method: evaluation of the initial
    (ImageNet) model, stage 1, stage 2, evaluation of the final model; a
    checkpoint after every epoch (resumable with ``cfg.resume``).

    Args:
        cfg: the run's configuration.
        method: a callable ``method(engine) -> object`` with ``epoch(stage, epoch) -> dict``
            (default: the method named by ``cfg.method``).

    Raises:
        ValueError / FileNotFoundError: bad config, dataset or checkpoint (messages name it).
    """

    def __init__(self, cfg: Config, method: Callable | None = None):
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
        if cfg.ghost_bn_groups > 1:
            from dmdl.models.ghost_bn import convert_ghost_batchnorm

            convert_ghost_batchnorm(self.model, cfg.ghost_bn_groups)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.image_cache: dict | bool = {} if cfg.cache_images else False
        self.results: dict[str, dict] = {}
        self.start = (1, 0)  # (stage, epoch) to run next
        self.optimizer = None
        self.scheduler = None
        self._optim_state = None
        if method is None:
            from dmdl.methods import get_method

            method = get_method(cfg.method)
        self.method = method(self)
        if cfg.resume:
            self._load_checkpoint(cfg.resume)
        (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    # ------------------------------------------------------------------ checkpoints
    def _load_checkpoint(self, path: str) -> None:
        if os.path.isdir(path):
            path = os.path.join(path, CHECKPOINT_NAME)
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
        atomic_save(
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

    # ------------------------------------------------------------------ data factory
    def extract(self, modality: str, renormalize: bool) -> torch.Tensor:
        """Flip-averaged eval-mode features of a modality's training images (§A1.2).

        Returns:
            (N_modality, D) float32 on the engine's device; L2-renormalised when asked.
        """
        cfg = self.cfg
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):  # §A1.2: fp16 on CUDA
            return extract_features(
                self.model, [r.path for r in self.train[modality]], cfg.height, cfg.width, self.device,
                batch_size=max(cfg.batch_size, 32), workers=cfg.workers, desc=f"features {modality}",
                cache=self.image_cache, renormalize=renormalize,
            )

    def train_loader(self, modality: str, labels: np.ndarray, stage: int, seed: int,
                     id_order: Sequence[int] | None = None, pseudo_color: bool = True) -> DataLoader:
        """Two-view loader over a modality's labelled images (§A3, §A4.2).

        Batches are ``(view0, view1, label, index)``, ``batch_size`` images of
        ``batch_size / num_instances`` pseudo-identities, drawn by the camera-aware
        :class:`PseudoIdentitySampler`; samples labelled -1 are left out, and
        ``index`` counts the labelled samples in their original order.
        ``id_order``: paired-identity batches (§A5.6, see the sampler);
        ``pseudo_color``: the infrared second view (see :func:`train_views`).
        """
        cfg = self.cfg
        keep = np.flatnonzero(labels >= 0)
        recs = [self.train[modality][i] for i in keep]
        area = cfg.erasing_max_area_stage2 if stage == 2 else cfg.erasing_max_area
        ds = TwoViewDataset([r.path for r in recs], labels[keep].tolist(),
                            train_views(modality, cfg.height, cfg.width, erasing_max_area=area,
                                        pseudo_color=pseudo_color),
                            cache=self.image_cache)
        sampler = PseudoIdentitySampler(labels[keep], [r.camid for r in recs], cfg.num_instances, seed=seed,
                                        min_length=cfg.batch_size, id_order=id_order)
        return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                          drop_last=True, pin_memory=self.device.type == "cuda")

    def label_quality(self, modalities: Sequence[str], labels: np.ndarray) -> float:
        """Adjusted Rand index of pseudo-labels (the modalities' samples, concatenated)
        against the true pids, over non-outliers: a diagnostic only, never used to train."""
        pids = np.array([r.pid for m in modalities for r in self.train[m]])
        keep = labels >= 0
        return float(adjusted_rand_score(pids[keep], labels[keep])) if keep.sum() > 1 else float("nan")

    # ------------------------------------------------------------------ run
    def _make_optimizer(self) -> None:
        """Adam + StepLR, fresh for each stage (§A1, §A10)."""
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        if self._optim_state is not None:  # resuming inside this stage
            self.optimizer.load_state_dict(self._optim_state[0])
            self.scheduler.load_state_dict(self._optim_state[1])
            self._optim_state = None

    def evaluate(self) -> dict:
        """The dataset's test protocol on the current model (see :func:`evaluate_model`)."""
        cfg = self.cfg
        return evaluate_model(self.model, cfg.dataset, self.dataset, cfg.height, cfg.width, self.device,
                              workers=cfg.workers, batch_size=max(cfg.batch_size, 32))

    def _log(self, stats: dict, writer) -> None:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()), flush=True)
        log_path = self.out / "log.csv"
        new = not log_path.exists()
        with open(log_path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_FIELDS, restval="", extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(stats)
        if writer is not None:
            step = (0 if stats["stage"] == 1 else self.cfg.stage1_epochs) + stats["epoch"]
            for k, v in stats.items():
                if k not in ("stage", "epoch") and isinstance(v, (int, float)):
                    writer.add_scalar(f"stage{stats['stage']}/{k}", v, step)

    def _select_on_test(self, stage: int, epoch: int, stats: dict) -> None:
        """The reference's model selection (§A1.2 step 9): evaluate on the TEST set after every
        epoch and keep the best by test mAP (RegDB V->T, SYSU all-search, LLCM VIS->IR) in
        ``test_selected.pth``. Its numbers are reported as ``test_selected``, never as ``trained``:
        they are chosen on the test set."""
        key = {"regdb": "v2t", "sysu": "all", "llcm": "vis2ir"}[self.cfg.dataset]
        res = self.evaluate()
        stats["test_mAP"] = res[key]["mAP"]
        best = self.results.get("test_selected")
        if best is None or res[key]["mAP"] > best[key]["mAP"]:
            self.results["test_selected"] = dict(res, stage=stage, epoch=epoch,
                                                 note="selected on the test set (reference protocol): optimistic")
            atomic_save({"model": self.model.state_dict(), "config": self.cfg.to_dict(), "stage": stage,
                         "epoch": epoch, "results": self.results}, self.out / "test_selected.pth")

    def run(self) -> dict:
        """Train both stages and evaluate; returns ``{"untrained": ..., "trained": ...}``
        (``untrained`` is the initial model: ImageNet weights unless ``pretrained: none``)."""
        cfg = self.cfg
        t_start = time.time()
        if cfg.eval_untrained and "untrained" not in self.results:
            print("evaluating the initial (untrained) model ...", flush=True)
            self.results["untrained"] = self.evaluate()
            print(format_table({"untrained": self.results["untrained"]}), flush=True)
        writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tensorboard"))
        except ImportError:  # tensorboard is an install requirement; keep training if it is broken
            print("tensorboard is not importable: logging to log.csv only")
        for stage, epochs in ((1, cfg.stage1_epochs), (2, cfg.stage2_epochs)):
            if stage < self.start[0] or epochs == 0:
                continue
            self._make_optimizer()
            first = self.start[1] if stage == self.start[0] else 0
            for epoch in range(first, epochs):
                t0 = time.time()
                stats = {"stage": stage, "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
                stats.update(self.method.epoch(stage, epoch))
                self.scheduler.step()
                stats["seconds"] = round(time.time() - t0, 1)
                if cfg.select_on_test:
                    self._select_on_test(stage, epoch, stats)
                self._log(stats, writer)
                self._save_checkpoint(stage, epoch)
        if writer is not None:
            writer.close()
        print("evaluating the trained model ...", flush=True)
        self.results["trained"] = self.evaluate()
        self.results["train_seconds"] = round(time.time() - t_start, 1)
        if self.optimizer is not None:
            # add the results to the last checkpoint, keeping its end-of-epoch RNG states (evaluation
            # draws from torch's RNG: DataLoader seeds), so that resuming from it stays exact
            ckpt = torch.load(self.out / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
            ckpt["results"] = self.results
            atomic_save(ckpt, self.out / CHECKPOINT_NAME)
        report = {k: v for k, v in self.results.items() if k in ("untrained", "trained")}
        if "test_selected" in self.results:
            sel = self.results["test_selected"]
            report["test-sel."] = {k: v for k, v in sel.items() if isinstance(v, dict)}
            print(f"test-sel. = the epoch with the best TEST mAP (stage {sel['stage']} epoch {sel['epoch']}), "
                  "the reference's selection: optimistic, not a held-out result")
        print(format_table(report))
        write_results(self.out / RESULTS_NAME, self.results, cfg.to_dict())
        print(f"results: {self.out / RESULTS_NAME}; checkpoint: {self.out / CHECKPOINT_NAME}", flush=True)
        return self.results


def train(cfg: Config) -> dict:
    """Train with ``cfg``; see :class:`Engine`."""
    return Engine(cfg).run()


def parse_trials(text: str | int) -> list[int]:
    """``"all"`` -> 1..10; ``"1,3,5"`` -> [1, 3, 5]; ``"2"`` -> [2] (RegDB trials).

    Raises:
        ValueError: a trial outside 1..10 or unreadable text.
    """
    text = str(text).strip().lower()
    if text == "all":
        return list(range(1, 11))
    try:
        trials = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--trial: expected 'all', a number or a comma list, got {text!r}") from None
    if not trials or any(not 1 <= t <= 10 for t in trials):
        raise ValueError(f"--trial: RegDB trials are 1..10, got {text!r}")
    return trials


def train_trials(cfg: Config, trials: Sequence[int]) -> dict:
    """One model per RegDB trial (each trained and tested on its own split), then the mean.

    Runs go to ``<output_dir>/trial<T>``; ``<output_dir>/results_trials.json``
    holds every trial's metrics and the mean over the trials (percent), which
    is what the papers report for RegDB ("ten trials").

    Returns:
        ``{"trials": {T: {"untrained": ..., "trained": ...}}, "mean": {...}}``.

    Raises:
        ValueError: the dataset is not RegDB.
    """
    import dataclasses

    if cfg.dataset != "regdb":
        raise ValueError(f"--trial all / a trial list is for RegDB; the config's dataset is {cfg.dataset!r}")
    root = Path(cfg.output_dir)
    per_trial: dict[int, dict] = {}
    for t in trials:
        print(f"===== RegDB trial {t} =====", flush=True)
        sub = dataclasses.replace(cfg, trial=t, output_dir=str(root / f"trial{t}"),
                                  resume=None if cfg.resume is None else str(Path(cfg.resume) / f"trial{t}"))
        if sub.resume is not None and not (Path(sub.resume) / CHECKPOINT_NAME).is_file():
            sub = dataclasses.replace(sub, resume=None)
        if (Path(sub.output_dir) / RESULTS_NAME).is_file() and cfg.resume is not None:
            per_trial[t] = json.loads((Path(sub.output_dir) / RESULTS_NAME).read_text())["results"]
            continue
        res = Engine(sub).run()
        per_trial[t] = {k: res[k] for k in ("untrained", "trained") if k in res}
    mean: dict[str, dict] = {}
    for model in ("untrained", "trained"):
        runs = [r[model] for r in per_trial.values() if model in r]
        if runs:
            mean[model] = {s: {k: float(np.mean([r[s][k] for r in runs])) for k in METRIC_KEYS}
                           for s in ("v2t", "t2v")}
    print(format_trials(per_trial, mean))
    summary = {"units": "percent", "trials": per_trial, "mean": mean, "config": cfg.to_dict()}
    (root / "results_trials.json").write_text(json.dumps(summary, indent=2))
    print(f"results: {root / 'results_trials.json'}", flush=True)
    return {"trials": per_trial, "mean": mean}


def format_trials(per_trial: dict[int, dict], mean: dict[str, dict]) -> str:
    """Per-trial rows of the trained model and the mean row, V->T and T->V."""
    head = f"{'trial':<7}{'model':<10}" + "".join(f"{'V->T ' + k:>12}" for k in ("rank1", "mAP", "mINP")) + \
        "".join(f"{'T->V ' + k:>12}" for k in ("rank1", "mAP", "mINP"))
    lines = [head, "-" * len(head)]
    rows = [(str(t), r) for t, r in per_trial.items()] + [("mean", mean)]
    for name, res in rows:
        for model in ("untrained", "trained"):
            if model not in res:
                continue
            v = res[model]
            lines.append(f"{name:<7}{model:<10}" + "".join(f"{v['v2t'][k]:>12.2f}" for k in ("rank1", "mAP", "mINP"))
                         + "".join(f"{v['t2v'][k]:>12.2f}" for k in ("rank1", "mAP", "mINP")))
    return "\n".join(lines)
