"""Pseudo-labels by k-reciprocal Jaccard distance + DBSCAN (docs/dmdl.md#A1.2, #A9)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN
from torch import Tensor


class NoClustersError(RuntimeError):
    """DBSCAN marked every sample as an outlier: there is nothing to train on."""


def dbscan_labels(distances, eps: float, min_samples: int = 4) -> np.ndarray:
    """scikit-learn DBSCAN on precomputed distances, dense or sparse.

    Args:
        distances: ``(N, N)`` distances: a NumPy array or dense tensor, or a sparse graph
            (``scipy.sparse`` matrix or ``torch.sparse_csr`` tensor, e.g. the output of
            :func:`dmdl.ops.jaccard_distance`) whose absent pairs are farther than ``eps``
            and whose stored zeros are distances of 0.
        eps: neighbourhood radius (same unit as ``distances``; ``d <= eps`` are neighbours).
        min_samples: neighbours (the point itself included) that make a core point.

    Returns:
        (N,) int64 labels, -1 for outliers, clusters numbered 0..K-1 as sklearn numbers them
        (by smallest core index; a border point joins the lowest-numbered cluster that reaches it).
        A sparse graph gives labels identical to the dense matrix whenever every absent pair is
        > eps (the Jaccard CSR omits only pairs at exactly 1, so any eps < 1).

    Raises:
        ValueError: ``eps`` >= 1 with a Jaccard CSR would drop neighbours: refused when the
            input is a ``torch.sparse_csr`` tensor.
    """
    if isinstance(distances, torch.Tensor):
        if distances.layout == torch.sparse_csr:
            if eps >= 1.0:
                raise ValueError(f"eps={eps} >= 1 with a sparse Jaccard graph: pairs at distance 1 are not stored; "
                                 "use output='dense' or eps < 1")
            from dmdl.ops.jaccard import to_scipy_csr

            distances = to_scipy_csr(distances)
        else:
            distances = distances.detach().cpu().numpy()
    if sp.issparse(distances):
        distances = _within(sp.csr_matrix(distances), eps)
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=1)
    return model.fit_predict(distances).astype(np.int64)


def _within(graph: "sp.csr_matrix", eps: float, block: int = 4096) -> "sp.csr_matrix":
    """The stored pairs with d <= eps (stored zeros kept): DBSCAN reads nothing else, and the
    Jaccard graph of real features keeps most of its pairs between eps and 1. Rows are filtered
    in blocks, so the temporaries stay small next to the graph."""
    n = graph.shape[0]
    indptr = np.zeros(n + 1, dtype=np.int64)
    cols, vals = [], []
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        lo, hi = graph.indptr[r0], graph.indptr[r1]
        keep = graph.data[lo:hi] <= eps
        cols.append(graph.indices[lo:hi][keep])
        vals.append(graph.data[lo:hi][keep])
        kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
        indptr[r0 + 1 : r1 + 1] = indptr[r0] + kept_before[graph.indptr[r0 + 1 : r1 + 1] - lo]
    return sp.csr_matrix((np.concatenate(vals), np.concatenate(cols), indptr), shape=graph.shape)


def cluster_features(
    features: Tensor,
    k1: int = 30,
    k2: int = 6,
    eps: float = 0.6,
    min_samples: int = 4,
    renormalize: bool = True,
    name: str = "features",
    return_distance: bool = False,
):
    """Cluster one modality's features into pseudo-identities.

    Args:
        features: (N, D) float features (any device; the Jaccard op runs where
            they are).
        k1, k2: k-reciprocal neighbourhood and query-expansion sizes.
        eps, min_samples: DBSCAN parameters (eps on the Jaccard distance, in [0, 1); DBSCAN
            runs on the sparse graph of the pairs below 1, with the labels of the dense matrix).
        renormalize: L2-normalise rows first (the Jaccard op expects unit rows;
            the reference code skips this for flip-averaged SYSU/LLCM features,
            where norms are slightly below 1).
        name: used in error messages (e.g. ``"visible features"``).
        return_distance: also return the Jaccard distances (the sparse CSR of
            :func:`dmdl.ops.jaccard_distance`), e.g. for MULT's label transfer.

    Returns:
        (N,) int64 NumPy labels, -1 for outliers; with ``return_distance`` the pair
        ``(labels, distances)``.

    Raises:
        ValueError: non-finite features.
        NoClustersError: every sample is an outlier.
    """
    from dmdl.ops import jaccard_distance

    feats = features.detach().float()
    if not torch.isfinite(feats).all():
        raise ValueError(f"{name} contain NaN or inf; the model has diverged (lower the learning rate?)")
    if renormalize:
        feats = F.normalize(feats, dim=1)
    k1 = min(k1, feats.shape[0])
    dist = jaccard_distance(feats.contiguous(), k1=k1, k2=min(k2, k1), output="sparse")
    labels = dbscan_labels(dist, eps=eps, min_samples=min_samples)
    if labels.max(initial=-1) < 0:
        raise NoClustersError(
            f"DBSCAN (eps={eps}, min_samples={min_samples}) found no cluster in {len(labels)} {name}: "
            "every sample is an outlier. Raise eps, lower min_samples, or start from pretrained weights."
        )
    return (labels, dist) if return_distance else labels
