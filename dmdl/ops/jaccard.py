"""k-reciprocal Jaccard distance (Zhong et al., "Re-ranking Person Re-identification
with k-reciprocal Encoding", CVPR 2017) as the reference repositories compute it.

Every DMDL/MULT/PGM/ADCA/Cluster-Contrast/SpCL repository calls
``faiss_rerank.compute_jaccard_distance(features, k1, k2)`` before DBSCAN. This
module reproduces that function exactly (docs/dmdl.md#A9):

1. kNN: the ``k1`` nearest neighbours of every row by squared L2 distance
   ``|f_i|^2 + |f_j|^2 - 2 f_i.f_j`` in fp32 (the ranking of faiss ``IndexFlatL2``),
   the row itself included. Ties are broken by the smaller index (stable sort);
   faiss leaves their order unspecified.
2. ``R(i, k1)``: the ``j`` among the first ``k1`` neighbours of ``i`` that have ``i``
   among their first ``k1``. ``R(i, k1/2)`` is built the same way from the first
   ``round(k1/2) + 1`` neighbours, ``round`` being Python's (half to even:
   ``k1 = 25`` gives 12).
3. Expansion: for each ``j`` in ``R(i, k1)``, add ``R(j, k1/2)`` when
   ``|R(j, k1/2) ∩ R(i, k1)| > 2/3 |R(j, k1/2)|``.
4. ``V[i, E_i] = softmax(-(2 - 2 f_i.f_E))`` over the expanded set ``E_i``
   (``exp(-d) / sum exp(-d)``); ``2 - 2 f_i.f_j`` is the squared distance of unit vectors.
5. Query expansion: ``V[i] <- mean(V[rank[i, :k2]])`` (the row and its nearest
   neighbours; the reference slices ``k1`` columns, so effectively ``min(k2, k1)``
   rows; ``k2 = 1`` leaves ``V`` unchanged).
6. ``s_ij = sum_k min(V_ik, V_jk)``, ``d_ij = 1 - s_ij / (2 - s_ij)``, clipped at 0.

Properties: values lie in [0, 1]; the diagonal is 0 up to rounding (every row
of ``V`` sums to 1, so ``s_ii = 1``); the matrix is symmetric (``min`` is
symmetric) up to float rounding of the accumulation order; most entries are
exactly 1 (pairs whose ``V`` rows share no column).

The compiled path never builds an N x N array: the kNN runs in tiles of the symmetric GEMM
``X X^T`` into running top lists and is made exact by canonical re-scoring with a certificate
(``csrc/include/dmdl/knn.h``), and the output is a CSR matrix of the pairs with ``d < 1``
(97-98% of the pairs of real features are exactly 1). ``output="dense"`` expands it.

Features must be L2-normalised rows: the weights use ``2 - 2 f_i.f_j`` as the
reference does, which is the squared distance only for unit vectors. Neither
function renormalises (the reference does not either, e.g. on flip-averaged
SYSU/LLCM features), so results match the reference for whatever is passed.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from . import _library
from .knn import (_check_options, _knn_int32, _load_for, _validate_features, _validate_finite, _validate_int,
                  _validate_k_range, knn)

__all__ = ["jaccard_distance", "jaccard_distance_reference", "knn", "to_scipy_csr"]


def _validate(features: Tensor, k1: int, k2: int) -> None:
    _validate_features(features)
    _validate_int("k1", k1)
    _validate_int("k2", k2)
    _validate_k_range("k1", k1, features)
    if k2 < 1:
        raise ValueError(f"k2 must be >= 1, got {k2}")
    _validate_finite(features)


def to_scipy_csr(distances: Tensor):
    """A ``torch.sparse_csr`` distance matrix as a ``scipy.sparse.csr_matrix`` (CPU, no copy of
    the CPU buffers), the input scikit-learn's ``DBSCAN(metric="precomputed")`` takes."""
    import scipy.sparse as sp

    if distances.layout != torch.sparse_csr:
        raise ValueError(f"distances must be a torch.sparse_csr tensor, got layout {distances.layout}")
    d = distances.cpu()
    return sp.csr_matrix((d.values().numpy(), d.col_indices().numpy(), d.crow_indices().numpy()),
                         shape=tuple(d.shape))


def jaccard_distance(features: Tensor, k1: int = 30, k2: int = 6, *, output: str = "sparse",
                     precision: str = "auto", margin: int | None = None, knn_backend: str = "torch") -> Tensor:
    """k-reciprocal Jaccard distances, computed by the compiled kernels.

    Args:
        features: ``[N, D]`` float32, L2-normalised rows, on the CPU or a CUDA device
            (CUDA needs an extension built with CUDA). Not renormalised here.
        k1: neighbourhood size of the k-reciprocal sets, ``1 <= k1 <= N`` (reference default 30).
        k2: query-expansion size, ``>= 1`` (reference default 6; ``min(k2, k1)`` rows are averaged).
        output: ``"sparse"`` (default): a ``torch.sparse_csr`` ``[N, N]`` float32 tensor holding
            every pair with ``d < 1``, columns ascending in each row; every absent pair has
            ``d = 1`` exactly. ``d = 0`` (the diagonal, duplicate rows) is stored as an explicit 0,
            which scikit-learn's ``DBSCAN(metric="precomputed")`` counts as a neighbour
            (checked in the tests); :func:`to_scipy_csr` converts it. ``"dense"``: ``[N, N]``.
        precision, margin, knn_backend: of the kNN, see :func:`dmdl.ops.knn` (``"auto"``: the
            fastest exact path on this hardware, :func:`dmdl.ops.knn.auto_precision`); the result
            does not depend on them.

    Returns:
        ``d[i, j]`` in [0, 1] on the device of ``features``; identical (to ~1e-6) to
        :func:`jaccard_distance_reference` and the reference repositories'
        ``compute_jaccard_distance`` with exact kNN.

    Raises:
        ValueError: wrong shape, dtype, non-finite values, ``k1``/``k2``/options out of range.
        ImportError: the compiled extension ``dmdl._C`` is not built (no fallback).
        RuntimeError: a CUDA tensor while the extension was built without CUDA.

    Source: docs/dmdl.md#A9; reference ``utils/faiss_rerank.py``; docs/benchmarks.md#jaccard.
    """
    _validate(features, k1, k2)
    if output not in ("sparse", "dense"):
        raise ValueError(f"output must be 'sparse' or 'dense', got {output!r}")
    precision, margin = _check_options(precision, margin, knn_backend, features.device)
    _load_for(features)
    x = features.detach().contiguous()
    rank, _ = _knn_int32(x, k1, precision, margin, knn_backend)
    crow, col, val = torch.ops.dmdl.jaccard_sparse(x, rank, int(k2))
    n = x.shape[0]
    if output == "dense":
        out = torch.ones(n, n, dtype=torch.float32, device=x.device)
        rows = torch.repeat_interleave(torch.arange(n, device=x.device), crow.diff())
        out[rows, col.long()] = val
        return out
    if crow[-1] < 2**31 - 1:
        crow = crow.int()
    else:
        col = col.long()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the layout is all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, size=(n, n), check_invariants=False)


def jaccard_distance_reference(features: Tensor, k1: int = 30, k2: int = 6) -> Tensor:
    """Pure-PyTorch reference of :func:`jaccard_distance`, written plainly (Python
    loops over rows; dense ``[N, N]`` matrices). For tests and small N.

    Args/Returns/Raises: as :func:`jaccard_distance` (except that no extension is needed).
    """
    _validate(features, k1, k2)
    x = features.detach().contiguous()
    n = x.shape[0]

    # 1. exact fp32 kNN by squared L2 (faiss IndexFlatL2 ranking), self included, ties by index.
    sq = (x * x).sum(1)
    dist = sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())
    rank = torch.sort(dist, dim=1, stable=True).indices[:, :k1].tolist()

    # 2. k-reciprocal sets.
    def reciprocal(i: int, k: int) -> list[int]:
        return [j for j in rank[i][:k] if i in rank[j][:k]]

    k_half = min(round(k1 / 2) + 1, k1)  # Python round: half to even
    r_full = [reciprocal(i, k1) for i in range(n)]
    r_half = [reciprocal(i, k_half) for i in range(n)]

    # 3-4. expansion and softmax weights.
    v = torch.zeros(n, n, dtype=torch.float32, device=x.device)
    for i in range(n):
        expanded = list(r_full[i])
        members = set(r_full[i])
        for cand in r_full[i]:
            half = r_half[cand]
            if len(members.intersection(half)) > 2 / 3 * len(half):
                expanded += half
        idx = torch.tensor(sorted(set(expanded)), dtype=torch.long, device=x.device)
        d = 2 - 2 * (x[i : i + 1] @ x[idx].t())
        v[i, idx] = torch.softmax(-d, dim=1)[0]

    # 5. query expansion: rows summed in neighbour order, then divided (as np.mean over axis 0).
    kq = min(k2, k1)
    if kq > 1:
        v_qe = torch.empty_like(v)
        for i in range(n):
            acc = v[rank[i][0]].clone()
            for j in rank[i][1:kq]:
                acc += v[j]
            v_qe[i] = acc / kq
        v = v_qe

    # 6. Jaccard over the non-zero columns of each row.
    out = torch.empty(n, n, dtype=torch.float32, device=x.device)
    for i in range(n):
        nz = torch.nonzero(v[i]).squeeze(1)
        s = torch.minimum(v[i, nz][None, :], v[:, nz]).sum(1)
        out[i] = 1 - s / (2 - s)
    return out.clamp_(min=0)


def _register_fake() -> None:
    @torch.library.register_fake("dmdl::jaccard_sparse")
    def _jaccard_sparse_fake(features: Tensor, rank: Tensor, k2: int):
        n = features.shape[0]
        nnz = torch.library.get_ctx().new_dynamic_size()
        return (features.new_empty((n + 1,), dtype=torch.int64), features.new_empty((nnz,), dtype=torch.int32),
                features.new_empty((nnz,)))


if _library.is_available():
    _register_fake()
