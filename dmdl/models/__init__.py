"""Re-ID backbones.

:class:`AGW` is the one-stream AGW ResNet of algorithm.md §A2 (DMDL's
``agw_one``); :class:`MobileNetV2ReID` is a light MobileNetV2 with the same
GeM + BN-neck head. :func:`build_model` builds either (``arch`` in
:data:`ARCH_NAMES`) and loads ImageNet or file weights via
:func:`load_pretrained`.
"""

from .agw import ARCHS, AGW, LoadReport, build_model, load_pretrained
from .layers import GeM, NonLocalBlock, gem
from .mobilenet import ARCH_NAMES, MobileNetV2ReID

__all__ = [
    "ARCHS",
    "ARCH_NAMES",
    "AGW",
    "GeM",
    "LoadReport",
    "MobileNetV2ReID",
    "NonLocalBlock",
    "build_model",
    "gem",
    "load_pretrained",
]
