"""Pseudo-labels: clustering (Jaccard + DBSCAN), cross-modality association, GMM certainty,
MULT's label transfer (:mod:`dmdl.pseudo_labels.mult`), and the true identities in their place
(:mod:`dmdl.pseudo_labels.ground_truth`, the supervised ceiling)."""

from .association import associate, hungarian_matching, imca, nearest_sample_matching, ot_matching
from .certainty import certainty
from .clustering import NoClustersError, cluster_features, dbscan_labels
from .ground_truth import ground_truth_labels, ground_truth_unified
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
    "ground_truth_labels",
    "ground_truth_unified",
]
