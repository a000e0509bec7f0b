"""Re-ID backbones.

:class:`AGW` is the one-stream AGW ResNet of docs/dmdl.md#A2 (DMDL's
``agw_one``); :class:`MobileNetV2ReID` is a light MobileNetV2 with the same
GeM + BN-neck head. :func:`build_model` builds either (``arch`` in
:data:`ARCH_NAMES`) and loads ImageNet or file weights via
:func:`load_pretrained`; with ``two_stream=True`` it wraps the model in a
:class:`TwoStream` (one stem per modality, MULT's backbone, docs/mult.md#B2).

Layout, each module importing only those listed before it: :mod:`.layers`
(non-local block, GeM, BN neck) and :mod:`.weights` (:class:`LoadReport`,
state-dict files, ImageNet sources); the model families :mod:`.agw`,
:mod:`.mobilenet` and :mod:`.two_stream`, which know none of each other;
:mod:`.build` (the registry :data:`ARCH_NAMES`, :func:`build_model`,
:func:`load_pretrained`), the one module that knows them all.
:mod:`.ghost_bn` stands apart.
"""

from .agw import ARCHS, AGW
from .build import ARCH_NAMES, build_model, load_pretrained
from .layers import GeM, NonLocalBlock, gem
from .mobilenet import MobileNetV2ReID
from .two_stream import MODALITY_NAMES, TwoStream
from .weights import LoadReport

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
