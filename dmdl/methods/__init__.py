"""Training methods: what happens inside an epoch (pseudo-labels, memories, the step).

The engine (:mod:`dmdl.engine`) calls ``method.epoch(stage, epoch)``; a method is
a class constructed with the engine. Registered methods, by config name:

- ``dmdl``: :class:`dmdl.methods.dmdl.DMDL` (the default);
- ``mult``: :class:`dmdl.methods.mult.MULT` (MULT, arXiv 2402.00672; two-stream backbone).
"""

from __future__ import annotations

METHODS = {"dmdl": "dmdl.methods.dmdl:DMDL", "mult": "dmdl.methods.mult:MULT"}


def get_method(name: str):
    """The method class registered as ``name``.

    Raises:
        ValueError: unknown name.
    """
    import importlib

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)
