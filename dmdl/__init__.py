"""dmdl: unsupervised visible-infrared person re-identification (DMDL, MULT).

The compiled ops live in ``dmdl._C`` and are reached through ``dmdl.ops``;
importing ``dmdl`` itself loads neither the extension nor torch. It registers the
training methods' config sections (:mod:`dmdl.methods`), so that any config can be read.
``dmdl.FeatureExtractor`` (:mod:`dmdl.inference.extractor`) is imported on first use.
"""

__version__ = "0.4.0"

from dmdl import methods as _methods  # noqa: E402,F401  (registers DMDL's and MULT's config sections)

_LAZY = {"FeatureExtractor": "dmdl.inference.extractor"}


def __getattr__(name):
    if name in _LAZY:  # on first use, once the package is initialised (as dmdl.data's lazy names)
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dmdl' has no attribute {name!r}")
