"""Re-ID backbones.

:class:`AGW` is the one-stream AGW ResNet of algorithm.md §A2 (DMDL's
``agw_one``); :class:`MobileNetV2ReID` is a light MobileNetV2 with the same
GeM + BN-neck head. :func:`build_model` builds either (``arch`` in
:data:`ARCH_NAMES`) and loads ImageNet or file weights via
:func:`load_pretrained`; with ``two_stream=True`` it wraps the model in a
:class:`TwoStream` (one stem per modality, MULT's backbone, algorithm.md §B2).
"""

from .agw import ARCHS, AGW, LoadReport, build_model, load_pretrained
from .layers import GeM, NonLocalBlock, gem
from .mobilenet import ARCH_NAMES, MobileNetV2ReID
from .two_stream import MODALITY_NAMES, TwoStream

__all__ = [
    "ARCHS",
    "ARCH_NAMES",
    "AGW",
    "GeM",
    "LoadReport",
    "MODALITY_NAMES",
    "MobileNetV2ReID",
    "NonLocalBlock",
    "TwoStream",
    "build_model",
    "gem",
    "load_pretrained",
]
