"""Package attributes imported on first use (no other dmdl import here).

``import dmdl`` and ``import dmdl.data`` must not load torch or the training code: the ``dmdl``
command checks its arguments, config and dataset before it loads them. A package lists the names
it exports from heavier submodules and sets ``__getattr__ = lazy_attributes(__name__, table)``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_attributes(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` in ``table`` is imported from the module
    ``table[name]`` (relative to ``package`` when it starts with a dot) on first use and cached in
    the package.

    Raises:
        AttributeError: a name the package does not have.
    """
    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


__all__ = ["lazy_attributes"]
