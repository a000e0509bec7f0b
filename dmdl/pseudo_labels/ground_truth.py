"""The true identities in place of pseudo-labels (``labels: ground-truth``): the supervised ceiling
of the same pipeline and schedule.

Labels are the dataset's person ids renumbered 0..K-1 in ascending id order: per modality (each
modality's own label space, where the unsupervised run uses its DBSCAN clusters) or over both
modalities together (the unified label space, where it uses the association), so that a person
has the same label in both modalities. Nothing is an outlier.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def ground_truth_labels(pids: Sequence[int], space: Sequence[int] | None = None) -> np.ndarray:
    """(N,) int64 labels: the index of each person id in the sorted ids of ``space`` (default: the
    ids of ``pids`` themselves).

    Raises:
        ValueError: an id of ``pids`` absent from ``space``.
    """
    pids = np.asarray(pids, dtype=np.int64)
    ids = np.unique(pids if space is None else np.asarray(space, dtype=np.int64))
    pos = np.searchsorted(ids, pids)
    if len(pids) and (pos.max() >= len(ids) or not np.array_equal(ids[np.minimum(pos, len(ids) - 1)], pids)):
        missing = sorted(set(pids.tolist()) - set(ids.tolist()))[:5]
        raise ValueError(f"person ids {missing} have no label in the given label space")
    return pos.astype(np.int64)


def ground_truth_unified(pids: Mapping[str, Sequence[int]]) -> tuple[dict, int]:
    """One label space over every modality: ``({modality: (N_m,) int64}, K)``, K the number of
    distinct ids over all modalities."""
    space = np.unique(np.concatenate([np.asarray(v, dtype=np.int64) for v in pids.values()]))
    return {m: ground_truth_labels(v, space) for m, v in pids.items()}, len(space)


__all__ = ["ground_truth_labels", "ground_truth_unified"]
