"""Exact k nearest neighbours by squared L2 distance (the kNN step of the k-reciprocal Jaccard
distance, docs/dmdl.md#A9; docs/decisions.md#exact-knn), the op family ``dmdl::knn`` / ``dmdl::knn_refine``.

Layers: this module (public :func:`knn`, input checks, the options and the faiss backend);
``csrc/include/dmdl/knn.h`` (per-row building blocks and the exactness certificate, host and
device); ``csrc/include/dmdl/knn_host.h`` (host-side checks); ``csrc/cpu/knn_cpu.cpp`` and
``csrc/cuda/knn_cuda.cu`` (the kernels); ``tests/test_knn.py``.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from dmdl.hardware import native_bf16_cpu

from . import _library

__all__ = ["auto_precision", "knn", "knn_reference"]

_PRECISIONS = ("auto", "fp32", "tf32", "bf16")
_BACKENDS = ("torch", "faiss")
# Default extra candidates per row. bf16: its certificate's bound (~0.01 on the squared distance
# of unit rows) spans ~30-40 neighbours past the k-th on clustered D = 2048 features (bench_knn.py):
# margin 40 leaves 3 rows in 12k to a second pass (32: 56, 24: 584, 48: 0), while each extra
# candidate costs running top-list work on every row (the re-scoring stops early, so it costs
# little there).
_MARGINS = {"fp32": 8, "tf32": 8, "bf16": 40}


def auto_precision(device: torch.device | str = "cpu") -> str:
    """The candidate precision that ``precision="auto"`` picks for features on ``device``.

    Every precision returns the same neighbour lists (the certificate redoes what it cannot
    prove); ``"auto"`` only picks the fastest, by a fixed rule on the hardware:

    * CPU: ``"bf16"`` when the CPU has bfloat16 dot-product instructions (AVX512-BF16, e.g. AMD
      Zen 4/5, Intel Cooper Lake; or AMX-BF16, Intel Sapphire Rapids and later) and oneDNN is
      enabled (``torch.backends.mkldnn``); ``"fp32"`` otherwise: on AVX2-only and AVX-512
      CPUs without BF16, a bfloat16 ``torch.mm`` is emulated and slower than fp32.
      A bf16 ``torch.mm`` ran at ~4x the fp32 rate on an AMD Zen 5 (AVX512-BF16) and ~2.5x on
      an AMX Xeon (2 threads), and the bf16 certificate holds for > 99.9% of the rows of
      clustered D = 2048 features (bench/bench_knn.py).
    * CUDA: ``"bf16"`` on compute capability >= 8.0 (bf16 tensor cores, A100/H100), else
      ``"fp32"``.

    Args:
        device: the device of the features (``torch.device`` or string).

    Returns:
        ``"bf16"`` or ``"fp32"``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return "bf16" if torch.cuda.get_device_capability(index) >= (8, 0) else "fp32"
    if device.type == "cpu":
        return "bf16" if native_bf16_cpu() else "fp32"
    return "fp32"


def _validate_features(features: Tensor) -> None:
    """``features`` is a 2-D float32 tensor with N >= 2 rows and D >= 1 columns."""
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


def _validate_int(name: str, k) -> None:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {type(k).__name__}")


def _validate_k_range(name: str, k: int, features: Tensor) -> None:
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"{name} must be in [1, N] = [1, {n}] for features of shape {tuple(features.shape)}, got {k}")


def _validate_finite(features: Tensor) -> None:
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features must be finite: found NaN or Inf values")


def _check_options(precision: str, margin: int | None, backend: str, device: torch.device) -> tuple[str, int]:
    """The concrete precision ("auto" resolved) and margin (default per precision)."""
    if not isinstance(precision, str) or precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    if precision == "tf32" and device.type != "cuda":
        raise ValueError("precision='tf32' needs CUDA features (the CPU has no TF32 GEMM)")
    if backend not in _BACKENDS:
        raise ValueError(f"knn_backend must be one of {_BACKENDS}, got {backend!r}")
    if precision == "auto":
        precision = auto_precision(device)
    if margin is None:  # faiss proposes fp32 candidates whatever the precision
        margin = _MARGINS["fp32" if backend == "faiss" else precision]
    if isinstance(margin, bool) or not isinstance(margin, numbers.Integral) or margin < 0:
        raise ValueError(f"margin must be an int >= 0, got {margin!r}")
    return precision, int(margin)


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


def knn(features: Tensor, k: int, *, precision: str = "auto", margin: int | None = None,
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
        precision: candidate GEMM: ``"auto"`` (default: the fastest on this hardware, see
            :func:`auto_precision`), ``"fp32"``, ``"bf16"`` (fast on GPUs and CPUs with
            AMX/AVX512-BF16; emulated and slow on AVX2-only CPUs), ``"tf32"`` (CUDA). The lists
            do not depend on it.
        margin: extra candidates per row (default 8 for fp32/tf32, 40 for bf16).
        knn_backend: ``"torch"`` (our tiled kernel) or ``"faiss"`` (faiss ``IndexFlatL2``
            candidates, re-scored by the same certificate; needs ``faiss-cpu``).

    Returns:
        ``[N, k]`` int64 on the device of ``features``, nearest first.

    Raises:
        ValueError: wrong shape/dtype, non-finite values, ``k`` or options out of range
            (e.g. an unknown ``precision``).
        ImportError: ``dmdl._C`` not built, or faiss missing for ``knn_backend="faiss"``.

    Source: docs/decisions.md#exact-knn (exactness with reduced-precision candidates); docs/benchmarks.md#jaccard.
    """
    _validate_features(features)
    _validate_int("k", k)
    _validate_k_range("k", k, features)
    _validate_finite(features)
    precision, margin = _check_options(precision, margin, knn_backend, features.device)
    _load_for(features)
    rank, _ = _knn_int32(features.detach().contiguous(), k, precision, margin, knn_backend)
    return rank.long()


def knn_reference(features: Tensor, k: int, block: int = 1024) -> Tensor:
    """Pure-PyTorch reference of :func:`knn`: the canonical values ``|x_j|^2 - 2 x_i.x_j`` in
    float64 (products of float32 values are exact in float64), sorted stably so that ties go to
    the smaller index. Dense ``[block, N]`` float64 blocks; for tests and benchmarks.

    Args:
        features: ``[N, D]`` float32, finite (any device).
        k: neighbours per row, ``1 <= k <= N``.
        block: rows per block.

    Returns:
        ``[N, k]`` int64 on the device of ``features``, nearest first.

    Raises:
        ValueError: as :func:`knn`.
    """
    _validate_features(features)
    _validate_int("k", k)
    _validate_k_range("k", k, features)
    _validate_finite(features)
    x = features.detach().double()
    sq = (x * x).sum(1)
    out = []
    for r0 in range(0, x.shape[0], block):
        c = sq[None, :] - 2.0 * (x[r0 : r0 + block] @ x.t())
        out.append(torch.sort(c, dim=1, stable=True).indices[:, :k])
    return torch.cat(out)


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


if _library.is_available():
    _register_fake()
