"""Cross-modality retrieval: distances, ranked lists and k-reciprocal re-ranking.

The distance between two L2-normalised features is their squared Euclidean distance
``2 - 2 q.g`` (in [0, 4]); it ranks the gallery exactly as the protocol's ``-q.g``
(docs/dmdl.md#A11). Re-ranking follows Zhong et al., "Re-ranking Person Re-identification
with k-reciprocal Encoding", CVPR 2017, through :func:`dmdl.ops.jaccard_distance`; see
:func:`k_reciprocal_distances` for exactly what is computed and where it departs from the paper.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from ._bridge import InputError, jaccard_distance

#: The paper's defaults (Zhong et al. 2017, §4.2): k1 = 20, k2 = 6, lambda = 0.3.
RERANK_DEFAULTS = {"k1": 20, "k2": 6, "lam": 0.3}

# query rows per block of the sort (bounds the (rows, G) temporaries)
_BLOCK_CELLS = 1 << 24


def _check_features(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < 1:
        raise InputError(f"{name} must be a (N, D) tensor with N >= 1, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} must hold finite floating-point values")
    return x.float()


def squared_distances(query: Tensor, gallery: Tensor) -> Tensor:
    """``d[i, j] = 2 - 2 q_i . g_j``, the squared Euclidean distance of unit vectors, clamped at 0.

    Args:
        query: (Q, D) float L2-normalised rows; gallery: (G, D), same device.

    Returns:
        (Q, G) float32 on their device.

    Raises:
        InputError: not 2-D, empty, non-finite, or different D.
    """
    q, g = _check_features("query features", query), _check_features("gallery features", gallery)
    if q.shape[1] != g.shape[1]:
        raise InputError(f"query features have D = {q.shape[1]}, gallery features D = {g.shape[1]}: "
                         "they come from different models")
    return (2.0 - 2.0 * (q @ g.t())).clamp_(min=0.0)


def rank_gallery(distances: Tensor, topk: int | None = None) -> tuple[Tensor, Tensor]:
    """Sort every row of a (Q, G) distance matrix, nearest first; ties keep the gallery order
    (a stable sort, as :mod:`dmdl.evaluation.metrics`).

    Args:
        topk: keep the first ``topk`` columns (None: all G; larger than G: G).

    Returns:
        ``(indices, distances)``: (Q, k) int64 gallery indices and their (Q, k) distances.

    Raises:
        InputError: ``topk`` < 1.
    """
    if distances.dim() != 2:
        raise InputError(f"distances must be (Q, G), got {tuple(distances.shape)}")
    n_q, n_g = distances.shape
    k = n_g if topk is None else int(topk)
    if k < 1:
        raise InputError(f"topk must be >= 1, got {topk}")
    k = min(k, n_g)
    block = max(1, _BLOCK_CELLS // max(n_g, 1))
    idx, dist = [], []
    for s in range(0, n_q, block):
        d, i = torch.sort(distances[s:s + block], dim=1, stable=True)
        idx.append(i[:, :k])
        dist.append(d[:, :k])
    return torch.cat(idx), torch.cat(dist)


def _csr_rows_dense(csr: Tensor, rows: int) -> Tensor:
    """The first ``rows`` rows of an (N, N) sparse CSR distance matrix, dense; absent pairs are 1."""
    crow = csr.crow_indices().long()
    n = csr.shape[1]
    end = int(crow[rows])
    out = torch.ones(rows, n, dtype=csr.values().dtype, device=csr.device)
    r = torch.repeat_interleave(torch.arange(rows, device=csr.device), crow[1:rows + 1] - crow[:rows])
    out[r, csr.col_indices()[:end].long()] = csr.values()[:end]
    return out


def k_reciprocal_distances(query: Tensor, gallery: Tensor, k1: int = 20, k2: int = 6, lam: float = 0.3) -> Tensor:
    """k-reciprocal re-ranked distances, query to gallery (Zhong et al., CVPR 2017, Eq. 13-14).

    ``d*(q, g) = (1 - lam) d_J(q, g) + lam d(q, g)`` with, on the set ``X = Q u G`` (the
    queries first, N = Q + G rows):

    - ``d(q, g) = (2 - 2 q.g) / max_{x in X} (2 - 2 q.x)``: the squared Euclidean distance of
      the unit features divided by its maximum over the probe's row of X (the paper's
      normalisation of the original distance, as its code does);
    - ``d_J``: :func:`dmdl.ops.jaccard_distance` on X with ``k1 + 1`` and ``k2``, i.e. the
      probe's ``k1 + 1`` nearest neighbours (itself included, as in the paper) give the
      k-reciprocal set R(p, k1); the half-size sets use ``round((k1 + 1) / 2) + 1`` neighbours
      (Python rounding; the paper's ``round(k1 / 2) + 1`` for even k1, as the default 20; one
      more for odd k1); a set is added when more than 2/3 of it lies in R(p, k1); query
      expansion averages the V rows of each row's ``min(k2, k1 + 1)`` nearest (itself
      included) over all of X, as the paper's code does; ``d_J = 1 - s / (2 - s)`` with
      ``s = sum_k min(V_pk, V_xk)`` over all N columns.

    Departure from the paper (a documented choice): the weights of V are
    ``softmax(-(2 - 2 p.x))`` over the expanded set, the op's unnormalised squared distance,
    where the paper exponentiates the row-normalised distance above. The op's kNN ranking by
    squared Euclidean distance is the paper's (the row normalisation does not change a ranking).

    Args:
        query: (Q, D) float32, L2-normalised rows; gallery: (G, D), same device (CPU, or CUDA
            with a CUDA build of ``dmdl._C``).
        k1, k2, lam: the paper's k1 (>= 1, with k1 + 1 <= Q + G), k2 (>= 1) and lambda in [0, 1].

    Returns:
        (Q, G) float32 distances on the features' device.

    Raises:
        InputError: bad shapes or values, ``k1 + 1 > Q + G`` (the message says to lower k1).
        ImportError: ``dmdl._C`` is not built.
    """
    for name, v in (("k1", k1), ("k2", k2)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise InputError(f"re-ranking: {name} must be an integer >= 1, got {v!r}")
    if not 0.0 <= float(lam) <= 1.0:
        raise InputError(f"re-ranking: lambda must be in [0, 1], got {lam}")
    dist_qg = squared_distances(query, gallery)
    q, g = query.float(), gallery.float()
    x = torch.cat([q, g]).contiguous()
    n_q, n = q.shape[0], x.shape[0]
    if k1 + 1 > n:
        raise InputError(f"re-ranking with k1 = {k1} needs more than {k1} images in query + gallery, got {n}; "
                         "lower k1")
    jac = jaccard_distance(x, k1=int(k1) + 1, k2=int(k2), output="sparse")
    d_j = _csr_rows_dense(jac, n_q)[:, n_q:]
    row_max = torch.maximum(dist_qg.amax(dim=1), (2.0 - 2.0 * (q @ q.t())).clamp_(min=0.0).amax(dim=1))
    d = dist_qg / row_max.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    return (1.0 - lam) * d_j + lam * d
