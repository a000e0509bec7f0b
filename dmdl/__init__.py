"""dmdl: unsupervised visible-infrared person re-identification (DMDL, MULT).

The compiled ops live in ``dmdl._C`` and are reached through ``dmdl.ops``;
importing ``dmdl`` itself does not load the extension.
"""

__version__ = "0.4.0"
