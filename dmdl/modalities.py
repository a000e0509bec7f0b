"""The modality vocabulary, in one place (no torch import here).

Every module names the two modalities ``"visible"`` (RGB / VIS) and ``"infrared"`` (IR / NIR /
thermal), in this order: features, labels and memories of a modality are keyed by these names.
MULT's memory names (``v``, ``a``, ``r``, ``va``, ``vcm``, ``rcm``) are the paper's symbols for
memories and views, not modalities (see :mod:`dmdl.methods.mult`).
"""

from __future__ import annotations

VISIBLE = "visible"
INFRARED = "infrared"
#: the two modalities, visible first (the order of features, batches and log columns)
MODALITIES = (VISIBLE, INFRARED)


def other(modality: str) -> str:
    """The other modality: ``other("visible") == "infrared"`` and back.

    Raises:
        ValueError: ``modality`` is neither ``"visible"`` nor ``"infrared"``.
    """
    if modality == VISIBLE:
        return INFRARED
    if modality == INFRARED:
        return VISIBLE
    raise ValueError(f"modality must be 'visible' or 'infrared', got {modality!r}")


__all__ = ["VISIBLE", "INFRARED", "MODALITIES", "other"]
