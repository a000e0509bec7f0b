"""The one place where the after-training code (``dmdl.inference``, ``dmdl.visualization``)
imports the training code: the checkpoint reader, the model builder and head (``embed``), the
config, the test transform and flip, the protocols and metric functions, the dataset reader
and the Jaccard op.

Everything else in those packages imports these names from here, so that a change of the
training core's layout is one edit in this file. :func:`load_model` rebuilds the model of a
checkpoint (a full training checkpoint or the slim ``pth`` of ``dmdl export``) in eval mode.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dmdl.config import Config, config_from_saved
from dmdl.data.check import available_cores, preflight
from dmdl.data.loading import ImageReadError, read_image
from dmdl.data.registry import get_dataset
from dmdl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, flip_width, test_transform
from dmdl.errors import CheckpointError, InputError
from dmdl.evaluation import protocols
from dmdl.evaluation.metrics import eval_llcm, eval_regdb, eval_sysu
from dmdl.evaluation.runner import METRIC_KEYS, SETTING_NAMES, format_table
from dmdl.features import extract_features
from dmdl.models.from_config import build_model_from_config
from dmdl.models.layers import embed
from dmdl.ops import jaccard_distance
from dmdl.progress import progress
from dmdl.rundir import CHECKPOINT_NAME
from dmdl.training.checkpoint import load_checkpoint
from dmdl.training.context import resolve_device
from dmdl.training.log import write_results

__all__ = [
    "CHECKPOINT_NAME", "IMAGENET_MEAN", "IMAGENET_STD", "METRIC_KEYS", "SETTING_NAMES", "CheckpointError",
    "Config", "ImageReadError", "InputError", "LoadedModel", "available_cores", "embed", "eval_llcm", "eval_regdb",
    "eval_sysu", "extract_features", "flip_width", "format_table", "fresh_model", "jaccard_distance", "load_model",
    "config_dict", "read_config",
    "preflight", "progress_bar", "protocol_draws_galleries", "protocol_metric", "protocol_settings", "protocols", "read_image", "resolve_device", "test_transform", "weights_hash", "write_results",
]

MODALITIES = ("visible", "infrared")


@dataclass
class LoadedModel:
    """A checkpoint's model, rebuilt and ready for inference, with what the after-training code
    needs from its config (read here only, so that a change of the config's layout is one edit).

    Attributes:
        model: the network in eval mode on ``device`` (one-stream, or a
            :class:`~dmdl.models.TwoStream` with ``model.two_stream`` true).
        config: the checkpoint's training :class:`~dmdl.config.Config`.
        path: the checkpoint file read.
        weights_hash: :func:`weights_hash` of the model (16 hex digits).
        device: where the model is.
        height, width: the input size in pixels.
        interpolation: the resize of its test images (``Config.resize()``: DMDL bicubic, MULT bilinear).
        dataset, trial: what it was trained on (``"regdb"``, ``"sysu"``, ``"llcm"``; RegDB split).
        arch, method: backbone and training method names.
    """

    model: nn.Module
    config: Config
    path: Path
    weights_hash: str
    device: torch.device
    height: int
    width: int
    dataset: str
    trial: int
    arch: str
    method: str
    interpolation: str = "bicubic"

    @property
    def two_stream(self) -> bool:
        """True when the model has one stem per modality."""
        return bool(getattr(self.model, "two_stream", False))


def progress_bar(iterable, desc: str, enabled: bool = True):
    """A progress bar over ``iterable`` when ``enabled`` (:func:`dmdl.progress.progress`: on a
    terminal only); else the iterable."""
    return progress(iterable, desc=desc) if enabled else iterable


def weights_hash(state_dict: dict, height: int, width: int) -> str:
    """SHA-256 (first 16 hex digits) of a model's input size and weights: ``"<height>x<width>"``,
    then for each key in sorted order the key, the tensor's dtype and shape, and its bytes. A
    training checkpoint and the slim ``pth`` exported from it give the same hash."""
    h = hashlib.sha256(f"{height}x{width}".encode())
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def read_config(values: dict) -> Config:
    """The :class:`~dmdl.config.Config` of a checkpoint's flat ``config`` dict.

    Raises:
        ValueError: unknown keys or values out of range (the message names the key).
    """
    return config_from_saved(values)


def fresh_model(config: Config | dict) -> nn.Module:
    """The untrained network of a config (no pretrained weights, no warning), on the CPU, in
    train mode: what a checkpoint's ``model`` state dict loads into."""
    cfg = read_config(config) if isinstance(config, dict) else config
    with warnings.catch_warnings():  # "no pretrained weights": the state dict comes next
        warnings.simplefilter("ignore")
        return build_model_from_config(cfg.model, pretrained="none")


def load_model(checkpoint, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model of a dmdl checkpoint with its stored config, in eval mode.

    Args:
        checkpoint: a ``checkpoint.pth`` (or its run directory), a ``test_selected.pth``, or the
            slim ``pth`` of ``dmdl export``: anything with ``model`` and ``config`` entries.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

    Returns:
        A :class:`LoadedModel`.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a readable dmdl checkpoint, or weights that do not fit the model of
            its config (the message names the file).
        InputError: a CUDA device asked for and none available.
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    try:
        dev = resolve_device(str(device))
    except RuntimeError as exc:
        raise InputError(str(exc)) from None
    ckpt = load_checkpoint(path, need=("model", "config"))
    try:
        cfg = read_config(ckpt["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its stored config is not valid ({exc})") from None
    model = fresh_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit the model of its config "
                              f"({str(exc).splitlines()[0]})") from None
    model.eval().to(dev)
    data = cfg.data
    digest = weights_hash(model.state_dict(), data.height, data.width)
    return LoadedModel(model=model, config=cfg, path=path, weights_hash=digest, device=dev, height=data.height,
                       width=data.width, dataset=data.dataset, trial=data.trial, arch=cfg.model.arch,
                       method=cfg.method.name, interpolation=cfg.resize())


def config_dict(loaded: LoadedModel) -> dict:
    """The checkpoint's config as the flat dict a checkpoint stores (``Config.to_dict``)."""
    return loaded.config.to_dict()


def protocol_settings(dataset_name: str, dataset, num_trials: int | None = None) -> list:
    """The test protocol of a dataset (its :mod:`dmdl.data.registry` entry):
    ``[(setting, [(query records, gallery records), ...])]``, one pair per gallery draw (RegDB
    ``v2t``/``t2v``: one fixed gallery; SYSU-MM01 ``all``/``indoor`` and LLCM ``ir2vis``/``vis2ir``:
    ``num_trials`` seeded draws, default the registry's 10).

    Raises:
        ValueError: unknown dataset name.
    """
    info = get_dataset(dataset_name)
    query_gallery = info.load("query_gallery")
    if not info.gallery_draws:
        return [(s, [query_gallery(dataset, s)]) for s in info.settings]
    draws = info.gallery_draws if num_trials is None else num_trials
    return [(s, [query_gallery(dataset, s, t) for t in range(draws)]) for s in info.settings]


def protocol_draws_galleries(dataset_name: str) -> bool:
    """Whether the protocol averages random gallery draws (SYSU-MM01, LLCM), whose numbers
    per draw are then reported too (``"per_trial"``)."""
    return bool(get_dataset(dataset_name).gallery_draws)


def protocol_metric(dataset_name: str, dist: np.ndarray, query, gallery, max_rank: int = 20):
    """The dataset's metric function on a (Q, G) distance matrix and the query / gallery records:
    ``(cmc (max_rank,), mAP, mINP)`` as fractions (see :mod:`dmdl.evaluation.metrics`)."""
    info = get_dataset(dataset_name)
    metric = info.load("metric")
    qp, gp = np.array([r.pid for r in query]), np.array([r.pid for r in gallery])
    if not info.cameras:
        return metric(dist, qp, gp, max_rank=max_rank)
    qc, gc = np.array([r.camid for r in query]), np.array([r.camid for r in gallery])
    return metric(dist, qp, gp, qc, gc, max_rank=max_rank)
