"""dmdl: unsupervised visible-infrared person re-identification (DMDL, MULT).

The compiled ops live in ``dmdl._C`` and are reached through ``dmdl.ops``;
importing ``dmdl`` itself loads neither the extension nor torch. It registers the
training methods' config sections (:mod:`dmdl.methods`), so that any config can be read.
``dmdl.FeatureExtractor`` (:mod:`dmdl.inference.extractor`) is imported on first use.
"""

__version__ = "0.5.0"

from dmdl import methods as _methods  # noqa: E402,F401  (registers DMDL's and MULT's config sections)
from dmdl.lazy import lazy_attributes  # noqa: E402

__getattr__ = lazy_attributes(__name__, {"FeatureExtractor": "dmdl.inference.extractor"})
