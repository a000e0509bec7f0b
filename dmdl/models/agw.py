"""One-stream AGW backbone used by DMDL (docs/dmdl.md#A2).

AGW: Ye et al., "Deep Learning for Person Re-identification: A Survey and
Outlook", TPAMI 2021. The model is a torchvision ResNet with the last stage at
stride 1, non-local blocks (Wang et al., CVPR 2018) inside layer2/layer3, GeM
pooling with a fixed p = 3 (Radenović et al., TPAMI 2018) and a BatchNorm
neck whose bias is frozen. All weights are shared by the two modalities: the
trainer concatenates the RGB and IR batches and runs them in one forward.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch.nn as nn
import torchvision
from torch import Tensor

from .layers import GeM, NonLocalBlock, bn_neck, embed
from .weights import LoadReport, load_backbone_keys, read_state_dict, torchvision_imagenet_state

__all__ = ["AGW", "ARCHS", "load_agw_pretrained"]

# Per architecture: torchvision constructor name, weights enum name, feature
# dim, and the 0-based residual-block indices after which a non-local block is
# inserted, per stage.
#
# ResNet-34/50/101 follow AGW's rule: 2 non-local blocks after the last two
# blocks of layer2 and 3 after the last three blocks of layer3 (ResNet-50:
# layer2 blocks 2, 3 and layer3 blocks 3, 4, 5). ResNet-18 has only two
# blocks per stage, so it gets one non-local block after the last block of
# layer2 and one after the last block of layer3 (our choice, not from AGW).
ARCHS: Dict[str, Dict[str, Any]] = {
    "resnet18": dict(
        weights="ResNet18_Weights",
        feat_dim=512,
        non_local={"layer2": (1,), "layer3": (1,)},
    ),
    "resnet34": dict(
        weights="ResNet34_Weights",
        feat_dim=512,
        non_local={"layer2": (2, 3), "layer3": (3, 4, 5)},
    ),
    "resnet50": dict(
        weights="ResNet50_Weights",
        feat_dim=2048,
        non_local={"layer2": (2, 3), "layer3": (3, 4, 5)},
    ),
    "resnet101": dict(
        weights="ResNet101_Weights",
        feat_dim=2048,
        non_local={"layer2": (2, 3), "layer3": (20, 21, 22)},
    ),
}

_STAGES = ("layer1", "layer2", "layer3", "layer4")
_BACKBONE_PREFIXES = ("conv1.", "bn1.") + tuple(s + "." for s in _STAGES)
_STATE_DICT_KIND = "torchvision ResNet"  # for the messages of the weights readers


class AGW(nn.Module):
    """One-stream AGW re-ID model on a torchvision ResNet (docs/dmdl.md#A2).

    Layout: stem (conv1, bn1, ReLU, maxpool) -> layer1..layer4 with non-local
    blocks after selected residual blocks -> GeM (p fixed) -> BatchNorm1d neck
    (bias frozen, weight ~ N(1, 0.01), bias 0). No classifier. The two halves
    of the backbone are :meth:`stem` and :meth:`trunk` (``feature_map(x) ==
    trunk(stem(x))``), so :class:`~dmdl.models.two_stream.TwoStream` can give
    each modality its own stem.

    The backbone modules keep torchvision's names (``conv1``, ``bn1``,
    ``layer1`` ... ``layer4``) so torchvision ResNet state dicts load directly
    (see :func:`~dmdl.models.load_pretrained`). Non-local blocks live in
    ``self.non_local[stage][str(block_index)]``.

    The constructor builds random weights only and never downloads anything;
    use :func:`~dmdl.models.build_model` or :func:`~dmdl.models.load_pretrained`
    for ImageNet weights.

    Args:
        arch: one of ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` (the
            paper's), ``"resnet101"``.
        non_local: insert the non-local blocks (positions in :data:`ARCHS`;
            ResNet-50: after blocks 2, 3 of layer2 and 3, 4, 5 of layer3).
        last_stride: stride of layer4 (1 in AGW; 2 is torchvision's default).
            With 1 the output map is H/16 x W/16 (2048 x 18 x 9 for 288 x 144
            on ResNet-50), with 2 it is H/32 x W/32.
        gem_p: GeM power (3, fixed, not learned).

    Attributes:
        feat_dim: output feature dimension (2048 for ResNet-50/101, 512 for
            ResNet-18/34).
        arch: the architecture name.
        non_local_positions: ``{stage: tuple(block indices)}`` actually used
            (empty when ``non_local=False``).
        stem_detached: True once :meth:`detach_stem` moved the stem out.

    Raises:
        ValueError: unknown ``arch``, ``last_stride`` not 1 or 2, ``gem_p`` <= 0.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        non_local: bool = True,
        last_stride: int = 1,
        gem_p: float = 3.0,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"AGW: unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
        if last_stride not in (1, 2):
            raise ValueError(f"AGW: last_stride must be 1 or 2, got {last_stride}")
        cfg = ARCHS[arch]
        self.arch = arch
        self.feat_dim: int = cfg["feat_dim"]
        self.last_stride = last_stride
        self.stem_detached = False

        resnet = getattr(torchvision.models, arch)(weights=None)
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        del resnet  # its avgpool/fc are not used
        _set_first_block_stride(self.layer4[0], last_stride)

        positions = cfg["non_local"] if non_local else {}
        self.non_local_positions: Dict[str, Tuple[int, ...]] = {
            s: tuple(positions.get(s, ())) for s in _STAGES
        }
        self.non_local = nn.ModuleDict()
        for stage in _STAGES:
            layer = getattr(self, stage)
            channels = _block_out_channels(layer[-1])
            blocks = nn.ModuleDict()
            for idx in self.non_local_positions[stage]:
                if not 0 <= idx < len(layer):
                    raise AssertionError(f"bad non-local index {idx} for {arch}.{stage}")
                blocks[str(idx)] = NonLocalBlock(channels)
            self.non_local[stage] = blocks

        self.pool = GeM(p=gem_p)
        self.bottleneck = bn_neck(self.feat_dim)

    def stem(self, x: Tensor) -> Tensor:
        """The ResNet stem: conv1, bn1, ReLU, maxpool.

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised, on the model's device.

        Returns:
            (B, 64, H/4, W/4) (rounded up the way the strided layers round).

        Raises:
            RuntimeError: the stem was moved out by :meth:`detach_stem`.
        """
        if self.stem_detached:
            raise RuntimeError(
                "AGW.stem: this model's stem was moved into a TwoStream wrapper "
                "(detach_stem); run the wrapper instead"
            )
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def trunk(self, x: Tensor) -> Tensor:
        """Everything between the stem and the pooling: layer1..layer4 with the
        non-local blocks.

        Args:
            x: (B, 64, h, w), the output of :meth:`stem` (or of a
                :class:`~dmdl.models.two_stream.TwoStream` stem).

        Returns:
            (B, feat_dim, h/4, w/4) with ``last_stride=1`` (h/8, w/8 with 2).
        """
        for stage in _STAGES:
            layer = getattr(self, stage)
            nls = self.non_local[stage]
            for i, block in enumerate(layer):
                x = block(x)
                key = str(i)
                if key in nls:
                    x = nls[key](x)
        return x

    def feature_map(self, x: Tensor) -> Tensor:
        """Backbone output before pooling: ``trunk(stem(x))``.

        Args:
            x: (B, 3, H, W) float, ImageNet-normalised, on the model's device.

        Returns:
            (B, feat_dim, H/16, W/16) with ``last_stride=1`` (H/32, W/32 with 2),
            rounded up the way the strided convolutions round.
        """
        return self.trunk(self.stem(x))

    def detach_stem(self) -> nn.Module:
        """Move the stem out of this model (for :class:`~dmdl.models.two_stream.TwoStream`).

        Returns:
            ``nn.Sequential(conv1, bn1, relu, maxpool)`` (these names, so its
            state-dict keys are ``conv1.weight``, ``bn1.running_mean``, ...),
            holding the very modules this model had. They are removed from
            this model: its state dict loses the ``conv1.*``/``bn1.*`` keys,
            and :meth:`stem`, :meth:`feature_map` and :meth:`forward` raise
            RuntimeError afterwards; :meth:`trunk` still works.

        Raises:
            RuntimeError: the stem was already detached.
        """
        if self.stem_detached:
            raise RuntimeError("AGW.detach_stem: the stem was already detached")
        stem = nn.Sequential(OrderedDict(
            conv1=self.conv1, bn1=self.bn1, relu=self.relu, maxpool=self.maxpool
        ))
        del self.conv1, self.bn1, self.relu, self.maxpool
        self.stem_detached = True
        return stem

    def forward(
        self, x: Tensor, return_pooled: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Embed a batch of images.

        Args:
            x: (B, 3, H, W) float tensor (float32, or float16/bfloat16 under
                autocast), ImageNet mean/std normalised, on the model's device.
                RGB and IR images go through the same weights; concatenate them
                along dim 0. In train mode BatchNorm needs B >= 2.
            return_pooled: also return the GeM-pooled feature before the neck.

        Returns:
            train mode: the BN-neck feature, (B, feat_dim), not normalised.
            eval mode: the L2-normalised BN-neck feature, (B, feat_dim).
            With ``return_pooled=True``: ``(pooled, feature)``, pooled being
            the (B, feat_dim) GeM output.
        """
        return embed(self.pool, self.bottleneck, self.feature_map(x), self.training, return_pooled)

    def backbone_state_keys(self) -> List[str]:
        """State-dict keys that come from the torchvision ResNet (stem + layer1..4)."""
        return [k for k in self.state_dict() if k.startswith(_BACKBONE_PREFIXES)]


def _block_out_channels(block: nn.Module) -> int:
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features


def _set_first_block_stride(block: nn.Module, stride: int) -> None:
    """Set the spatial stride of a torchvision BasicBlock/Bottleneck (and its downsample)."""
    convs = [m for m in (getattr(block, "conv1", None), getattr(block, "conv2", None)) if m is not None]
    if block.downsample is not None:
        convs.append(block.downsample[0])
    for conv in convs:
        if conv.stride != (1, 1):
            conv.stride = (stride, stride)


# ----------------------------------------------------------------------------
# Pretrained weights
# ----------------------------------------------------------------------------


def _apply_state_dict(model: AGW, state: Mapping[str, Tensor], source: str) -> LoadReport:
    backbone_keys = model.backbone_state_keys()
    if not any(k in state for k in backbone_keys):
        raise ValueError(
            f"{source} is not a ResNet state dict for {model.arch}: none of its "
            f"{len(state)} keys match the backbone (e.g. 'conv1.weight', 'layer1.0.bn1.weight')"
        )
    # stacklevel 5: the warning points at the caller of dmdl.models.load_pretrained
    return load_backbone_keys(model, state, backbone_keys, source, model.arch, hint=" (wrong ResNet depth?)",
                              silent_prefixes=("fc.",), stacklevel=5)


def load_agw_pretrained(model: AGW, pretrained: Union[str, os.PathLike]) -> LoadReport:
    """Load ImageNet (or other torchvision ResNet) weights into an :class:`AGW` backbone.

    Called by :func:`dmdl.models.load_pretrained`, which handles ``"none"``/None.
    Only the stem and layer1..layer4 are loaded; ``fc.*`` is ignored, and the
    non-local blocks and the BN neck keep their initialisation. Tensors are
    copied onto the model's current device and dtype.

    Args:
        model: an :class:`AGW`.
        pretrained: one of
            - a path (str or PathLike) to a torchvision ResNet state dict
              (``.pth``, read with ``torch.load(weights_only=True)``; a
              ``{"state_dict": ...}`` wrapper and ``module.`` prefixes are
              accepted);
            - ``"imagenet"``: torchvision's ``IMAGENET1K_V1`` weights for
              ``model.arch`` (e.g. ``resnet50-0676ba61.pth``), from the torch
              hub cache if present, else downloaded
              (:func:`~dmdl.models.weights.torchvision_imagenet_state`).

    Returns:
        A :class:`~dmdl.models.weights.LoadReport`.

    Raises:
        FileNotFoundError: the path does not exist (message names it).
        ValueError: the file is not a state dict, or not one matching
            ``model.arch`` (missing keys or shape mismatches; message names it).
        RuntimeError: ``"imagenet"`` could not be downloaded (e.g. offline); the
            message gives the URL to fetch elsewhere and pass as a file.
        TypeError: ``pretrained`` is neither a str nor a PathLike.
    """
    if isinstance(pretrained, str) and pretrained.lower() == "imagenet":
        state, source = torchvision_imagenet_state(ARCHS[model.arch]["weights"], model.arch, _STATE_DICT_KIND)
        return _apply_state_dict(model, state, source)
    if isinstance(pretrained, (str, os.PathLike)):
        path = os.fspath(pretrained)
        return _apply_state_dict(model, read_state_dict(path, _STATE_DICT_KIND), repr(path))
    raise TypeError(
        f"pretrained must be a path, 'imagenet', 'none' or None, got {type(pretrained).__name__}"
    )
