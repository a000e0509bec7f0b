"""Hot loops of dmdl: pure-PyTorch references and the compiled kernels behind the same API.

``jaccard_distance`` runs the compiled op ``torch.ops.dmdl.jaccard_distance`` (built
into ``dmdl._C``); ``jaccard_distance_reference`` is the plain PyTorch version it is tested against.
"""

from .jaccard import jaccard_distance, jaccard_distance_reference

__all__ = ["jaccard_distance", "jaccard_distance_reference"]
