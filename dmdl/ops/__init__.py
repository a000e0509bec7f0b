"""Hot loops of dmdl: pure-PyTorch references and the compiled kernels behind the same API.

``knn`` is the exact k-nearest-neighbour search (``torch.ops.dmdl.knn``, built into ``dmdl._C``; ops/knn.py),
``knn_reference`` its float64 reference;
``jaccard_distance`` the k-reciprocal Jaccard distance on top of it (``torch.ops.dmdl.jaccard_sparse``,
a sparse CSR by default; ``to_scipy_csr`` hands it to scikit-learn), with
``jaccard_distance_reference`` the plain PyTorch version it is tested against.
``memory_loss`` and ``momentum_update_`` are the cluster-memory step (contrastive loss with its
feature gradient; sequential momentum update): C++ ops on the CPU, Triton kernels on CUDA, with
``memory_loss_reference`` / ``momentum_update_reference`` as their pure-PyTorch references;
``ClusterMemory`` is the memory bank built on them.
``propagate`` is MULT's label-propagation step ``a * A @ x + b * z`` (``torch.ops.dmdl.propagate``
for a sparse CSR affinity, ``torch.addmm`` for a dense one), with ``propagate_reference`` its
float64 reference and ``row_normalize`` the row normalisation of the affinities.
"""

from .jaccard import jaccard_distance, jaccard_distance_reference, to_scipy_csr
from .knn import knn, knn_reference
from .memory import (ClusterMemory, cluster_centroids, memory_loss, memory_loss_reference, momentum_update_,
                     momentum_update_reference)
from .propagation import propagate, propagate_reference, row_normalize

__all__ = [
    "jaccard_distance",
    "jaccard_distance_reference",
    "knn",
    "knn_reference",
    "to_scipy_csr",
    "memory_loss",
    "memory_loss_reference",
    "momentum_update_",
    "momentum_update_reference",
    "ClusterMemory",
    "cluster_centroids",
    "propagate",
    "propagate_reference",
    "row_normalize",
]
