"""MULT label transfer: Modality-Unified Label Transfer (docs/mult.md#B3; MULT, arXiv 2402.00672).

Run once per cross-stage epoch of MULT, on *all* training samples (DBSCAN outliers included):

1. initial intra-modality soft labels ``Y_R0 = softmax(F_R C_R^T / T)``, ``Y_I0 = softmax(F_I C_I^T / T)``;
2. initial cross-modality hard labels by balanced optimal transport (:func:`sinkhorn_knopp` on the
   squared Euclidean cost between the samples of one modality and the centroids of the other):
   ``Y_RI0`` (N_R x K_I), ``Y_IR0`` (N_I x K_R), one-hot of the plan's row argmax;
3. affinities: homogeneous ``A_R = rownorm(1 - D_R)``, ``A_I = rownorm(1 - D_I)`` from the
   k-reciprocal Jaccard distances (sparse: only the pairs with d < 1 are non-zero), heterogeneous
   ``A_RI = rownorm(T)``, ``A_IR = rownorm(T^T)`` from the Sinkhorn plan T on ``|F_R - F_I|^2``
   (dense as the reference, or restricted to k nearest neighbours: ``cross_affinity="knn"``);
4. label propagation (:func:`propagate_labels`) in the IR label space (``Y_I``, ``Y_RI``) and in
   the RGB label space (``Y_R``, ``Y_IR``), each step on :func:`dmdl.ops.propagate` (the compiled
   CSR kernel for sparse affinities, a GEMM for dense ones);
5. hard labels by row argmax, and :func:`mult_soft_labels` (the β step) for training.

What differs from MULT's released code (``cross_association.py``), on purpose: the Sinkhorn kernel is
computed in float64 with each row shifted by its minimum cost (the plan is unchanged, no row
underflows to zero at lambda = 25), the affinities may be sparse, and nothing is printed.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from dmdl.ops.memory import cluster_centroids
from dmdl.ops.propagation import propagate, row_normalize

CROSS_AFFINITIES = ("dense", "knn")


def pairwise_sq_dist(x: Tensor, y: Tensor) -> Tensor:
    """``|x_i - y_j|^2`` for (M, D) ``x`` and (N, D) ``y`` -> (M, N), in their dtype, clamped at 0."""
    d = (x * x).sum(1, keepdim=True) + (y * y).sum(1).unsqueeze(0) - 2.0 * (x @ y.t())
    return d.clamp_min_(0.0)


def sinkhorn_knopp(cost: Tensor, lam: float = 25.0, max_iter: int = 500, tol: float = 0.1,
                   check_every: int = 10) -> tuple[Tensor, Tensor, Tensor, int]:
    """Balanced Sinkhorn-Knopp scaling of the kernel ``exp(-lam * cost)`` (MULT docs/mult.md#B3.2).

    Uniform marginals: every row sends ``1/M``, every column receives ``1/N``. Starting from
    ``beta = 1/N``, each step sets ``alpha = (1/M) / (K beta)`` then ``beta = (1/N) / (K^T alpha)``;
    every ``check_every`` steps (step 0 included) the error ``sum_j |beta_j / beta_new_j - 1|`` is
    measured, and the loop stops once that error is <= ``tol`` or after ``max_iter`` steps — the
    stopping rule of MULT's ``sinkhorn_solver``. The plan is ``diag(alpha) K diag(beta)``.

    The kernel is built in float64 as ``exp(-lam (cost - min_j cost_ij))``: a per-row factor, which
    ``alpha`` absorbs, so the plan and ``beta`` are those of the unshifted kernel while no row can
    underflow to zero.

    Args:
        cost: (M, N) float cost (any device), finite.
        lam: kernel sharpness lambda (> 0; 25 in MULT).
        max_iter: step limit (>= 1; 500 in MULT).
        tol: stopping threshold of the error (0.1 in MULT).
        check_every: steps between error checks (10 in MULT).

    Returns:
        (kernel, alpha, beta, steps) where ``kernel`` is the (M, N) float64 shifted kernel, ``alpha``
        (M,) and ``beta`` (N,) float64 scalings such that ``plan = alpha[:, None] * kernel * beta``
        (use :func:`sinkhorn_plan` for the plan itself), and ``steps`` the steps taken.

    Raises:
        ValueError: empty or non-finite cost, lam <= 0, max_iter < 1.
    """
    if cost.dim() != 2 or cost.shape[0] == 0 or cost.shape[1] == 0:
        raise ValueError(f"cost must be a non-empty (M, N) matrix, got shape {tuple(cost.shape)}")
    if not lam > 0 or max_iter < 1 or check_every < 1:
        raise ValueError(f"lam must be > 0, max_iter and check_every >= 1; got {lam}, {max_iter}, {check_every}")
    c = cost.double()
    if not torch.isfinite(c).all():
        raise ValueError("cost contains NaN or inf")
    kernel = torch.exp(-lam * (c - c.min(dim=1, keepdim=True).values))
    alpha, beta, steps = _scale(lambda v: kernel @ v, lambda v: kernel.t() @ v, kernel.shape, max_iter, tol,
                                check_every, kernel.device)
    return kernel, alpha, beta, steps


def _scale(kmv, ktmv, shape, max_iter, tol, check_every, device):
    """The Sinkhorn-Knopp loop on a kernel given by its products ``K v`` and ``K^T v``."""
    m, n = shape
    beta = torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    err, step = float("inf"), 0
    while err > tol and step < max_iter:  # max_iter >= 1: alpha is always set
        alpha = (1.0 / m) / kmv(beta)
        beta_new = (1.0 / n) / ktmv(alpha)
        if step % check_every == 0:
            ratio = beta / beta_new - 1.0
            err = float(torch.nansum(ratio.abs()))  # nansum as MULT: 0/0 columns do not count
        beta = beta_new
        step += 1
    return alpha, beta, step


def sinkhorn_plan(cost: Tensor, lam: float = 25.0, max_iter: int = 500, tol: float = 0.1) -> Tensor:
    """The (M, N) float64 transport plan of :func:`sinkhorn_knopp` (rows sum to ~1/M, columns to 1/N)."""
    kernel, alpha, beta, _ = sinkhorn_knopp(cost, lam, max_iter, tol)
    return alpha[:, None] * kernel * beta[None, :]


def _cross_labels(features: Tensor, centers: Tensor, lam: float) -> Tensor:
    """One-hot (N, K) float32 of each sample's row argmax of the Sinkhorn plan on |f - c|^2 (step 2)."""
    kernel, alpha, beta, _ = sinkhorn_knopp(pairwise_sq_dist(features.float(), centers.float()), lam)
    # the plan's row argmax: alpha_i is one factor per row
    best = (kernel * beta[None, :]).argmax(dim=1)
    return F.one_hot(best, centers.shape[0]).float()


def _as_torch_distances(dist, n: int, name: str, device) -> Tensor:
    """Dense tensor, NumPy array, scipy sparse or torch sparse CSR (N, N) -> torch (dense or CSR)."""
    if sp.issparse(dist):
        csr = sp.csr_matrix(dist)
        dist = torch.sparse_csr_tensor(torch.as_tensor(csr.indptr, dtype=torch.int64),
                                       torch.as_tensor(csr.indices, dtype=torch.int64),
                                       torch.as_tensor(csr.data, dtype=torch.float32), size=csr.shape,
                                       check_invariants=False)
    elif isinstance(dist, np.ndarray):
        dist = torch.as_tensor(dist, dtype=torch.float32)
    if not isinstance(dist, Tensor):
        raise TypeError(f"{name} must be a tensor, a NumPy array or a scipy sparse matrix, got {type(dist).__name__}")
    if tuple(dist.shape) != (n, n):
        raise ValueError(f"{name} must be ({n}, {n}) (one row and column per sample), got {tuple(dist.shape)}")
    if dist.layout not in (torch.strided, torch.sparse_csr):
        raise ValueError(f"{name}: expected a dense or sparse CSR tensor, got layout {dist.layout}")
    return dist.to(device)


def homogeneous_affinity(dist) -> Tensor:
    """``rownorm(1 - D)`` (docs/mult.md#B3.3) from a Jaccard distance matrix, keeping its layout.

    Dense (N, N) distances give a dense float32 affinity; a sparse CSR (the Jaccard op's
    ``output="sparse"``: the pairs with d < 1, absent pairs at exactly 1) gives a CSR affinity with
    the same pattern, ``1 - d`` on it (absent pairs are 0 = 1 - 1, as in the dense matrix).
    """
    if dist.layout == torch.sparse_csr:
        aff = torch.sparse_csr_tensor(dist.crow_indices(), dist.col_indices(),
                                      (1.0 - dist.values().float()), size=dist.shape, check_invariants=False)
    else:
        aff = 1.0 - dist.float()
    return row_normalize(aff)


def heterogeneous_affinity(features_rgb: Tensor, features_ir: Tensor, lam: float = 25.0,
                           mode: str = "dense", k: int = 30) -> tuple[Tensor, Tensor, int]:
    """``A_RI = rownorm(T)`` and ``A_IR = rownorm(T^T)`` from the Sinkhorn plan T on ``|F_R - F_I|^2``.

    ``mode="dense"`` (MULT): T over all N_R x N_I pairs, 8 N_R N_I bytes of float64 kernel.
    ``mode="knn"``: sparse, for large N: each RGB row keeps its ``k`` nearest IR samples (squared
    Euclidean, ``torch.topk`` over row blocks) with weights ``exp(-lam d^2)``, row-normalised, and
    each IR row its ``k`` nearest RGB samples; O((N_R + N_I) k) memory. The Sinkhorn balancing of
    the dense plan is dropped there (MULT's code has this graph as ``knn_graph``): on a sparse
    pattern a balanced scaling need not exist (it diverges when some samples are nobody's
    neighbours). Within a row, the dense plan weighs columns by ``exp(-lam d^2) beta_j``, so the two
    differ by the column factors ``beta_j`` and by the far pairs (weights below ``exp(-lam gap)``).
    Experimental: trained on RegDB-half it gave much worse labels than the dense plan (README).

    Returns:
        (A_RI (N_R, N_I), A_IR (N_I, N_R), Sinkhorn steps (0 for knn)): float32, dense or sparse CSR.
    """
    fr, fi = features_rgb.float(), features_ir.float()
    if mode == "dense":
        kernel, alpha, beta, steps = sinkhorn_knopp(pairwise_sq_dist(fr, fi), lam)
        a_ri = row_normalize((kernel * beta[None, :]).float())  # alpha_i cancels in each row
        a_ir = row_normalize((kernel.t() * alpha[None, :]).float())  # beta_j cancels in each row
        return a_ri, a_ir, steps
    if mode != "knn":
        raise ValueError(f"cross_affinity must be one of {CROSS_AFFINITIES}, got {mode!r}")
    if k < 1:
        raise ValueError(f"cross_k must be >= 1, got {k}")
    return _knn_affinity(fr, fi, min(k, fi.shape[0]), lam), _knn_affinity(fi, fr, min(k, fr.shape[0]), lam), 0


def _knn_affinity(x: Tensor, y: Tensor, k: int, lam: float, block: int = 4096) -> Tensor:
    """Row-normalised CSR (M, N): each x row's ``k`` nearest y rows with weights ``exp(-lam |x - y|^2)``."""
    crow = torch.arange(0, x.shape[0] * k + 1, k, dtype=torch.int64, device=x.device)
    cols, vals = [], []
    for s in range(0, x.shape[0], block):
        d = pairwise_sq_dist(x[s:s + block], y)
        near = d.topk(k, dim=1, largest=False)
        order = near.indices.argsort(dim=1)  # CSR columns ascending
        idx, dist = near.indices.gather(1, order), near.values.gather(1, order)
        cols.append(idx.reshape(-1))
        # shifted by the row's smallest distance: the same row after normalisation, and no underflow
        vals.append(torch.exp(-lam * (dist - dist.min(dim=1, keepdim=True).values)).reshape(-1))
    aff = torch.sparse_csr_tensor(crow, torch.cat(cols), torch.cat(vals).float(), size=(x.shape[0], y.shape[0]),
                                  check_invariants=False)
    return row_normalize(aff)


def propagate_labels(a_ab, a_ba, a_a, a_b, y_a0: Tensor, y_b0: Tensor, alpha: float = 0.2,
                     max_iter: int = 20, tol: float = 1e-2) -> tuple[Tensor, Tensor, int]:
    """MULT's alternating label propagation in one label space (docs/mult.md#B3.4, ``lp`` of the code).

    Samples of modality a (affinity ``a_a``, labels ``Y_a``) and of modality b (``a_b``, ``Y_b``),
    both over the same K labels; ``a_ab`` (N_a, N_b) and ``a_ba`` (N_b, N_a) the heterogeneous
    affinities. From ``Y_a = Y_a0``, ``Y_b = Y_b0``, each iteration is, in order::

        Y_a <- (1 - alpha) a_ab Y_b + alpha Y_a0
        Y_b <- (1 - alpha) a_ba Y_a + alpha Y_b0
        Y_a <- 0.5 a_a Y_a + 0.5 Y_a
        Y_b <- 0.5 a_b Y_b + 0.5 Y_b

    each a :func:`dmdl.ops.propagate` call. The loop stops after ``max_iter`` iterations or once
    ``max(|Y_b - Y_b'|_1 / sum Y_b', |Y_a - Y_a'|_1 / sum Y_a') <= tol`` (Y' the previous iterate,
    sums over the whole matrix; the first iterate is compared with Y_0).

    Args:
        a_ab, a_ba, a_a, a_b: row-normalised float32 affinities, dense or sparse CSR, one device.
        y_a0: (N_a, K) float32; y_b0: (N_b, K) float32.

    Returns:
        (Y_a, Y_b, iterations).
    """
    y_a, y_b = y_a0, y_b0
    old_a, old_b = y_a0, y_b0
    it = 0
    while it < max_iter:
        y_a = propagate(a_ab, y_b, y_a0, 1.0 - alpha, alpha)
        y_b = propagate(a_ba, y_a, y_b0, 1.0 - alpha, alpha)
        y_a = propagate(a_a, y_a, y_a, 0.5, 0.5)
        y_b = propagate(a_b, y_b, y_b, 0.5, 0.5)
        change = max(float((y_b - old_b).abs().sum() / old_b.sum()), float((y_a - old_a).abs().sum() / old_a.sum()))
        old_a, old_b = y_a, y_b
        it += 1
        if change <= tol:
            break
    return y_a, y_b, it


def mult_label_transfer(features_rgb: Tensor, features_ir: Tensor, centers_rgb: Tensor, centers_ir: Tensor,
                        dist_rgb, dist_ir, alpha: float = 0.2, temperature: float = 0.05, lam: float = 25.0, *,
                        cross_affinity: str = "dense", cross_k: int = 30, max_iter: int = 20,
                        tol: float = 1e-2) -> dict:
    """MULT's label transfer (docs/mult.md#B3; MULT arXiv 2402.00672, ``cross_association.MULT``).

    Args:
        features_rgb: (N_R, D) float L2-normalised features of every RGB training sample (outliers
            included); features_ir: (N_I, D) the same for IR; one device (CPU or CUDA).
        centers_rgb: (K_R, D) float DBSCAN centroids of the RGB clusters (the mean of the members'
            normalised features, not renormalised); centers_ir: (K_I, D).
        dist_rgb: (N_R, N_R) k-reciprocal Jaccard distances of the RGB samples: a dense tensor or
            NumPy array, or the sparse output of :func:`dmdl.ops.jaccard_distance` (torch sparse
            CSR, or scipy sparse), whose absent pairs are at distance 1; dist_ir: (N_I, N_I).
        alpha: weight of the initial labels in the propagation (0.2 in MULT).
        temperature: of the initial soft labels ``softmax(F C^T / T)`` (0.05).
        lam: Sinkhorn kernel sharpness ``exp(-lam cost)`` (25).
        cross_affinity: ``"dense"`` (MULT: the Sinkhorn plan over all RGB x IR pairs) or ``"knn"``
            (restricted to ``cross_k`` nearest neighbours each way, see :func:`heterogeneous_affinity`).
        max_iter, tol: propagation stopping rule (20 iterations, relative L1 change 0.01).

    Returns:
        dict with
        ``labels_rgb`` (N_R,) / ``labels_ir`` (N_I,): int64 NumPy, the new intra-modality labels
        (argmax of Y_R over K_R / Y_I over K_I); ``rgb_in_ir`` (N_R,): each RGB sample's label in the
        IR space (argmax Y_RI); ``ir_in_rgb`` (N_I,): each IR sample's label in the RGB space;
        ``y_rgb`` (N_R, K_R), ``y_ir`` (N_I, K_I), ``y_rgb_cm`` (N_R, K_I), ``y_ir_cm`` (N_I, K_R):
        float32 tensors on the features' device, the propagated label matrices before the β step
        (:func:`mult_soft_labels`); ``iterations`` {"ir_space", "rgb_space"}, ``sinkhorn_steps``,
        ``seconds`` {"affinity", "propagation", "total"}.

    Raises:
        ValueError: shapes that do not agree, non-finite features, no centroid, bad options.
        TypeError: distances of an unsupported type.
    """
    t0 = time.perf_counter()
    fr, fi = features_rgb.detach().float(), features_ir.detach().float()
    cr, ci = centers_rgb.detach().float().to(fr.device), centers_ir.detach().float().to(fr.device)
    for name, t in (("features_rgb", fr), ("features_ir", fi), ("centers_rgb", cr), ("centers_ir", ci)):
        if t.dim() != 2 or t.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty (rows, D) matrix, got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
    if len({fr.shape[1], fi.shape[1], cr.shape[1], ci.shape[1]}) != 1:
        raise ValueError("features_rgb, features_ir, centers_rgb and centers_ir must have the same width D, got "
                         f"{fr.shape[1]}, {fi.shape[1]}, {cr.shape[1]}, {ci.shape[1]}")
    if fi.device != fr.device:
        raise ValueError(f"features_rgb ({fr.device}) and features_ir ({fi.device}) must be on one device")
    if not 0.0 <= alpha <= 1.0 or not temperature > 0 or not lam > 0:
        raise ValueError(f"need 0 <= alpha <= 1, temperature > 0, lam > 0; got {alpha}, {temperature}, {lam}")
    d_r = _as_torch_distances(dist_rgb, fr.shape[0], "dist_rgb", fr.device)
    d_i = _as_torch_distances(dist_ir, fi.shape[0], "dist_ir", fr.device)

    # 1-2: initial labels
    y_r0 = torch.softmax(fr @ cr.t() / temperature, dim=1)
    y_i0 = torch.softmax(fi @ ci.t() / temperature, dim=1)
    y_ri0 = _cross_labels(fr, ci, lam)
    y_ir0 = _cross_labels(fi, cr, lam)
    # 3: affinities
    a_r, a_i = homogeneous_affinity(d_r), homogeneous_affinity(d_i)
    a_ri, a_ir, sk_steps = heterogeneous_affinity(fr, fi, lam, cross_affinity, cross_k)
    t1 = time.perf_counter()
    # 4: propagation, IR label space (Y_I, Y_RI) then RGB label space (Y_R, Y_IR)
    y_i, y_ri, it_ir = propagate_labels(a_ir, a_ri, a_i, a_r, y_i0, y_ri0, alpha, max_iter, tol)
    y_r, y_irc, it_rgb = propagate_labels(a_ri, a_ir, a_r, a_i, y_r0, y_ir0, alpha, max_iter, tol)
    t2 = time.perf_counter()

    def hard(y):
        return y.argmax(dim=1).cpu().numpy().astype(np.int64)

    return {
        "labels_rgb": hard(y_r), "labels_ir": hard(y_i), "rgb_in_ir": hard(y_ri), "ir_in_rgb": hard(y_irc),
        "y_rgb": y_r, "y_ir": y_i, "y_rgb_cm": y_ri, "y_ir_cm": y_irc,
        "iterations": {"ir_space": it_ir, "rgb_space": it_rgb}, "sinkhorn_steps": sk_steps,
        "seconds": {"affinity": t1 - t0, "propagation": t2 - t1, "total": t2 - t0},
    }


def mult_soft_labels(y: Tensor, beta: float = 0.7) -> Tensor:
    """The β step of MULT (docs/mult.md#B3.6): ``beta onehot(argmax_k y) + (1 - beta) y``, row-wise.

    Args:
        y: (N, K) float propagated labels. beta: in [0, 1] (0.7 in MULT).

    Returns:
        (N, K) tensor, same dtype and device.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return beta * F.one_hot(y.argmax(dim=1), y.shape[1]).to(y.dtype) + (1.0 - beta) * y


def dbscan_centers(features: Tensor, labels) -> Tensor:
    """(K, D) float32 mean of the (normalised) features of each DBSCAN cluster 0..K-1, not
    renormalised (MULT's ``generate_center``; docs/mult.md#B1.3). Outliers (-1) are ignored.

    Raises:
        ValueError: no cluster, or a cluster id in [0, K) without a member.
    """
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=features.device)
    if not bool((lab >= 0).any()):
        raise ValueError("no cluster: every sample is an outlier")
    return cluster_centroids(features.float(), lab, normalize=False)


def mult_association(features_visible: Tensor, labels_visible, features_infrared: Tensor, labels_infrared,
                     anchor: str, dist_visible=None, dist_infrared=None, *, alpha: float = 0.2,
                     temperature: float = 0.05, lam: float = 25.0, cross_affinity: str = "dense",
                     cross_k: int = 30) -> tuple[np.ndarray, np.ndarray, int]:
    """MULT's label transfer as DMDL's cross-modality association (the fourth option of Table 4's
    comparison, beside iMCA, Hungarian and OT; same signature and return convention as
    :func:`dmdl.pseudo_labels.imca`).

    Runs :func:`mult_label_transfer` on every sample with the DBSCAN centroids, then labels every
    sample in the *anchor*'s label space: with ``anchor="infrared"`` the visible samples take their
    IR-space label (``rgb_in_ir``) and the infrared samples their propagated intra label
    (``labels_ir``); with ``anchor="visible"`` the mirror. DBSCAN outliers stay -1 (DMDL trains on
    clustered samples only; MULT itself keeps them), and the ids left in use are renumbered
    0..K-1 (the propagation may empty a cluster).

    Args:
        features_visible, labels_visible, features_infrared, labels_infrared, anchor: as in
            :func:`dmdl.pseudo_labels.imca` (features L2-normalised or nearly so).
        dist_visible, dist_infrared: the modalities' Jaccard distances (see
            :func:`mult_label_transfer`); required.
        alpha, temperature, lam, cross_affinity, cross_k: of :func:`mult_label_transfer`.

    Returns:
        (unified_visible (N_V,), unified_infrared (N_I,), K): int64 labels in [0, K) or -1.

    Raises:
        ValueError: unknown anchor, missing distances, a modality without clusters.
    """
    if anchor not in ("visible", "infrared"):
        raise ValueError(f"anchor must be 'visible' or 'infrared', got {anchor!r}")
    if dist_visible is None or dist_infrared is None:
        raise ValueError("the mult association needs the Jaccard distances: pass dist_visible and dist_infrared")
    lv = np.asarray(labels_visible, dtype=np.int64)
    li = np.asarray(labels_infrared, dtype=np.int64)
    out = mult_label_transfer(features_visible, features_infrared, dbscan_centers(features_visible, lv),
                              dbscan_centers(features_infrared, li), dist_visible, dist_infrared, alpha=alpha,
                              temperature=temperature, lam=lam, cross_affinity=cross_affinity, cross_k=cross_k)
    if anchor == "infrared":
        uv, ui = out["rgb_in_ir"], out["labels_ir"]
    else:
        uv, ui = out["labels_rgb"], out["ir_in_rgb"]
    uv = np.where(lv >= 0, uv, -1)
    ui = np.where(li >= 0, ui, -1)
    used, inverse = np.unique(np.concatenate([uv, ui]), return_inverse=True)
    offset = 1 if used[0] < 0 else 0  # -1 sorts first
    inverse = inverse.astype(np.int64) - offset
    return inverse[: len(uv)].copy(), inverse[len(uv):].copy(), int(len(used) - offset)
