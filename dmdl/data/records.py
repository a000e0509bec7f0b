"""The record every dataset reader returns."""

from __future__ import annotations

from typing import NamedTuple

VISIBLE = "visible"
INFRARED = "infrared"
MODALITIES = (VISIBLE, INFRARED)


class ImageRecord(NamedTuple):
    """One image of a VI-ReID dataset.

    Attributes:
        path: absolute path of the image file (str).
        pid: person identity as written in the dataset's paths (int; e.g. SYSU
            ``0006`` -> 6, RegDB folder ``285`` -> 285). Not a training label.
        camid: camera number (int; SYSU 1..6, LLCM 1..9, RegDB 1 = visible,
            2 = thermal as in the AGW reference code).
        modality: ``"visible"`` (RGB / VIS) or ``"infrared"`` (IR / NIR /
            thermal).
    """

    path: str
    pid: int
    camid: int
    modality: str
