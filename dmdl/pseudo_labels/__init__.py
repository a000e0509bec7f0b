"""Pseudo-labels: clustering (Jaccard + DBSCAN) and cross-modality association."""

from .association import imca
from .clustering import NoClustersError, cluster_features, dbscan_labels

__all__ = ["imca", "cluster_features", "dbscan_labels", "NoClustersError"]
