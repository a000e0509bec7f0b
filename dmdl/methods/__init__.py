"""Training methods: what happens inside an epoch (pseudo-labels, memories, the step).

A method is a class that follows :class:`dmdl.methods.base.Method`; its config section is a
:class:`dmdl.config.MethodConfig` registered with :func:`dmdl.config.register_method_config`.
Importing this package registers the two methods (their config modules import no torch):

- ``dmdl``: :class:`dmdl.methods.dmdl.DMDL` (the default), section :class:`DMDLConfig`;
- ``mult``: :class:`dmdl.methods.mult.MULT` (MULT, arXiv 2402.00672), section :class:`MULTConfig`.

The caller of the engine picks the class (:func:`get_method`) and hands it over; nothing below
this package imports it.
"""

from __future__ import annotations

import importlib

from dmdl.config import METHOD_CONFIGS, Config

from .dmdl.config import DMDLConfig
from .mult.config import MULTConfig


def get_method(name_or_cfg: "str | Config"):
    """The method class of a config (or registered as ``name``), imported on first use.

    Raises:
        ValueError: unknown name.
    """
    name = name_or_cfg.method.name if isinstance(name_or_cfg, Config) else name_or_cfg
    if name not in METHOD_CONFIGS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHOD_CONFIGS))}")
    module, cls = METHOD_CONFIGS[name].method_class.split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["get_method", "DMDLConfig", "MULTConfig"]
