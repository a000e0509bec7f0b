"""Argument checks shared by the losses of this package (private)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_floating_matrix(name: str, t: Tensor, shape: str = "(B, D)") -> None:
    """Raise ValueError unless ``t`` is a 2-D floating tensor; ``shape`` names its dimensions
    in the message (e.g. ``"(n, D)"``)."""
    if t.dim() != 2 or not t.is_floating_point():
        raise ValueError(f"{name} must be a floating {shape} tensor, got shape {tuple(t.shape)} "
                         f"and dtype {t.dtype}")


def check_int_vector(name: str, t: Tensor, length: int | None = None) -> None:
    """Raise ValueError unless ``t`` is a 1-D integer tensor (of ``length`` entries if given)."""
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D integer (int64) tensor, got shape {tuple(t.shape)} "
                         f"and dtype {t.dtype}")
    if length is not None and t.shape[0] != length:
        raise ValueError(f"{name} must have {length} entries, got {t.shape[0]}")
