"""Pseudo-labels: clustering (Jaccard + DBSCAN), cross-modality association, GMM certainty and
MULT's label transfer (:mod:`dmdl.pseudo_labels.mult`)."""

from .association import associate, hungarian_matching, imca, nearest_sample_matching, ot_matching
from .certainty import certainty
from .clustering import NoClustersError, cluster_features, dbscan_labels
from .mult import mult_association, mult_label_transfer, mult_soft_labels

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
    "mult_label_transfer",
    "mult_soft_labels",
    "mult_association",
]
