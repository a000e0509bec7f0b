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


def nearest_sample_matching(
    features_visible: Tensor,
    labels_visible: np.ndarray,
    features_infrared: Tensor,
    labels_infrared: np.ndarray,
    anchor: str,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Sample-level matching, DMDL's RegDB variant of the association (algorithm.md §A5.2).

    Every sample of the *mapped* modality, DBSCAN outliers included, takes the
    label of its single nearest *anchor* sample by cosine similarity (features
    L2-normalised here); a sample whose nearest anchor sample is an outlier gets
    -1. Anchor labels are unchanged; the unified space is the anchor's clusters.
    Ties go to the smaller anchor index (``torch.argmax``).

    Args:
        features_visible: (N_V, D) float; labels_visible: (N_V,) int, -1 outliers.
        features_infrared, labels_infrared: the same for infrared.
        anchor: ``"infrared"`` (visible samples are mapped) or ``"visible"``.

    Returns:
        (unified_visible (N_V,), unified_infrared (N_I,), K) with K = the
        anchor's cluster count.

    Raises:
        ValueError: unknown anchor, or an anchor modality without clusters.
    """
    if anchor not in ("visible", "infrared"):
        raise ValueError(f"anchor must be 'visible' or 'infrared', got {anchor!r}")
    fv = torch.nn.functional.normalize(features_visible.float(), dim=1)
    fi = torch.nn.functional.normalize(features_infrared.float(), dim=1)
    lv = np.asarray(labels_visible, dtype=np.int64)
    li = np.asarray(labels_infrared, dtype=np.int64)
    anchor_labels = li if anchor == "infrared" else lv
    if anchor_labels.max(initial=-1) < 0:
        raise ValueError(f"the anchor modality ({anchor}) has no cluster to match against")
    k = int(anchor_labels.max()) + 1
    if anchor == "infrared":
        nearest = (fv @ fi.t()).argmax(dim=1).cpu().numpy()
        return li[nearest].copy(), li.copy(), k
    nearest = (fi @ fv.t()).argmax(dim=1).cpu().numpy()
    return lv.copy(), lv[nearest].copy(), k
