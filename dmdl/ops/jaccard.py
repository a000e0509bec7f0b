"""k-reciprocal Jaccard distance (Zhong et al., "Re-ranking Person Re-identification
with k-reciprocal Encoding", CVPR 2017) as the reference repositories compute it.

Every DMDL/MULT/PGM/ADCA/Cluster-Contrast/SpCL repository calls
``faiss_rerank.compute_jaccard_distance(features, k1, k2)`` before DBSCAN. This
module reproduces that function exactly (algorithm.md §A9):

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

import numbers
import warnings

import numpy as np
import torch
from torch import Tensor

from . import _library

__all__ = ["jaccard_distance", "jaccard_distance_reference", "knn", "to_scipy_csr"]

_PRECISIONS = ("fp32", "tf32", "bf16")
_BACKENDS = ("torch", "faiss")


def _validate(features: Tensor, k1: int, k2: int, k_name: str = "k1") -> None:
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor of shape [N, D], got {type(features).__name__}")
    if features.dim() != 2:
        raise ValueError(f"features must be a 2-D tensor of shape [N, D], got shape {tuple(features.shape)}")
    if features.dtype != torch.float32:
        raise ValueError(f"features must be float32 of shape [N, D], got dtype {features.dtype}")
    n, d = features.shape
    if n < 2:
        raise ValueError(f"features must have N >= 2 rows (shape [N, D]), got shape {tuple(features.shape)}")
    if d < 1:
        raise ValueError(f"features must have D >= 1 columns (shape [N, D]), got shape {tuple(features.shape)}")
    for name, k in ((k_name, k1), ("k2", k2)):
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(f"{name} must be an int, got {type(k).__name__}")
    if not 1 <= k1 <= n:
        raise ValueError(f"{k_name} must be in [1, N] = [1, {n}] for features of shape {tuple(features.shape)}, got {k1}")
    if k2 < 1:
        raise ValueError(f"k2 must be >= 1, got {k2}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features must be finite: found NaN or Inf values")


def _check_options(precision: str, margin: int | None, backend: str, device: torch.device) -> int:
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    if precision == "tf32" and device.type != "cuda":
        raise ValueError("precision='tf32' needs CUDA features (the CPU has no TF32 GEMM)")
    if backend not in _BACKENDS:
        raise ValueError(f"knn_backend must be one of {_BACKENDS}, got {backend!r}")
    if margin is None:
        margin = 32 if precision == "bf16" else 8
    if isinstance(margin, bool) or not isinstance(margin, numbers.Integral) or margin < 0:
        raise ValueError(f"margin must be an int >= 0, got {margin!r}")
    return int(margin)


def _load_for(features: Tensor):
    lib = _library.load()
    if features.is_cuda and not lib.cuda_compiled():
        raise RuntimeError(
            "features is on a CUDA device but dmdl._C was built without CUDA kernels; "
            "rebuild with CUDA_HOME set (or DMDL_FORCE_CUDA=1), or pass CPU features"
        )
    return lib


def _faiss_knn(x: Tensor, k: int, margin: int) -> Tensor:
    """Candidates from faiss IndexFlatL2 (CPU; GPU index when faiss has GPUs), made exact by knn_refine."""
    try:
        import faiss  # type: ignore
    except ImportError as exc:
        raise ImportError("knn_backend='faiss' needs faiss: pip install faiss-cpu (or dmdl[faiss])") from exc
    n, d = x.shape
    kc = min(n, k + margin)
    xn = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    index = faiss.IndexFlatL2(d)
    if x.is_cuda and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), x.device.index or 0, index)
    index.add(xn)
    dist, idx = index.search(xn, kc)
    sq = np.einsum("ij,ij->i", xn, xn).astype(np.float32)
    approx = torch.from_numpy(np.ascontiguousarray(dist - sq[:, None], dtype=np.float32))
    cand = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int32))
    x_cpu = x.detach().cpu().contiguous()
    rank, _ = torch.ops.dmdl.knn_refine(x_cpu, cand, approx, int(k), "faiss")
    return rank.to(x.device)


def _knn_int32(x: Tensor, k: int, precision: str, margin: int, backend: str) -> tuple[Tensor, Tensor | None]:
    if backend == "faiss":
        return _faiss_knn(x, k, margin), None
    return torch.ops.dmdl.knn(x, int(k), precision, int(margin))


def knn(features: Tensor, k: int, *, precision: str = "fp32", margin: int | None = None,
        knn_backend: str = "torch") -> Tensor:
    """Exact k nearest neighbours of every row by squared L2 distance, the row itself included.

    The order is ascending ``|x_i - x_j|^2`` evaluated exactly (double accumulation), ties broken
    by the smaller index: the ranking of faiss ``IndexFlatL2`` up to its fp32 rounding. The GEMM
    that proposes ``k + margin`` candidates per row may run in reduced precision; a rigorous error
    bound certifies each row and uncertified rows are redone, so every ``precision`` and backend
    returns the same lists (``csrc/include/dmdl/knn.h``).

    Args:
        features: ``[N, D]`` float32 on the CPU or a CUDA device, finite.
        k: neighbours per row, ``1 <= k <= N``.
        precision: candidate GEMM: ``"fp32"`` (default), ``"bf16"`` (fast on GPUs and CPUs with
            AMX/AVX512-BF16; slow on AVX2-only CPUs), ``"tf32"`` (CUDA).
        margin: extra candidates per row (default 8 for fp32/tf32, 32 for bf16).
        knn_backend: ``"torch"`` (our tiled kernel) or ``"faiss"`` (faiss ``IndexFlatL2``
            candidates, re-scored by the same certificate; needs ``faiss-cpu``).

    Returns:
        ``[N, k]`` int64 on the device of ``features``, nearest first.

    Raises:
        ValueError: wrong shape/dtype, non-finite values, ``k`` or options out of range.
        ImportError: ``dmdl._C`` not built, or faiss missing for ``knn_backend="faiss"``.

    Source: performance.md §1 (exactness with reduced-precision candidates).
    """
    _validate(features, k, 1, k_name="k")
    margin = _check_options(precision, margin, knn_backend, features.device)
    _load_for(features)
    rank, _ = _knn_int32(features.detach().contiguous(), k, precision, margin, knn_backend)
    return rank.long()


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
                     precision: str = "fp32", margin: int | None = None, knn_backend: str = "torch") -> Tensor:
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
        precision, margin, knn_backend: of the kNN, see :func:`knn`; the result does not depend
            on them.

    Returns:
        ``d[i, j]`` in [0, 1] on the device of ``features``; identical (to ~1e-6) to
        :func:`jaccard_distance_reference` and the reference repositories'
        ``compute_jaccard_distance`` with exact kNN.

    Raises:
        ValueError: wrong shape, dtype, non-finite values, ``k1``/``k2``/options out of range.
        ImportError: the compiled extension ``dmdl._C`` is not built (no fallback).
        RuntimeError: a CUDA tensor while the extension was built without CUDA.

    Source: algorithm.md §A9; reference ``utils/faiss_rerank.py``; performance.md §1.
    """
    _validate(features, k1, k2)
    if output not in ("sparse", "dense"):
        raise ValueError(f"output must be 'sparse' or 'dense', got {output!r}")
    margin = _check_options(precision, margin, knn_backend, features.device)
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
    @torch.library.register_fake("dmdl::knn")
    def _knn_fake(features: Tensor, k: int, precision: str, margin: int):
        torch._check(features.dim() == 2, lambda: "features must be 2-D [N, D]")
        torch._check(features.dtype == torch.float32, lambda: "features must be float32")
        n = features.shape[0]
        return features.new_empty((n, k), dtype=torch.int32), features.new_empty((2,), dtype=torch.int64)

    @torch.library.register_fake("dmdl::knn_refine")
    def _knn_refine_fake(features: Tensor, candidates: Tensor, approx: Tensor, k: int, precision: str):
        n = features.shape[0]
        return features.new_empty((n, k), dtype=torch.int32), features.new_empty((2,), dtype=torch.int64)

    @torch.library.register_fake("dmdl::jaccard_sparse")
    def _jaccard_sparse_fake(features: Tensor, rank: Tensor, k2: int):
        n = features.shape[0]
        nnz = torch.library.get_ctx().new_dynamic_size()
        return (features.new_empty((n + 1,), dtype=torch.int64), features.new_empty((nnz,), dtype=torch.int32),
                features.new_empty((nnz,)))


if _library.is_available():
    _register_fake()
