"""Two-stream backbone: one stem per modality, everything else shared (docs/mult.md#B2).

MULT (arXiv 2402.00672, docs/README.md#code-m ``model/network.py``), like ADCA and PGM
before it, uses a "two-stream" AGW ResNet-50: the visible and the infrared
images each go through their own stem (conv1, bn1, ReLU, maxpool), and the
two stem outputs are concatenated along the batch before the shared layer1-4,
GeM pooling and BN neck. DMDL's own backbone is one-stream (docs/dmdl.md#A2).

:class:`TwoStream` turns any one-stream model of this package that has a
``stem``/``trunk`` split (:class:`~dmdl.models.AGW`,
:class:`~dmdl.models.MobileNetV2ReID`) into that layout.
:func:`read_two_stream_state` and :func:`load_two_stream_pretrained` handle
``pretrained=<file>`` for it (called by :func:`dmdl.models.build.build_two_stream`);
use :func:`dmdl.models.build_model` with ``two_stream=True`` rather than these
directly.

Left out on purpose: MULT's adversarial modality discriminator (a gradient
reversal layer followed by a 2048-1024-1024-2 MLP on the BN feature). Its
loss is hard-coded to 0 in the reference trainer, so it never changes the
backbone; we do not build it.
"""

from __future__ import annotations

import copy
import os
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from dmdl.modalities import MODALITIES

from .layers import embed
from .weights import LoadReport, load_backbone_keys, read_state_dict

__all__ = ["MODALITY_NAMES", "TwoStream", "load_two_stream_pretrained", "read_two_stream_state"]

#: The modality names :meth:`TwoStream.forward` accepts as strings.
MODALITY_NAMES: Tuple[str, str] = MODALITIES

_STEM_PREFIXES = ("stem_visible.", "stem_infrared.")

Modality = Union[str, Tensor, None]


class TwoStream(nn.Module):
    """Modality-specific stems in front of a shared one-stream trunk (docs/mult.md#B2).

    Layout (ResNet AGW): ``stem_visible`` = (conv1, bn1, ReLU, maxpool) and
    ``stem_infrared`` = a second copy, then the wrapped model's layer1..layer4
    (with its non-local blocks, if any; MULT runs without), GeM (p fixed) and
    BN neck (``shared``). MobileNetV2: the stems are ``features[0]`` (the first
    Conv-BN-ReLU6), the shared part is ``features[1:]``, GeM and BN neck.

    In a batch that mixes the modalities, each stem runs on its own rows and
    the outputs are put back in the batch order before the shared layers, so
    every shared BatchNorm sees the whole batch (as MULT's concatenation of
    the RGB and IR stem outputs does), while a stem's BatchNorm sees only its
    modality's rows.

    MULT's adversarial modality discriminator is not built: its loss is
    hard-coded to 0 in the reference (see the module docstring).

    State-dict keys: ``stem_visible.*`` and ``stem_infrared.*`` (the stem
    module's own keys, e.g. ``stem_visible.conv1.weight`` for a ResNet,
    ``stem_visible.0.weight`` for MobileNetV2) and ``shared.*`` (the wrapped
    model's keys without its stem, e.g. ``shared.layer1.0.conv1.weight``,
    ``shared.bottleneck.weight``).

    Args:
        base: a one-stream model with ``detach_stem()``, ``trunk()``, ``pool``,
            ``bottleneck``, ``arch``, ``feat_dim`` and ``backbone_state_keys()``
            (:class:`~dmdl.models.AGW` or
            :class:`~dmdl.models.MobileNetV2ReID`), with its weights already
            loaded. It is taken over: its stem moves into ``stem_visible``,
            ``stem_infrared`` is a deep copy of it (so both stems start equal),
            and ``base`` itself becomes ``self.shared``.

    Attributes:
        two_stream: True (what :func:`~dmdl.evaluation.runner.extract_features`
            and the trainers test to pass a modality).
        arch: the wrapped model's architecture name.
        feat_dim: the output feature dimension.

    Raises:
        TypeError: ``base`` lacks the stem/trunk split.
        RuntimeError: ``base``'s stem was already detached.
    """

    two_stream = True

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        for name in ("detach_stem", "trunk", "pool", "bottleneck", "backbone_state_keys"):
            if not hasattr(base, name):
                raise TypeError(
                    f"TwoStream: {type(base).__name__} has no {name!r}; expected an AGW or a "
                    f"MobileNetV2ReID"
                )
        stem = base.detach_stem()
        self.stem_visible = stem
        self.stem_infrared = copy.deepcopy(stem)
        self.shared = base
        self.arch: str = base.arch
        self.feat_dim: int = base.feat_dim

    # ------------------------------------------------------------------ routing
    def _mask(self, x: Tensor, modality: Modality) -> Optional[Tensor]:
        """None for a single-modality batch given as a string, else a (B,) bool mask
        (True = infrared) on ``x``'s device."""
        if modality is None:
            raise ValueError(
                "TwoStream: a modality is required ('visible', 'infrared', or a (B,) bool/int "
                "tensor with True/1 = infrared); a two-stream model has one stem per modality"
            )
        if isinstance(modality, str):
            if modality not in MODALITY_NAMES:
                raise ValueError(
                    f"TwoStream: modality must be 'visible' or 'infrared', got {modality!r}"
                )
            return None
        if not isinstance(modality, Tensor):
            raise TypeError(
                f"TwoStream: modality must be a str or a (B,) tensor, got {type(modality).__name__}"
            )
        if modality.dim() != 1 or modality.shape[0] != x.shape[0]:
            raise ValueError(
                f"TwoStream: a modality tensor must have shape ({x.shape[0]},) for a batch of "
                f"{x.shape[0]}, got {tuple(modality.shape)}"
            )
        if modality.dtype == torch.bool:
            return modality.to(x.device)
        if modality.is_floating_point() or modality.is_complex():
            raise ValueError(
                f"TwoStream: a modality tensor must be bool or integer (1 = infrared), got "
                f"{modality.dtype}"
            )
        if bool(((modality != 0) & (modality != 1)).any()):
            raise ValueError("TwoStream: an integer modality tensor may only hold 0 (visible) and 1 (infrared)")
        return (modality != 0).to(x.device)

    def stem(self, x: Tensor, modality: Modality) -> Tensor:
        """Run each row of ``x`` through its modality's stem.

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised, on the model's device.
            modality: ``"visible"`` or ``"infrared"`` (the whole batch), or a
                (B,) bool or integer tensor, True/1 = infrared, False/0 =
                visible, any device.

        Returns:
            The stem map, rows in the order of ``x``: (B, 64, H/4, W/4) for a
            ResNet, (B, 32, H/2, W/2) for MobileNetV2.

        Raises:
            ValueError: ``modality`` is None, an unknown string, or a tensor of
                the wrong shape, dtype or values.
            TypeError: ``modality`` is neither a str nor a tensor.
        """
        mask = self._mask(x, modality)
        if mask is None:
            return (self.stem_infrared if modality == "infrared" else self.stem_visible)(x)
        idx_i = torch.nonzero(mask).flatten()
        if idx_i.numel() == 0:
            return self.stem_visible(x)
        if idx_i.numel() == x.shape[0]:
            return self.stem_infrared(x)
        idx_v = torch.nonzero(~mask).flatten()
        y = torch.cat([self.stem_visible(x[idx_v]), self.stem_infrared(x[idx_i])])
        # row j of y came from row order[j] of x; put them back in x's order
        order = torch.cat([idx_v, idx_i])
        return y[torch.argsort(order)]

    def feature_map(self, x: Tensor, modality: Modality) -> Tensor:
        """Backbone output before pooling: ``shared.trunk(stem(x, modality))``.

        Shapes as the wrapped model's ``feature_map``; ``modality`` as in :meth:`stem`.
        """
        return self.shared.trunk(self.stem(x, modality))

    def forward(
        self, x: Tensor, modality: Modality = None, return_pooled: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Embed a batch of images, each through its modality's stem.

        Args:
            x: (B, 3, H, W) float tensor (float32, or float16/bfloat16 under
                autocast), ImageNet mean/std normalised, on the model's device.
                In train mode BatchNorm needs B >= 2 (and >= 2 rows per
                modality present, for the stems).
            modality: ``"visible"``, ``"infrared"`` or a (B,) bool/int tensor
                (True/1 = infrared); see :meth:`stem`. Required.
            return_pooled: also return the GeM-pooled feature before the neck.

        Returns:
            As the one-stream models: train mode, the BN-neck feature
            (B, feat_dim), not normalised; eval mode, the L2-normalised BN-neck
            feature; with ``return_pooled=True``, ``(pooled, feature)``.

        Raises:
            ValueError: ``modality`` missing (None) or invalid (see :meth:`stem`).
        """
        fmap = self.feature_map(x, modality)
        return embed(self.shared.pool, self.shared.bottleneck, fmap, self.training, return_pooled)

    def backbone_state_keys(self) -> List[str]:
        """State-dict keys of the pretrained backbone: both stems, then the wrapped
        model's torchvision part (``shared.layer1...`` or ``shared.features.N...``)."""
        own = self.state_dict()
        keys = [k for k in own if k.startswith(_STEM_PREFIXES)]
        keys += ["shared." + k for k in self.shared.backbone_state_keys()]
        return keys


# ----------------------------------------------------------------------------
# Pretrained weights
# ----------------------------------------------------------------------------


def read_two_stream_state(path: Union[str, os.PathLike]) -> Optional[Dict[str, Tensor]]:
    """The state dict in ``path`` if it is a two-stream one (has ``stem_visible.*`` or
    ``stem_infrared.*`` keys, after unwrapping ``{"state_dict": ...}`` and stripping
    ``module.``); None for anything else, unreadable files included (the one-stream
    loader then reports the problem)."""
    try:
        state = read_state_dict(path, "two-stream")
    except (FileNotFoundError, ValueError):  # reported by the one-stream loader
        return None
    if not any(k.startswith(_STEM_PREFIXES) for k in state):
        return None
    return state


def load_two_stream_pretrained(model: TwoStream, state: Mapping[str, Tensor], source: str) -> LoadReport:
    """Copy the backbone tensors of a two-stream state dict into ``model``.

    Loads exactly :meth:`TwoStream.backbone_state_keys` (both stems and the
    shared torchvision part), like :func:`~dmdl.models.load_pretrained` does
    for one-stream models; the non-local blocks and the BN neck keep their
    initialisation, and other keys of the file are ignored with a warning. To
    restore a whole trained model use ``model.load_state_dict`` (or
    ``--resume``).

    Args:
        model: a :class:`TwoStream`.
        state: the file's state dict (``module.`` already stripped).
        source: the file name, for messages.

    Returns:
        A :class:`~dmdl.models.LoadReport`.

    Raises:
        ValueError: backbone keys missing from the file (other than
            ``num_batches_tracked``) or shape mismatches; the message names the
            file, the architecture and examples.
    """
    return load_backbone_keys(model, state, model.backbone_state_keys(), source, f"a two-stream {model.arch}",
                              ignored="other keys (loaded the two-stream backbone only)")
