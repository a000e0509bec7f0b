"""MULT (arXiv 2402.00672): its config section (torch-free) and, imported on first use, the method."""

from .config import MULTConfig


def __getattr__(name):
    if name in ("MULT", "MultPlan"):
        from . import method

        return getattr(method, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MULT", "MULTConfig", "MultPlan"]
