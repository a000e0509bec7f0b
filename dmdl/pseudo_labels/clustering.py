"""Pseudo-labels by k-reciprocal Jaccard distance + DBSCAN (algorithm.md §A1.2, §A9)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN
from torch import Tensor


class NoClustersError(RuntimeError):
    """DBSCAN marked every sample as an outlier: there is nothing to train on."""


def dbscan_labels(distances: np.ndarray, eps: float, min_samples: int = 4) -> np.ndarray:
    """scikit-learn DBSCAN on a precomputed (N, N) distance matrix.

    Returns:
        (N,) int64 labels, -1 for outliers, clusters numbered 0..K-1 as sklearn
        numbers them.
    """
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=1)
    return model.fit_predict(distances).astype(np.int64)


def cluster_features(
    features: Tensor,
    k1: int = 30,
    k2: int = 6,
    eps: float = 0.6,
    min_samples: int = 4,
    renormalize: bool = True,
    name: str = "features",
) -> np.ndarray:
    """Cluster one modality's features into pseudo-identities.

    Args:
        features: (N, D) float features (any device; the Jaccard op runs where
            they are).
        k1, k2: k-reciprocal neighbourhood and query-expansion sizes.
        eps, min_samples: DBSCAN parameters (eps on the Jaccard distance in [0, 1]).
        renormalize: L2-normalise rows first (the Jaccard op expects unit rows;
            the reference code skips this for flip-averaged SYSU/LLCM features,
            where norms are slightly below 1).
        name: used in error messages (e.g. ``"visible features"``).

    Returns:
        (N,) int64 NumPy labels, -1 for outliers.

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
    dist = jaccard_distance(feats.contiguous(), k1=k1, k2=min(k2, k1)).cpu().numpy()
    labels = dbscan_labels(dist, eps=eps, min_samples=min_samples)
    if labels.max(initial=-1) < 0:
        raise NoClustersError(
            f"DBSCAN (eps={eps}, min_samples={min_samples}) found no cluster in {len(labels)} {name}: "
            "every sample is an outlier. Raise eps, lower min_samples, or start from pretrained weights."
        )
    return labels
