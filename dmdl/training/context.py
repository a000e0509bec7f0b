"""The run context: the services a method needs, handed to it explicitly.

A method (:mod:`dmdl.methods`) never reaches back into the engine: what it may use of the run is
a :class:`RunContext`, built once per run by :func:`build_context` from the config's ``run``,
``data`` and ``model`` sections:

- the model (ghost BatchNorm converted, in its memory layout), its device, the AMP policy and the
  gradient scaler; the optimizer of the current stage (set by the engine at each stage);
- the training image records per modality, DataLoader workers, the decoded-image cache;
- :meth:`RunContext.features` (eval-mode features of a modality's training images, for clustering)
  and :meth:`RunContext.label_quality` (pseudo-label ARI against the true identities, a diagnostic).
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn

from dmdl.config import Config
from dmdl.data.check import available_cores
from dmdl.data.records import ImageRecord
from dmdl.features import extract_features
from dmdl.errors import InputError
from dmdl.hardware import native_bf16_cpu
from dmdl.models.ghost_bn import Replicas
from dmdl.training.distributed import Distributed, check_batch_split, rank_block, sync_batchnorm_groups
from dmdl.modalities import MODALITIES
from dmdl.models.from_config import build_model_from_config


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs (CUDA too); cuDNN deterministic, no benchmark (docs/dmdl.md#A10)."""
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


@dataclass
class RunContext:
    """What a method may use of the run (see the module docstring).

    Attributes:
        model: the backbone, on ``device``; ``model(x)`` (one-stream) or ``model(x, modality)``
            (two-stream) gives (B, D) features.
        device: where the model and the memories live.
        train: ``{"visible": [...], "infrared": [...]}`` training image records.
        height, width: the input size in pixels.
        batch_size: the per-modality training batch (also the extraction batch, at least 32).
        workers: DataLoader workers (capped at the CPU cores).
        image_cache: a dict of decoded images shared by every loader, or False.
        amp_dtype: the autocast dtype of the model's forward passes (``torch.float16`` on CUDA,
            ``torch.bfloat16``), or None: float32 (:func:`amp_dtype`).
        scaler: the gradient scaler (enabled with fp16 autocast); it lives for the whole run.
        bn_groups: ghost BatchNorm groups a training forward runs (0/1: none): the batch is laid
            out in the reference's DataParallel replica order and the model run once per group
            (:func:`dmdl.models.ghost_bn.replica_forward`); in a distributed run, this rank's share.
        channels_last: the model's memory format.
        interpolation: the resize of the clustering (and test) images, ``Config.resize()``.
        amp_losses: with fp16 autocast on CUDA, the losses too run under it with TF32 matmuls
            (:meth:`loss_precision`).
        optimizer: the optimizer of the current stage (the engine sets it).
        dist: this process's place in a distributed run (:mod:`dmdl.training.distributed`; one
            process by default).
        train_model: what a training step calls (the model wrapped in DistributedDataParallel in a
            distributed run), or None: ``model``.
        layout: the chunks the global batch is laid out in for the processes (see
            :func:`dmdl.training.distributed.rank_block`); 0 in one process.
    """

    model: nn.Module
    device: torch.device
    train: dict[str, list[ImageRecord]]
    height: int
    width: int
    batch_size: int
    workers: int = 0
    image_cache: dict | bool = False
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cuda", enabled=False))
    bn_groups: int = 0
    channels_last: bool = False
    interpolation: str = "bicubic"
    amp_losses: bool = False
    optimizer: torch.optim.Optimizer | None = None
    dist: Distributed = field(default_factory=Distributed)
    train_model: nn.Module | None = None
    layout: int = 0

    def features(self, modality: str, renormalize: bool, flip: bool = True) -> torch.Tensor:
        """Eval-mode features of a modality's training images, flip-averaged unless ``flip`` is
        False (docs/dmdl.md#A1.2; MULT docs/mult.md#B1 does not flip); a two-stream model runs them through that
        modality's stem (docs/mult.md#B1). Under autocast with ``amp_dtype`` (fp16 on CUDA as docs/dmdl.md#A1.2).

        Returns:
            (N_modality, D) float32 on ``device``; L2-renormalised when asked.
        """
        with self.autocast():
            return self.extract(self.model, [r.path for r in self.train[modality]], self.height, self.width,
                                self.device, batch_size=max(self.batch_size, 32), workers=self.workers,
                                desc=f"features {modality}", cache=self.image_cache, renormalize=renormalize,
                                flip=flip, modality=modality, interpolation=self.interpolation,
                                channels_last=self.channels_last)

    def extract(self, model: nn.Module, paths, *args, batch_size: int = 64, **kwargs) -> torch.Tensor:
        """:func:`dmdl.features.extract_features`, in a distributed run on this rank's shard of whole
        batches and all-gathered in ``paths`` order (every rank gets every feature)."""
        if not self.dist.enabled:
            return extract_features(model, paths, *args, batch_size=batch_size, **kwargs)
        self.dist.broadcast_buffers(model)  # eval mode reads the running statistics: rank 0's
        part = paths[self.dist.shard(len(paths), batch_size)]
        if part:
            local = extract_features(model, part, *args, batch_size=batch_size, **kwargs)
        else:  # more ranks than batches: an empty share
            local = torch.empty(0, model.feat_dim, device=torch.device(args[2] if len(args) > 2 else
                                                                        kwargs.get("device", "cpu")))
        return self.dist.gather_rows(local)

    def loss_precision(self):
        """The context of a step's loss computation: fp16 autocast with TF32 matmuls on CUDA when
        fp16 autocast and ``amp_losses`` are on (the released DMDL computes every loss, memory
        logit, MMD and triplet so); otherwise the losses run in the features' float32."""
        if not (self.amp_dtype == torch.float16 and self.device.type == "cuda" and self.amp_losses):
            return contextlib.nullcontext()
        return _tf32_autocast(self.device)

    def autocast(self):
        """Autocast with ``amp_dtype`` on the context's device (a no-op without it)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def label_quality(self, modalities: Sequence[str], labels: np.ndarray) -> float:
        """Adjusted Rand index of pseudo-labels (the modalities' samples, concatenated) against the
        true identities, over non-outliers: a diagnostic only, never used to train. NaN with
        fewer than two labelled samples."""
        pids = np.array([r.pid for m in modalities for r in self.train[m]])
        labels = np.asarray(labels)
        keep = labels >= 0
        return float(adjusted_rand_score(pids[keep], labels[keep])) if keep.sum() > 1 else float("nan")


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run's ``amp`` setting on ``device`` (see :class:`dmdl.config.RunConfig`):
    ``auto`` is fp16 on CUDA, bf16 on a CPU with native bf16 (:func:`dmdl.hardware.native_bf16_cpu`),
    else None (float32).

    Raises:
        ValueError: ``fp16`` on a device other than CUDA (CPU fp16 autocast is emulated and slow).
    """
    cuda = device.type == "cuda"
    if setting == "auto":
        return torch.float16 if cuda else torch.bfloat16 if native_bf16_cpu() else None
    if setting == "fp16" and not cuda:
        raise ValueError(f"amp: fp16 needs a CUDA device, this run's is {device}; use bf16 or auto")
    return {"cuda": torch.float16 if cuda else None, "fp16": torch.float16, "bf16": torch.bfloat16}.get(setting)


@contextlib.contextmanager
def _tf32_autocast(device: torch.device):
    """fp16 autocast with TF32 matmuls and convolutions, the previous TF32 switches restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast(device.type, dtype=torch.float16):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def build_context(cfg: Config, train: dict[str, list[ImageRecord]], dist: Distributed | None = None,
                  device: str | None = None) -> RunContext:
    """The run context of ``cfg``: model built and converted (ghost BN, memory layout; in a
    distributed run each rank's share of the BatchNorm groups, or BatchNorm synchronised over the
    ranks of a group, and the DistributedDataParallel wrapper), device, AMP policy, workers capped
    at the cores, image cache. Prints when the workers are capped.

    Args:
        dist: this process's place in a distributed run (default: one process).
        device: the device to use instead of ``cfg.run.device`` (a distributed run's local rank's).

    Raises:
        RuntimeError: a CUDA device asked for and none seen; weight errors from the model builder.
        InputError: a distributed layout the batch or the BatchNorm groups do not allow.
    """
    dist = dist or Distributed()
    device = resolve_device(device or cfg.run.device)
    workers = min(cfg.data.workers, available_cores())  # DataLoader workers beyond the cores only slow down
    if workers < cfg.data.workers:
        print(f"workers: {workers} (the {available_cores()} CPU cores available; the config asks "
              f"{cfg.data.workers})", flush=True)
    model = build_model_from_config(cfg.model).to(device)
    groups, layout = cfg.model.ghost_bn_groups, 0
    if dist.enabled:
        layout = rank_block(groups, dist.world_size)
        check_batch_split(cfg.data.batch_size, cfg.data.num_instances, dist.world_size, groups)
        groups = max(groups, 1) // dist.world_size  # each rank forwards its share of the groups
    dtype = amp_dtype(cfg.run.amp, device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model = None
    if dist.enabled:
        model, train_model = _wrap_distributed(model, dist, cfg.model.ghost_bn_groups, groups, device)
    return RunContext(model=model, device=device, train=train, height=cfg.data.height, width=cfg.data.width,
                      batch_size=cfg.data.batch_size, workers=workers,
                      image_cache={} if cfg.data.cache_images else False, amp_dtype=dtype,
                      scaler=torch.amp.GradScaler("cuda", enabled=dtype == torch.float16), bn_groups=groups,
                      channels_last=cfg.model.channels_last, interpolation=cfg.resize(),
                      amp_losses=cfg.run.amp_losses, dist=dist, train_model=train_model, layout=layout)


def _wrap_distributed(model: nn.Module, dist: Distributed, groups: int, local_groups: int,
                      device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(the model, with BatchNorm synchronised over the ranks that share a ghost group when there
    are fewer groups than ranks; the same run over this rank's ``local_groups`` groups
    (:class:`~dmdl.models.ghost_bn.Replicas`) in DistributedDataParallel, rank 0's buffers
    broadcast before every forward as DataParallel's replica 0 keeps them)."""
    from torch.nn.parallel import DistributedDataParallel

    ranks = sync_batchnorm_groups(dist.world_size, groups)
    if ranks is not None:
        if device.type != "cuda":
            raise InputError(f"{dist.world_size} processes with ghost_bn_groups {groups}: BatchNorm would have to be "
                             f"synchronised across processes, which needs CUDA; on the CPU set --ghost-bn-groups "
                             f"to a multiple of the world size")
        handles = [torch.distributed.new_group(r) for r in ranks]  # every rank creates every group
        mine = next(h for h, r in zip(handles, ranks) if dist.rank in r)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=mine)
    ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(Replicas(model, local_groups), device_ids=ids, broadcast_buffers=True)
    dist.time_gradient_all_reduce(ddp)
    return model, ddp


def training_records(dataset, max_images: int | None, root) -> dict[str, list[ImageRecord]]:
    """The training records of a dataset reader per modality, capped at ``max_images`` each.

    Raises:
        ValueError: a modality without training images (names ``root``).
    """
    train = {m: list(getattr(dataset, f"train_{m}")) for m in MODALITIES}
    if max_images:
        train = {m: recs[:max_images] for m, recs in train.items()}
    if not all(train.values()):
        raise ValueError(f"{root}: the training split has no visible or no infrared image")
    return train


__all__ = ["RunContext", "build_context", "training_records", "seed_everything", "set_deterministic",
           "resolve_device", "amp_dtype"]
