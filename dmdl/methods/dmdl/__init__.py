"""DMDL (arXiv 2512.03745): its config section (torch-free) and, imported on first use, the method."""

from .config import DMDLConfig


def __getattr__(name):
    if name in ("DMDL", "EpochPlan"):
        from . import method

        return getattr(method, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DMDL", "DMDLConfig", "EpochPlan"]
