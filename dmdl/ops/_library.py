"""Loading of the compiled extension ``dmdl._C``.

Importing ``dmdl._C`` registers the ``torch.ops.dmdl.*`` operators (schemas from
``csrc/ops.cpp``, CPU kernels always, CUDA kernels when they were compiled).
There is deliberately no fallback to the pure-PyTorch references: a missing or
broken build raises :class:`ImportError` with instructions.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch  # noqa: F401  (torch must be loaded before the extension's shared library)

_BUILD_HELP = (
    "The compiled extension dmdl._C could not be loaded ({err}). Build it from the source tree:\n"
    "    pip install -r requirements.txt\n"
    "    pip install --no-build-isolation -e .\n"
    "(CUDA_HOME=/path/to/cuda to include the CUDA kernels, DMDL_CPU_ONLY=1 for CPU only). "
    "The extension must be built against the installed torch ({torch_version})."
)

_module: ModuleType | None = None
_error: BaseException | None = None


def load() -> ModuleType:
    """Import ``dmdl._C`` once and return it.

    Raises:
        ImportError: when the extension is missing or does not load (e.g. built
            against another torch), with instructions to build it.
    """
    global _module, _error
    if _module is not None:
        return _module
    if _error is None:
        try:
            _module = importlib.import_module("dmdl._C")
            return _module
        except (ImportError, OSError) as exc:  # OSError: undefined symbols / wrong torch
            _error = exc
    raise ImportError(_BUILD_HELP.format(err=_error, torch_version=torch.__version__)) from _error


def is_available() -> bool:
    """True when ``dmdl._C`` loads."""
    try:
        load()
    except ImportError:
        return False
    return True
