"""Synthetic inputs shared by the tests, the benchmarks and tools/ (shipped with the package).

Every generator is deterministic: it draws from its own ``torch.Generator`` seeded with ``seed``
(never from the global RNG), in a fixed order, so that a test written against one draw keeps
that draw. Changing the order or the number of draws of a generator changes the data of every
test that uses it; add a parameter instead.

* :func:`clustered_features`: L2-normalised rows around random centres, the structure of re-ID
  features (the input of the kNN / Jaccard / DBSCAN tests and benchmarks).
* :func:`near_tie_features`, :func:`identical_rows_features`: clustered rows with exact and
  near duplicates (ties in the kNN ranking, empty k-reciprocal sets).
* :func:`two_modality_features`: visible and infrared features of the same identities with a
  modality gap (MULT's label transfer, docs/mult.md#B3).
* :func:`direction_features`: hand-made cluster directions, one row per label (cluster
  association, docs/dmdl.md#A5.2).
* :func:`csr_tensor`, :func:`jaccard_affinity`: ``torch.sparse_csr`` matrices, the row-normalised
  ``1 - Jaccard distance`` affinity of label propagation (docs/mult.md#B3).
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dmdl.ops import jaccard_distance, row_normalize

__all__ = [
    "clustered_features",
    "csr_tensor",
    "direction_features",
    "identical_rows_features",
    "jaccard_affinity",
    "near_tie_features",
    "two_modality_features",
]


def clustered_features(n: int, d: int = 32, seed: int = 0, *, noise: float = 0.6, clusters: int | None = None,
                       cluster_size: int = 12, device: torch.device | str | None = None,
                       chunk_rows: int | None = None) -> Tensor:
    """L2-normalised rows around random centres (the structure re-ID features have).

    Draws, from ``torch.Generator(device).manual_seed(seed)``: ``centres`` ~ N(0, 1) of shape
    (clusters, d); then per chunk of rows, the labels ~ U{0 .. clusters-1} and the noise
    ~ N(0, noise²) of shape (rows, d); row i is ``normalize(centres[label_i] + noise_i)``.

    Args:
        n: rows, >= 0.
        d: columns (feature dimension), >= 1.
        seed: the generator's seed.
        noise: standard deviation of the noise around the centre (centres have norm ~ sqrt(d)).
        clusters: number of centres; None (or 0) means ``max(2, n // cluster_size)``.
        cluster_size: mean rows per cluster when ``clusters`` is None (12 for the tests, 20 for
            the benchmarks).
        device: where the generator draws and the result lives (default CPU). A CUDA generator
            gives other numbers than the CPU one for the same seed.
        chunk_rows: draw labels and noise ``chunk_rows`` rows at a time into one preallocated
            (n, d) tensor, so that no temporary of the whole size is made (large N). None: one
            chunk, the same draws as a chunk of ``n`` rows.

    Returns:
        (n, d) float32 tensor on ``device``, C-contiguous, rows of unit L2 norm.

    Raises:
        ValueError: ``n`` < 0, ``d`` < 1, ``cluster_size`` < 1 or ``chunk_rows`` < 1.
    """
    if n < 0 or d < 1 or cluster_size < 1 or (chunk_rows is not None and chunk_rows < 1):
        raise ValueError(f"clustered_features: need n >= 0, d >= 1, cluster_size >= 1 and chunk_rows >= 1, got "
                         f"n={n}, d={d}, cluster_size={cluster_size}, chunk_rows={chunk_rows}")
    device = torch.device("cpu") if device is None else torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    clusters = clusters or max(2, n // cluster_size)
    centres = torch.randn(clusters, d, generator=g, device=device)
    x = torch.empty(n, d, device=device)
    step = n if chunk_rows is None else chunk_rows
    for start in range(0, n, max(step, 1)):
        rows = min(n, start + step) - start
        labels = torch.randint(0, clusters, (rows,), generator=g, device=device)
        noise_rows = noise * torch.randn(rows, d, generator=g, device=device)
        x[start : start + rows] = F.normalize(centres[labels] + noise_rows, dim=1)
    return x


def near_tie_features(n: int, d: int, seed: int) -> Tensor:
    """:func:`clustered_features` ``(n, d, seed)`` with ties: with m = n // 10, rows
    ``n//2 .. n//2+m`` repeat rows ``0 .. m`` exactly, rows ``m .. 2m`` are rows ``2m .. 3m`` plus
    N(0, 1e-4²) noise (from a second generator seeded with ``seed``), and rows ``3m .. 3m+5``
    repeat row ``3m`` (a group of 6 identical rows); then every row is L2-normalised again.

    Returns:
        (n, d) float32 CPU tensor, C-contiguous, rows of unit norm.
    """
    g = torch.Generator().manual_seed(seed)
    x = clustered_features(n, d, seed)
    m = n // 10
    x[n // 2 : n // 2 + m] = x[:m]  # exact duplicates
    x[m : 2 * m] = x[2 * m : 3 * m] + 1e-4 * torch.randn(m, d, generator=g)  # near duplicates
    x[3 * m : 3 * m + 5] = x[3 * m]  # a group of 6 identical rows
    return F.normalize(x, dim=1).contiguous()


def identical_rows_features(n: int, d: int, seed: int, identical: int = 50) -> Tensor:
    """``identical`` equal rows ``normalize(ones(d))`` followed by
    :func:`clustered_features` ``(n - identical, d, seed)``: every distance among the first rows
    ties, so the kNN breaks ties by index and most of them are not in their own list (empty
    k-reciprocal sets).

    Returns:
        (n, d) float32 CPU tensor, C-contiguous, rows of unit norm.

    Raises:
        ValueError: ``n < identical``.
    """
    if n < identical:
        raise ValueError(f"identical_rows_features: n = {n} is smaller than identical = {identical}")
    return torch.cat([F.normalize(torch.ones(identical, d), dim=1), clustered_features(n - identical, d, seed)]
                     ).contiguous()


def two_modality_features(seed: int, n_visible: int = 150, n_infrared: int = 120, ids: int = 10, d: int = 32,
                          shift: float = 0.15, noise: float = 0.5,
                          gap_first: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Visible and infrared features of ``ids`` identities, the infrared ones shifted by a
    modality gap.

    Draws, from ``torch.Generator().manual_seed(seed)``: the identity directions (ids, d)
    ~ N(0, 1), L2-normalised; the identity of each visible then each infrared sample
    ~ U{0 .. ids-1}; the gap (d,) ~ N(0, shift²) (drawn before the identities with
    ``gap_first``, the order of bench/bench_mult_transfer.py); the noise (n, d) ~ N(0, noise²/d)
    of the visible then the infrared samples. A visible sample is
    ``normalize(direction + noise)``, an infrared one ``normalize(direction + gap + noise)``.

    Returns:
        ``(visible, infrared, visible_ids, infrared_ids)``: (n_visible, d) and (n_infrared, d)
        float32 CPU tensors with unit-norm rows, and the (n_visible,) and (n_infrared,) int64
        identities.
    """
    g = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(ids, d, generator=g), dim=1)
    gap = shift * torch.randn(d, generator=g) if gap_first else None
    y_visible = torch.randint(0, ids, (n_visible,), generator=g)
    y_infrared = torch.randint(0, ids, (n_infrared,), generator=g)
    if gap is None:
        gap = shift * torch.randn(d, generator=g)
    visible = F.normalize(base[y_visible] + noise * torch.randn(n_visible, d, generator=g) / d ** 0.5, dim=1)
    infrared = F.normalize(base[y_infrared] + gap + noise * torch.randn(n_infrared, d, generator=g) / d ** 0.5,
                           dim=1)
    return visible, infrared, y_visible, y_infrared


def direction_features(directions: Mapping[int, Sequence[float]], labels: Sequence[int], outlier: Sequence[float],
                       jitter: float = 0.0) -> Tensor:
    """One row per label: the direction of its cluster, scaled by ``1 + jitter`` and
    ``1 - jitter`` in turn within each cluster (so that the normalised cluster mean keeps the
    direction); the first D entries of ``outlier`` for a label < 0. No randomness.

    Args:
        directions: cluster id -> direction (D floats, the same D for all).
        labels: (N,) cluster ids, -1 for an outlier.
        outlier: the row of an outlier (at least D floats).
        jitter: relative scale change of the copies (0: every row of a cluster is its direction).

    Returns:
        (N, D) float32 CPU tensor (computed in float64, rounded once).

    Raises:
        KeyError: a label >= 0 without a direction.
    """
    dim = len(next(iter(directions.values())))
    rows, seen = [], {}
    for lab in labels:
        if lab < 0:
            rows.append(np.asarray(outlier[:dim], dtype=np.float64))
            continue
        sign = 1 if seen.get(lab, 0) % 2 == 0 else -1
        seen[lab] = seen.get(lab, 0) + 1
        rows.append(np.asarray(directions[lab], dtype=np.float64) * (1 + jitter * sign))
    return torch.tensor(np.array(rows), dtype=torch.float32)


def csr_tensor(crow, col, val, shape: tuple[int, int]) -> Tensor:
    """``torch.sparse_csr_tensor`` without the invariant check and without its beta warning, so
    that tests can build unsorted, repeated or out-of-range indices on purpose.

    Args:
        crow: (rows + 1,) row pointers (int32 or int64; anything ``torch.as_tensor`` takes).
        col: (nnz,) column indices (int32 or int64).
        val: (nnz,) values.
        shape: (rows, columns).

    Returns:
        A ``torch.sparse_csr`` tensor sharing the given index and value tensors.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.as_tensor(crow), torch.as_tensor(col), torch.as_tensor(val),
                                       size=shape, check_invariants=False)


def jaccard_affinity(features: Tensor, k1: int, k2: int) -> Tensor:
    """The label-propagation affinity of MULT (docs/mult.md#B3): ``1 - Jaccard distance`` on
    the pairs :func:`dmdl.ops.jaccard_distance` stores (d < 1), row-normalised.

    Args:
        features: (N, D) float32 features (e.g. :func:`clustered_features`).
        k1, k2: the k-reciprocal parameters.

    Returns:
        (N, N) float32 ``torch.sparse_csr`` tensor, rows summing to 1 (or empty).

    Raises:
        Whatever ``jaccard_distance`` raises (ImportError without the compiled ``dmdl._C``).
    """
    dist = jaccard_distance(features, k1=k1, k2=k2, output="sparse")
    return row_normalize(csr_tensor(dist.crow_indices(), dist.col_indices(), 1.0 - dist.values(), tuple(dist.shape)))
