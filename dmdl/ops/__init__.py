"""Hot loops of dmdl: pure-PyTorch references and the compiled kernels behind the same API.

``jaccard_distance`` runs the compiled op ``torch.ops.dmdl.jaccard_distance`` (built
into ``dmdl._C``); ``jaccard_distance_reference`` is the plain PyTorch version it is tested against.
``memory_loss`` and ``momentum_update_`` are the cluster-memory step (contrastive loss with its
feature gradient; sequential momentum update): C++ ops on the CPU, Triton kernels on CUDA, with
``memory_loss_reference`` / ``momentum_update_reference`` as their pure-PyTorch references;
``ClusterMemory`` is the memory bank built on them.
"""

from .jaccard import jaccard_distance, jaccard_distance_reference
from .memory import (ClusterMemory, cluster_centroids, memory_loss, memory_loss_reference, momentum_update_,
                     momentum_update_reference)

__all__ = [
    "jaccard_distance",
    "jaccard_distance_reference",
    "memory_loss",
    "memory_loss_reference",
    "momentum_update_",
    "momentum_update_reference",
    "ClusterMemory",
    "cluster_centroids",
]
