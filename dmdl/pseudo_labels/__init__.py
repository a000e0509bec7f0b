"""Pseudo-labels: clustering (Jaccard + DBSCAN) and cross-modality association."""

from .association import imca, nearest_sample_matching
from .clustering import NoClustersError, cluster_features, dbscan_labels

__all__ = ["imca", "nearest_sample_matching", "cluster_features", "dbscan_labels", "NoClustersError"]
