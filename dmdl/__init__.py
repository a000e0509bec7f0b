"""dmdl: unsupervised visible-infrared person re-identification (DMDL, MULT).

The compiled ops live in ``dmdl._C`` and are reached through ``dmdl.ops``;
importing ``dmdl`` itself does not load the extension. ``dmdl.FeatureExtractor``
(:mod:`dmdl.inference`) is imported on first use.
"""

__version__ = "0.4.0"


def __getattr__(name):
    if name == "FeatureExtractor":
        from dmdl.inference.extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'dmdl' has no attribute {name!r}")
