"""Pseudo-labels: clustering (Jaccard + DBSCAN), cross-modality association and GMM certainty."""

from .association import associate, hungarian_matching, imca, nearest_sample_matching, ot_matching
from .certainty import certainty
from .clustering import NoClustersError, cluster_features, dbscan_labels

__all__ = [
    "imca",
    "nearest_sample_matching",
    "hungarian_matching",
    "ot_matching",
    "associate",
    "certainty",
    "cluster_features",
    "dbscan_labels",
    "NoClustersError",
]
