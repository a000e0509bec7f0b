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
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score
from torch.utils.data import DataLoader
from tqdm import tqdm

from dmdl.config import Config, parse_trials  # noqa: F401  (parse_trials: re-exported)
from dmdl.data.check import available_cores, preflight
from dmdl.data.registry import open_dataset
from dmdl.data.loading import TwoViewDataset
from dmdl.data.records import ImageRecord
from dmdl.data.sampler import PseudoIdentitySampler
from dmdl.data.transforms import train_views
from dmdl.errors import CheckpointError, TrainingError
from dmdl.evaluation.runner import METRIC_KEYS, evaluate_model, format_table
from dmdl.features import extract_features
from dmdl.guards import check_clustering, non_finite_loss_message

CHECKPOINT_NAME = "checkpoint.pth"
RESULTS_NAME = "results.json"
TRIALS_NAME = "trials.json"  # the trial list of a `--trial all` / `--trial 1,2,3` run directory
MODALITIES = ("visible", "infrared")
# one row per epoch; the unified-label columns stay empty in stage 1
LOG_FIELDS = (
    "stage", "epoch", "lr",
    "clusters_visible", "outliers_visible", "ari_visible",
    "clusters_infrared", "outliers_infrared", "ari_infrared",
    "unified_ids", "ari_unified", "matching", "certainty_visible", "certainty_infrared",
    "loss", "loss_id", "loss_cai", "loss_cross", "loss_triplet", "loss_mmd",
    "loss_ms", "loss_ma", "loss_oclr", "seconds_transfer", "transfer_iterations",
    "seconds_features", "seconds_clustering", "seconds_training", "seconds", "test_mAP",
)


def run_steps(batches: Iterable, total: int, step: Callable[[Any], dict], desc: str) -> dict:
    """The training steps of one epoch, for a method: ``step(batch)`` on each of ``total`` batches
    (a progress bar shows the loss), a non-finite loss reported with its iteration.

    Returns:
        The mean over the steps of every float ``step`` returns (``loss`` and its parts).

    Raises:
        FloatingPointError: from ``step``, with ``iteration i/total`` prepended.
    """
    sums: dict[str, float] = {}
    bar = tqdm(batches, total=total, desc=desc, leave=False, dynamic_ncols=True)
    for it, batch in enumerate(bar):
        try:
            parts = step(batch)
        except FloatingPointError as exc:  # name the iteration too
            raise FloatingPointError(f"iteration {it + 1}/{total} of {exc}") from None
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix(loss=f"{parts['loss']:.3f}")
    return {k: v / max(total, 1) for k, v in sums.items()}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs (CUDA too); cuDNN deterministic, no benchmark (§A10)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def set_deterministic() -> None:
    """Deterministic kernels (``--deterministic``): ``torch.use_deterministic_algorithms`` (ops
    without a deterministic implementation warn), cuDNN deterministic, cuBLAS workspace fixed.
    With the same machine, thread count and workers, a run is then reproducible, and a run
    resumed from a checkpoint ends as the uninterrupted run."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
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
    """The reader of ``name`` (``regdb``, ``sysu``, ``llcm``) on ``root``
    (see :func:`dmdl.data.check.preflight` for the checked version).

    Raises:
        ValueError: unknown name or missing root; FileNotFoundError / ValueError from the reader.
    """
    return open_dataset(name, root, trial)


def build_model_from_config(cfg: Config, pretrained: str | None = None) -> torch.nn.Module:
    """The backbone of ``cfg`` (``arch``, ``last_stride``, ``non_local``, ``two_stream``) with
    its weights (``cfg.pretrained`` unless ``pretrained`` is given), on the CPU."""
    from dmdl.models import build_model

    kwargs = {"last_stride": cfg.last_stride}
    if cfg.arch != "mobilenet_v2":
        kwargs["non_local"] = cfg.non_local
    return build_model(cfg.arch, pretrained=cfg.pretrained if pretrained is None else pretrained,
                       two_stream=cfg.two_stream, **kwargs)


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, flushed to disk, then renamed over ``path``: a run
    killed at any moment leaves either the previous file or the new one, never half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


CHECKPOINT_KEYS = ("model", "config", "stage", "epoch")


def load_checkpoint(path, map_location="cpu", need=CHECKPOINT_KEYS) -> dict:
    """Read a dmdl checkpoint (a run directory means its ``checkpoint.pth``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not a (complete) dmdl checkpoint; the message names it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        text = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}"
                              f"{': ' + text[:200] if text else ''}); was it written by dmdl train, "
                              "and completely?") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a dmdl checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in need if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a dmdl checkpoint: no {', '.join(repr(k) for k in missing)} "
                              f"entr{'y' if len(missing) == 1 else 'ies'}")
    return ckpt


def resolve_resume(resume: str | None) -> Path | None:
    """The checkpoint file ``cfg.resume`` points to, or None when it is a run directory
    without one yet (the run was stopped before its first epoch ended: start afresh).

    Raises:
        FileNotFoundError: neither a checkpoint file nor a directory.
    """
    if not resume:
        return None
    path = Path(resume)
    if path.is_dir():
        return path / CHECKPOINT_NAME if (path / CHECKPOINT_NAME).is_file() else None
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint file or run directory at {path}")
    return path


def _fmt_seconds(sec: float) -> str:
    sec = int(round(sec))
    return f"{sec // 3600}:{sec % 3600 // 60:02d}:{sec % 60:02d}"


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
        dataset: the reader of ``cfg``'s dataset, already checked (default: read and checked
            here with :func:`dmdl.data.check.preflight`).
        announce: print the output directory (the CLI prints it itself, earlier).

    Raises:
        ValueError / FileNotFoundError: bad config, dataset or checkpoint (messages name it).
    """

    def __init__(self, cfg: Config, method: Callable | None = None, dataset=None, announce: bool = True):
        self.cfg = cfg.validate()
        if cfg.deterministic:
            set_deterministic()
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if announce:
            print(f"output directory: {self.out.resolve()}", flush=True)
        resume = resolve_resume(cfg.resume)
        if cfg.resume and resume is None:
            print(f"--resume: {cfg.resume} holds no checkpoint yet (stopped before the first epoch ended): "
                  "starting from the beginning", flush=True)
        seed_everything(cfg.seed)
        if dataset is None:
            dataset = preflight(cfg.dataset, cfg.data_root, cfg.trial, images=cfg.check_images,
                                max_train_images=cfg.max_train_images, log=print)
        self.dataset = dataset
        vis, ir = self.dataset.train_visible, self.dataset.train_infrared
        if cfg.max_train_images:
            vis, ir = vis[: cfg.max_train_images], ir[: cfg.max_train_images]
        if not vis or not ir:
            raise ValueError(f"{cfg.data_root}: the training split has no visible or no infrared image")
        self.train: dict[str, list[ImageRecord]] = {"visible": vis, "infrared": ir}
        self.workers = min(cfg.workers, available_cores())  # DataLoader workers beyond the cores only slow down
        if self.workers < cfg.workers:
            print(f"workers: {self.workers} (the {available_cores()} CPU cores available; the config asks "
                  f"{cfg.workers})", flush=True)
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
        self.last_checkpoint: tuple[Path, int, int] | None = None  # (file, stage, epoch) of the last good one
        if method is None:
            from dmdl.methods import get_method

            method = get_method(cfg.method)
        self.method = method(self)
        if resume is not None:
            self._load_checkpoint(resume)
        (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    # ------------------------------------------------------------------ checkpoints
    # keys that may differ between a checkpoint's config and the resumed run's without changing the result
    _RESUME_FREE = ("resume", "output_dir", "data_root", "device", "cache_images", "eval_untrained", "check_images",
                    "max_outlier_share")

    def _load_checkpoint(self, path: Path) -> None:
        cfg = self.cfg
        ckpt = load_checkpoint(path, map_location=self.device,
                               need=CHECKPOINT_KEYS + ("optimizer", "scheduler", "rng"))
        old = ckpt["config"]
        for key in ("dataset", "trial", "arch"):
            if old.get(key) != getattr(cfg, key):
                raise CheckpointError(f"--resume: {path} was trained with {key} {old.get(key)!r}, this run has "
                                      f"{getattr(cfg, key)!r}")
        changed = [f"{k} {old[k]!r} -> {v!r}" for k, v in cfg.to_dict().items()
                   if k in old and old[k] != v and k not in self._RESUME_FREE]
        if changed:
            print(f"warning: resuming with settings that differ from {path}'s: {'; '.join(changed)}: the result "
                  "will differ from an uninterrupted run", file=sys.stderr, flush=True)
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"--resume: {path} does not fit the model of this config "
                                  f"({str(exc).splitlines()[0]})") from None
        self.results = ckpt.get("results", {})
        stage, epoch = ckpt["stage"], ckpt["epoch"]
        epochs = cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs
        self.start = (stage, epoch + 1) if epoch + 1 < epochs else (stage + 1, 0)
        if self.start[0] == stage:
            self._optim_state = (ckpt["optimizer"], ckpt["scheduler"], float(old.get("lr", cfg.lr)))
        if ckpt.get("scaler") and self.scaler.is_enabled():  # the scaler lives across stages
            self.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"].cpu())
        if rng.get("cuda") is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        if ckpt.get("workers") not in (None, self.workers):
            print(f"warning: the checkpoint ran with {ckpt['workers']} DataLoader workers, this run has "
                  f"{self.workers}: the augmentations (and the result) will differ from an uninterrupted run",
                  file=sys.stderr, flush=True)
        self._truncate_log(stage, epoch)
        self.last_checkpoint = (Path(path), stage, epoch)
        nxt = f"next stage {self.start[0]} epoch {self.start[1]}" if self.start[0] <= 2 else \
            "every epoch is done (the final evaluation runs again)"
        print(f"resumed from {path}: stage {stage} epoch {epoch} done; {nxt}", flush=True)

    def _truncate_log(self, stage: int, epoch: int) -> None:
        """Drop log.csv rows after the checkpoint's epoch (written by the run that was stopped)."""
        log_path = self.out / "log.csv"
        if not log_path.is_file():
            return
        with open(log_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        keep = [r for r in rows if (int(r["stage"]), int(r["epoch"])) <= (stage, epoch)]
        if len(keep) < len(rows):
            with open(log_path, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=LOG_FIELDS, restval="", extrasaction="ignore")
                w.writeheader()
                w.writerows(keep)

    def _save_checkpoint(self, stage: int, epoch: int) -> None:
        """Everything a resumed run needs to continue exactly (model, optimizer, scheduler, AMP
        scaler, RNG states), plus what the epoch trained on (its pseudo-labels, memories and
        sampler seeds, from the method). Written atomically after every epoch."""
        state = {
            "format": 2,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "stage": stage,
            "epoch": epoch,
            "config": self.cfg.to_dict(),
            "results": self.results,
            "workers": self.workers,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        if hasattr(self.method, "checkpoint_state"):
            state.update(self.method.checkpoint_state())
        atomic_save(state, self.out / CHECKPOINT_NAME)
        self.last_checkpoint = (self.out / CHECKPOINT_NAME, stage, epoch)

    def check_clusters(self, stage: int, epoch: int, modality: str, labels: np.ndarray, k1: int) -> None:
        """The method's DBSCAN result for one modality (see :func:`dmdl.guards.check_clustering`):
        raises :class:`TrainingError` on no / too few clusters, prints a warning on many outliers."""
        cfg = self.cfg
        warning = check_clustering(labels, what=f"{modality} training images", where=f"stage {stage} epoch {epoch}",
                                   eps=cfg.eps, k1=k1, min_samples=cfg.min_samples, min_clusters=cfg.min_clusters,
                                   max_outlier_share=cfg.max_outlier_share)
        if warning:
            print(warning, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ data factory
    def extract(self, modality: str, renormalize: bool, flip: bool = True) -> torch.Tensor:
        """Eval-mode features of a modality's training images, flip-averaged unless ``flip`` is
        False (§A1.2; MULT §B1 does not flip); a two-stream model runs them through that
        modality's stem (§B1).

        Returns:
            (N_modality, D) float32 on the engine's device; L2-renormalised when asked.
        """
        cfg = self.cfg
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):  # §A1.2: fp16 on CUDA
            return extract_features(
                self.model, [r.path for r in self.train[modality]], cfg.height, cfg.width, self.device,
                batch_size=max(cfg.batch_size, 32), workers=self.workers, desc=f"features {modality}",
                cache=self.image_cache, renormalize=renormalize, flip=flip, modality=modality,
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
        return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=self.workers,
                          drop_last=True, pin_memory=self.device.type == "cuda")

    def label_quality(self, modalities: Sequence[str], labels: np.ndarray) -> float:
        """Adjusted Rand index of pseudo-labels (the modalities' samples, concatenated)
        against the true pids, over non-outliers: a diagnostic only, never used to train."""
        pids = np.array([r.pid for m in modalities for r in self.train[m]])
        keep = labels >= 0
        return float(adjusted_rand_score(pids[keep], labels[keep])) if keep.sum() > 1 else float("nan")

    # ------------------------------------------------------------------ run
    def _make_optimizer(self, stage: int = 1) -> None:
        """Adam, fresh for each stage (§A1, §A10), with StepLR(step_size, gamma) per stage, or with
        ``lr_milestones`` the LR multiplied by gamma at each milestone epoch counted over both
        stages (MULT §B5: 20, 60, 80 of 90)."""
        from dmdl.config import parse_milestones

        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        milestones = parse_milestones(cfg.lr_milestones)
        if milestones:
            offset = 0 if stage == 1 else cfg.stage1_epochs
            gamma = cfg.gamma
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda e: gamma ** sum(m <= offset + e for m in milestones))
        else:
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.step_size,
                                                             gamma=cfg.gamma)
        if self._optim_state is not None:  # resuming inside this stage
            self.optimizer.load_state_dict(self._optim_state[0])
            self.scheduler.load_state_dict(self._optim_state[1])
            scale = cfg.lr / self._optim_state[2]
            if scale != 1.0:  # --resume RUN_DIR --lr X: the new base rate, at the schedule's current step
                for group in self.optimizer.param_groups:
                    group["lr"] *= scale
                    group["initial_lr"] = cfg.lr
                self.scheduler.base_lrs = [cfg.lr] * len(self.optimizer.param_groups)
                self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
            self._optim_state = None

    def evaluate(self) -> dict:
        """The dataset's test protocol on the current model (see :func:`evaluate_model`)."""
        cfg = self.cfg
        return evaluate_model(self.model, cfg.dataset, self.dataset, cfg.height, cfg.width, self.device,
                              workers=self.workers, batch_size=max(cfg.batch_size, 32))

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
        total = cfg.stage1_epochs + cfg.stage2_epochs
        done_before = (0 if self.start[0] == 1 else cfg.stage1_epochs) + self.start[1] if self.start[0] <= 2 else total
        t_train, done = time.time(), 0
        for stage, epochs in ((1, cfg.stage1_epochs), (2, cfg.stage2_epochs)):
            if stage < self.start[0] or epochs == 0:
                continue
            self._make_optimizer(stage)
            first = self.start[1] if stage == self.start[0] else 0
            for epoch in range(first, epochs):
                t0 = time.time()
                stats = {"stage": stage, "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
                try:
                    stats.update(self.method.epoch(stage, epoch))
                except FloatingPointError as exc:
                    last = self.last_checkpoint
                    where = None if last is None else f"{last[0]} (stage {last[1]} epoch {last[2]})"
                    raise TrainingError(non_finite_loss_message(str(exc), where, str(self.out), cfg.lr)) from None
                self.scheduler.step()
                stats["seconds"] = round(time.time() - t0, 1)
                if cfg.select_on_test:
                    self._select_on_test(stage, epoch, stats)
                self._log(stats, writer)
                self._save_checkpoint(stage, epoch)
                done += 1
                elapsed = time.time() - t_start
                eta = (time.time() - t_train) / done * (total - done_before - done)
                print(f"progress: {done_before + done}/{total} epochs done (stage {stage}: {epoch + 1}/{epochs}), "
                      f"elapsed {_fmt_seconds(elapsed)}, ETA {_fmt_seconds(eta)} + the final evaluation; "
                      f"checkpoint {self.out / CHECKPOINT_NAME}", flush=True)
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
        print(f"output directory: {self.out.resolve()} ({_fmt_seconds(time.time() - t_start)})", flush=True)
        return self.results


def train(cfg: Config) -> dict:
    """Train with ``cfg``; see :class:`Engine`."""
    return Engine(cfg).run()


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
    root.mkdir(parents=True, exist_ok=True)
    # what `dmdl train --resume ROOT` reads back: the config and the trial list
    (root / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (root / TRIALS_NAME).write_text(json.dumps({"trials": list(trials)}))
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
