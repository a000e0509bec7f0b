"""Cross-modality label association (algorithm.md §A5.2).

iMCA, Iterative Maximum Confidence Alignment (DMDL paper §3.2, Eq. 2): every
cluster of the *mapped* modality takes the label of its most similar cluster
centroid (cosine) in the *anchor* modality. Many-to-one, no uniqueness
constraint; outliers stay -1. The anchor alternates with the epoch parity.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dmdl.ops.memory import cluster_centroids


def imca(
    features_visible: Tensor,
    labels_visible: np.ndarray,
    features_infrared: Tensor,
    labels_infrared: np.ndarray,
    anchor: str,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Map one modality's clusters into the other's label space.

    Args:
        features_visible: (N_V, D) float features; labels_visible: (N_V,) int64, -1 outliers,
            clusters 0..K_V-1.
        features_infrared, labels_infrared: the same for infrared.
        anchor: ``"infrared"`` (even epochs in DMDL: visible clusters are mapped
            into the IR space, K = K_I) or ``"visible"`` (odd epochs, K = K_V).

    Returns:
        (unified_visible (N_V,), unified_infrared (N_I,), K): int64 labels in
        [0, K) or -1.

    Raises:
        ValueError: unknown anchor or a modality without clusters.
    """
    if anchor not in ("visible", "infrared"):
        raise ValueError(f"anchor must be 'visible' or 'infrared', got {anchor!r}")
    lv = torch.as_tensor(labels_visible, dtype=torch.long)
    li = torch.as_tensor(labels_infrared, dtype=torch.long)
    if lv.max() < 0 or li.max() < 0:
        raise ValueError("both modalities need at least one cluster for cross-modality association")
    cv = cluster_centroids(features_visible.float(), lv.to(features_visible.device))
    ci = cluster_centroids(features_infrared.float(), li.to(features_infrared.device))
    sim = (cv @ ci.t()).cpu()  # (K_V, K_I) cosine
    if anchor == "infrared":
        mapping = sim.argmax(dim=1)  # each visible cluster -> an IR cluster
        uv = torch.where(lv >= 0, mapping[lv.clamp_min(0)], lv)
        return uv.numpy(), li.numpy().copy(), ci.shape[0]
    mapping = sim.argmax(dim=0)  # each IR cluster -> a visible cluster
    ui = torch.where(li >= 0, mapping[li.clamp_min(0)], li)
    return lv.numpy().copy(), ui.numpy(), cv.shape[0]
