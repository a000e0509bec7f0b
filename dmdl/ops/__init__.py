"""Hot loops of dmdl: pure-PyTorch references and the compiled kernels behind the same API.

``jaccard_distance`` runs the compiled op ``torch.ops.dmdl.jaccard_distance`` (built
into ``dmdl._C``); ``jaccard_distance_reference`` is the plain PyTorch version it is tested against.
``ClusterMemory`` is the cluster memory bank (contrastive loss + sequential momentum update),
pure PyTorch for now, with ``momentum_update_reference`` as its reference.
"""

from .jaccard import jaccard_distance, jaccard_distance_reference
from .memory import ClusterMemory, cluster_centroids, momentum_update_reference

__all__ = [
    "jaccard_distance",
    "jaccard_distance_reference",
    "ClusterMemory",
    "cluster_centroids",
    "momentum_update_reference",
]
