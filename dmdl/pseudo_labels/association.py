"""Cross-modality label association (docs/dmdl.md#A5.2).

iMCA, Iterative Maximum Confidence Alignment (DMDL paper §3.2, Eq. 2): every
cluster of the *mapped* modality takes the label of its most similar cluster
centroid (cosine) in the *anchor* modality. Many-to-one, no uniqueness
constraint; outliers stay -1. The anchor alternates with the epoch parity.

Alternatives compared in DMDL Table 4 (docs/dmdl.md#A12.4), same signature and
return convention as :func:`imca`: :func:`hungarian_matching` (BGM, PGM's
bipartite graph matching) and :func:`ot_matching` (optimal transport, as in
DOTLA); MULT's label transfer is the fourth (:mod:`dmdl.pseudo_labels.mult`);
:func:`associate` dispatches by name.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp
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
    lv, li, sim = _mapped_to_anchor_similarity(features_visible, labels_visible, features_infrared,
                                               labels_infrared, anchor)
    mapping = sim.argmax(axis=1)  # each mapped cluster -> its most similar anchor cluster
    return _apply_cluster_mapping(lv, li, mapping, anchor, sim.shape[1])


def nearest_sample_matching(
    features_visible: Tensor,
    labels_visible: np.ndarray,
    features_infrared: Tensor,
    labels_infrared: np.ndarray,
    anchor: str,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Sample-level matching, DMDL's RegDB variant of the association (docs/dmdl.md#A5.2).

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


# ---- Association alternatives (DMDL Table 4, docs/dmdl.md#A12.4, #C) ----


def _mapped_to_anchor_similarity(
    features_visible: Tensor,
    labels_visible: np.ndarray,
    features_infrared: Tensor,
    labels_infrared: np.ndarray,
    anchor: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated int64 labels and the (K_mapped, K_anchor) float64 cosine matrix of centroids.

    Raises:
        ValueError: unknown anchor or a modality without clusters.
    """
    if anchor not in ("visible", "infrared"):
        raise ValueError(f"anchor must be 'visible' or 'infrared', got {anchor!r}")
    lv = torch.as_tensor(labels_visible, dtype=torch.long)
    li = torch.as_tensor(labels_infrared, dtype=torch.long)
    if lv.numel() == 0 or li.numel() == 0 or lv.max() < 0 or li.max() < 0:
        raise ValueError("both modalities need at least one cluster for cross-modality association")
    cv = cluster_centroids(features_visible.float(), lv.to(features_visible.device))
    ci = cluster_centroids(features_infrared.float(), li.to(features_infrared.device))
    sim = (cv @ ci.t()).cpu().double().numpy()  # (K_V, K_I) cosine
    if anchor == "visible":
        sim = sim.T  # (K_I, K_V): IR clusters are mapped
    return lv.numpy().copy(), li.numpy().copy(), sim


def _apply_cluster_mapping(
    lv: np.ndarray, li: np.ndarray, mapping: np.ndarray, anchor: str, k_anchor: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Relabel the mapped modality's samples by ``mapping`` (cluster -> anchor cluster); -1 stays -1."""
    if anchor == "infrared":
        uv = np.where(lv >= 0, mapping[np.clip(lv, 0, None)], lv).astype(np.int64)
        return uv, li, k_anchor
    ui = np.where(li >= 0, mapping[np.clip(li, 0, None)], li).astype(np.int64)
    return lv, ui, k_anchor


def hungarian_matching(
    features_visible: Tensor,
    labels_visible: np.ndarray,
    features_infrared: Tensor,
    labels_infrared: np.ndarray,
    anchor: str,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Bipartite graph matching (BGM) of cluster centroids, PGM's association (docs/dmdl.md#C).

    Cost = 1/exp(cos) = exp(-cos) between L2-normalised centroids of the mapped
    and the anchor modality (monotone in -cos), solved with
    ``scipy.optimize.linear_sum_assignment``. The first pass is one-to-one:
    min(K_mapped, K_anchor) mapped clusters each get a *distinct* anchor
    cluster. When the mapped modality has more clusters than the anchor, the
    still-unmatched mapped clusters get further Hungarian passes against *all*
    anchor clusters (each pass again one-to-one within itself) until every
    mapped cluster has a label. PGM pads the cost matrix and runs one second
    pass, which crashes when K_mapped > 2 K_anchor (PGM issue #2, docs/decisions.md#D3); the
    repeated passes here generalise it. When K_mapped < K_anchor some anchor
    clusters get no partner. Outliers stay -1.

    Args:
        features_visible: (N_V, D) float features; labels_visible: (N_V,) int64, -1 outliers,
            clusters 0..K_V-1.
        features_infrared, labels_infrared: the same for infrared.
        anchor: ``"infrared"`` (visible clusters are mapped, K = K_I) or
            ``"visible"`` (IR clusters are mapped, K = K_V).

    Returns:
        (unified_visible (N_V,), unified_infrared (N_I,), K): int64 labels in
        [0, K) or -1; the anchor's labels are returned unchanged.

    Raises:
        ValueError: unknown anchor or a modality without clusters.

    Source: PGM (CVPR'23) docs/README.md#code-pgm stage-2 graph matching; DMDL Table 4 "BGM".
    """
    lv, li, sim = _mapped_to_anchor_similarity(
        features_visible, labels_visible, features_infrared, labels_infrared, anchor)
    cost = np.exp(-sim)  # = 1 / exp(cos)
    mapping = np.full(sim.shape[0], -1, dtype=np.int64)
    remaining = np.arange(sim.shape[0])
    while remaining.size:
        rows, cols = linear_sum_assignment(cost[remaining])
        mapping[remaining[rows]] = cols
        remaining = np.delete(remaining, rows)
    return _apply_cluster_mapping(lv, li, mapping, anchor, sim.shape[1])


def _sinkhorn(cost: np.ndarray, epsilon: float, n_iter: int, tol: float) -> np.ndarray:
    """Entropic optimal-transport plan with uniform marginals (log-domain Sinkhorn-Knopp).

    Solves min_P <P, C> - epsilon H(P) subject to P 1 = 1/M and P^T 1 = 1/N.
    The potentials f, g are updated alternately in log domain (stable for small
    epsilon). After each g-update the column marginals are exact; the loop
    stops once the row marginals are within a relative error ``tol``,
    max_i |M * sum_j P_ij - 1| < tol (checked every iteration at no extra cost).

    Args:
        cost: (M, N) float cost matrix.
        epsilon: entropic regularisation, > 0.
        n_iter: maximal number of (f, g) update pairs, >= 1.
        tol: stopping threshold on the relative row-marginal error.

    Returns:
        (M, N) float64 plan P >= 0 with total mass 1.

    Warns:
        RuntimeWarning: when ``n_iter`` iterations did not reach ``tol``
            (the last plan is returned; near-tied costs converge slowly).

    Raises:
        ValueError: empty or non-2-D cost, non-finite cost, epsilon <= 0 or n_iter < 1.
    """
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
        raise ValueError(f"cost must be a non-empty 2-D (M, N) matrix, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("cost contains NaN or inf")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    m, n = c.shape
    log_a, log_b = -np.log(m), -np.log(n)
    scaled = -c / epsilon
    f, g = np.zeros(m), np.zeros(n)  # potentials divided by epsilon
    err = np.inf
    for it in range(n_iter + 1):
        lse_rows = logsumexp(scaled + g[None, :], axis=1)  # log row sums / exp(f)
        if it > 0:
            err = np.abs(np.expm1(f + lse_rows - log_a)).max()
            if err < tol:
                break
        if it == n_iter:
            warnings.warn(f"Sinkhorn did not converge in {n_iter} iterations (relative row-marginal error "
                          f"{err:.3g} >= tol {tol:g})", RuntimeWarning, stacklevel=2)
            break
        f = log_a - lse_rows
        g = log_b - logsumexp(scaled + f[:, None], axis=0)
    return np.exp(scaled + f[:, None] + g[None, :])


def ot_matching(
    features_visible: Tensor,
    labels_visible: np.ndarray,
    features_infrared: Tensor,
    labels_infrared: np.ndarray,
    anchor: str,
    epsilon: float = 0.05,
    iterations: int = 1000,
    tol: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Optimal-transport association of cluster centroids (DOTLA-style; DMDL Table 4 "OT").

    Entropic OT (:func:`_sinkhorn`) between the mapped and the anchor
    clusters on the cost 1 - cos of their L2-normalised centroids, with uniform
    marginals (every mapped cluster sends mass 1/K_mapped, every anchor cluster
    receives 1/K_anchor) and regularisation ``epsilon``. Each mapped cluster
    takes the anchor cluster that receives the largest share of its mass
    (row argmax of the plan; ties -> smaller index). The balanced marginals
    push towards using every anchor cluster, unlike iMCA's unconstrained argmax.
    Outliers stay -1. Cluster-level adaptation for the Table 4 comparison; DOTLA
    itself transports at a finer level.

    Args:
        features_visible: (N_V, D) float features; labels_visible: (N_V,) int64, -1 outliers,
            clusters 0..K_V-1.
        features_infrared, labels_infrared: the same for infrared.
        anchor: ``"infrared"`` (visible clusters are mapped, K = K_I) or ``"visible"`` (K = K_V).
        epsilon: entropic regularisation (> 0).
        iterations: maximal Sinkhorn iterations.
        tol: Sinkhorn stopping threshold (relative error of the row marginals;
            1e-3 is ample for a row argmax).

    Returns:
        (unified_visible (N_V,), unified_infrared (N_I,), K): int64 labels in
        [0, K) or -1; the anchor's labels are returned unchanged.

    Raises:
        ValueError: unknown anchor, a modality without clusters, epsilon <= 0 or iterations < 1.

    Warns:
        RuntimeWarning: Sinkhorn did not converge within ``iterations``.

    Source: DOTLA (MM'23) as cited in DMDL Table 4 (docs/dmdl.md#A12.4).
    """
    lv, li, sim = _mapped_to_anchor_similarity(
        features_visible, labels_visible, features_infrared, labels_infrared, anchor)
    plan = _sinkhorn(1.0 - sim, epsilon, iterations, tol)
    mapping = plan.argmax(axis=1).astype(np.int64)
    return _apply_cluster_mapping(lv, li, mapping, anchor, sim.shape[1])


_ASSOCIATIONS = {"imca": imca, "hungarian": hungarian_matching, "ot": ot_matching}


def associate(
    method: str,
    features_visible: Tensor,
    labels_visible: np.ndarray,
    features_infrared: Tensor,
    labels_infrared: np.ndarray,
    anchor: str,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Cluster-level cross-modality association by name (DMDL Table 4).

    Args:
        method: ``"imca"`` (:func:`imca`, DMDL), ``"hungarian"``
            (:func:`hungarian_matching`, PGM's BGM), ``"ot"`` (:func:`ot_matching`) or ``"mult"``
            (:func:`dmdl.pseudo_labels.mult.mult_association`, MULT's label transfer; needs the
            keywords ``dist_visible`` and ``dist_infrared``).
        features_visible, labels_visible, features_infrared, labels_infrared, anchor:
            as in :func:`imca`.
        **kwargs: extra keywords for the method (e.g. ``epsilon`` for ``"ot"``).

    Returns:
        (unified_visible (N_V,), unified_infrared (N_I,), K) as in :func:`imca`.

    Raises:
        ValueError: unknown method (the message names the choices), or any error of the method.
    """
    if method == "mult":  # MULT's label transfer, its own module (needs dist_visible / dist_infrared)
        from dmdl.pseudo_labels.mult import mult_association

        return mult_association(features_visible, labels_visible, features_infrared, labels_infrared, anchor,
                                **kwargs)
    if method not in _ASSOCIATIONS:
        raise ValueError(f"method must be one of {sorted(_ASSOCIATIONS) + ['mult']}, got {method!r}")
    return _ASSOCIATIONS[method](
        features_visible, labels_visible, features_infrared, labels_infrared, anchor, **kwargs)
