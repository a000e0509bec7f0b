"""dmdl: unsupervised visible-infrared person re-identification (DMDL, MULT).

The compiled ops live in ``dmdl._C`` and are reached through ``dmdl.ops``;
importing ``dmdl`` itself loads neither the extension nor torch. It registers the
training methods' config sections (:mod:`dmdl.methods`), so that any config can be read.
"""

__version__ = "0.4.0"

from dmdl import methods as _methods  # noqa: E402,F401  (registers DMDL's and MULT's config sections)
