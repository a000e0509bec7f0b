"""Re-ID backbones.

:class:`AGW` is the one-stream AGW ResNet of algorithm.md §A2 (DMDL's
``agw_one``); :func:`build_model` builds one and loads ImageNet or file
weights via :func:`load_pretrained`.
"""

from .agw import ARCHS, AGW, LoadReport, build_model, load_pretrained
from .layers import GeM, NonLocalBlock, gem

__all__ = [
    "ARCHS",
    "AGW",
    "GeM",
    "LoadReport",
    "NonLocalBlock",
    "build_model",
    "gem",
    "load_pretrained",
]
