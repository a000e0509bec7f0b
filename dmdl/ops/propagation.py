"""Label-propagation step of MULT's label transfer (MULT, arXiv 2402.00672; docs/mult.md#B3).

MULT propagates soft labels over homogeneous affinities (row-normalised ``1 - Jaccard``) and
heterogeneous ones (a row-normalised transport plan or k-NN affinity) with updates of one form::

    Y_out = a * A @ X + b * Z        e.g. Y_I <- (1 - alpha) A_IR Y_RI + alpha Y_I^0,
                                          Y_I <- 0.5 A_I Y_I + 0.5 Y_I

with ``A`` a row-normalised ``[N_out, N_in]`` affinity, ``X`` ``[N_in, K]`` and ``Z`` ``[N_out, K]``
dense float32 label matrices (docs/mult.md#B3.4). The reference code builds ``A`` dense;
``1 - Jaccard`` is non-zero on ~2% of the pairs (docs/benchmarks.md#propagation), so here ``A`` is normally a
``torch.sparse_csr`` tensor and the product runs in the compiled op ``torch.ops.dmdl.propagate``
(csrc/cpu/propagation_cpu.cpp, csrc/cuda/propagation_cuda.cu; per-row code in
csrc/include/dmdl/propagation.h): rows in parallel, each output entry accumulated in float32 in
CSR order. A dense ``A`` goes to ``torch.addmm`` (the library GEMM).

* :func:`propagate` — the step, sparse (compiled op) or dense (``torch.addmm``).
* :func:`propagate_reference` — the formula in plain PyTorch, dense, float64 inside.
* :func:`row_normalize` — each row of a non-negative affinity divided by its sum, CSR or dense.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor

from . import _library

__all__ = ["propagate", "propagate_reference", "row_normalize"]


# ---------------------------------------------------------------------------------------- checks
def _check_scalar(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return f


def _check_affinity(affinity) -> None:
    if not isinstance(affinity, Tensor):
        raise TypeError(f"affinity must be a torch.Tensor (sparse CSR or dense) of shape [N_out, N_in], "
                        f"got {type(affinity).__name__}")
    if affinity.layout not in (torch.sparse_csr, torch.strided):
        raise TypeError(f"affinity must be a torch.sparse_csr or a dense (strided) tensor, got layout "
                        f"{affinity.layout} (convert with .to_sparse_csr())")
    if affinity.dim() != 2:
        raise ValueError(f"affinity must be 2-D [N_out, N_in], got shape {tuple(affinity.shape)}")


def _check_args(affinity, x, z, a, b) -> tuple[float, float]:
    _check_affinity(affinity)
    for name, t in (("x", x), ("z", z)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    n_out, n_in = affinity.shape
    if affinity.dtype != torch.float32:
        raise TypeError(f"affinity must be float32, got dtype {affinity.dtype}")
    if x.dtype != torch.float32:
        raise TypeError(f"x must be float32 of shape [N_in, K], got dtype {x.dtype}")
    if z.dtype != torch.float32:
        raise TypeError(f"z must be float32 of shape [N_out, K], got dtype {z.dtype}")
    if x.dim() != 2 or x.shape[0] != n_in:
        raise ValueError(f"x must be 2-D [N_in, K] with the N_in = {n_in} columns of affinity "
                         f"{tuple(affinity.shape)}, got shape {tuple(x.shape)}")
    if z.dim() != 2 or z.shape != (n_out, x.shape[1]):
        raise ValueError(f"z must have shape [N_out, K] = [{n_out}, {x.shape[1]}] (the rows of affinity, "
                         f"the columns of x), got shape {tuple(z.shape)}")
    for name, t in (("x", x), ("z", z)):
        if t.device != affinity.device:
            raise ValueError(f"{name} must be on the device of affinity ({affinity.device}), got {t.device}")
    return _check_scalar("a", a), _check_scalar("b", b)


# ------------------------------------------------------------------------------------- public ops
def propagate(affinity: Tensor, x: Tensor, z: Tensor, a: float, b: float) -> Tensor:
    """One label-propagation step: ``a * affinity @ x + b * z``.

    ``out[i, :] = a * sum_j affinity[i, j] * x[j, :] + b * z[i, :]``.

    * ``affinity`` a ``torch.sparse_csr`` tensor: the compiled op ``torch.ops.dmdl.propagate``.
      Each output entry is accumulated in float32 over the row's stored entries in CSR order
      (column order as stored), every product rounded before it is added; the CPU and CUDA kernels
      return the same bits. The column indices are passed as int32 and the row pointers as int64
      (converted when needed; no copy when they already are). Explicitly stored zeros are used
      like any entry. ``z`` is always read: ``b = 0`` with a NaN in ``z`` gives NaN.
    * ``affinity`` dense: ``torch.addmm(z, affinity, x, beta=b, alpha=a)`` (the library GEMM,
      which ignores ``z`` when ``b = 0``).

    Not differentiable: the inputs are used detached (MULT propagates labels without gradients).

    Args:
        affinity: ``[N_out, N_in]`` float32, ``torch.sparse_csr`` (2-D, not batched) or dense,
            normally row-normalised (:func:`row_normalize`). CSR column indices must lie in
            ``[0, N_in)``; ``N_out``, ``N_in`` may be 0.
        x: ``[N_in, K]`` float32, dense (made contiguous if it is not), ``K >= 0``.
        z: ``[N_out, K]`` float32, dense.
        a, b: finite real numbers (used as float32 by the compiled op).

    Returns:
        A new ``[N_out, K]`` float32 tensor on the device of the inputs.

    Raises:
        TypeError: a non-tensor, a layout other than CSR/dense (``affinity``) or dense (``x``,
            ``z``), a dtype other than float32, ``a``/``b`` not real numbers.
        ValueError: shapes that do not chain (``affinity`` not 2-D, ``x`` rows != ``affinity``
            columns, ``z`` not ``[N_out, K]``), tensors on different devices, non-finite
            ``a``/``b``.
        RuntimeError: from the compiled op, naming the argument: a CSR structure that is not
            valid (on the CPU: ``crow`` not starting at 0, decreasing, not ending at nnz, a
            column outside ``[0, N_in)``; on CUDA these are not checked, to avoid a device
            synchronisation: such rows come out as NaN, see csrc/cuda/propagation_cuda.cu); a
            CUDA tensor while the extension was built without CUDA.
        ImportError: sparse ``affinity`` and the extension ``dmdl._C`` is not built.

    Source: docs/mult.md#B3.4 (MULT label transfer, ``cross_association.py::MULT``);
    MULT, arXiv 2402.00672; docs/benchmarks.md#propagation.
    """
    a, b = _check_args(affinity, x, z, a, b)
    x, z = x.detach(), z.detach()
    if affinity.layout == torch.strided:
        return torch.addmm(z, affinity.detach(), x, beta=b, alpha=a)
    lib = _library.load()
    if x.is_cuda and not lib.cuda_compiled():
        raise RuntimeError("affinity is on a CUDA device but dmdl._C was built without CUDA kernels; "
                           "rebuild with CUDA_HOME set (or DMDL_FORCE_CUDA=1), or pass CPU tensors")
    crow = affinity.crow_indices().detach().to(torch.int64)
    col = affinity.col_indices().detach().to(torch.int32)
    val = affinity.values().detach()
    return torch.ops.dmdl.propagate(crow, col, val, x.contiguous(), z, a, b)


def propagate_reference(affinity: Tensor, x: Tensor, z: Tensor, a: float, b: float) -> Tensor:
    """Pure-PyTorch reference of :func:`propagate`, written from the formula: ``a * A @ x + b * z``
    with ``A = affinity.to_dense()``, computed in float64 and returned as float32. Dense
    ``[N_out, N_in]`` memory: for tests and small N.

    Args/Returns/Raises: as :func:`propagate` (no extension needed).
    """
    a, b = _check_args(affinity, x, z, a, b)
    dense = affinity.detach().to_dense() if affinity.layout == torch.sparse_csr else affinity.detach()
    out = a * (dense.double() @ x.detach().double()) + b * z.detach().double()
    return out.float()


def row_normalize(affinity: Tensor) -> Tensor:
    """Each row of a non-negative affinity divided by its sum (MULT's ``row-normalize``,
    docs/mult.md#B3.3), in the layout it came in.

    A row that sums to 0 (no stored entries, or only zeros) stays 0. The sums are taken in
    float64 and the quotients rounded to the affinity's dtype. For a ``torch.sparse_csr`` input
    only the stored values are touched (the row of each value comes from ``crow_indices``; nothing
    is densified) and the result shares its ``crow_indices`` / ``col_indices`` with the input.

    Args:
        affinity: ``[N, M]`` floating tensor, ``torch.sparse_csr`` (2-D) or dense, finite values
            >= 0, on any device.

    Returns:
        A new ``[N, M]`` tensor of the same layout, dtype and device.

    Raises:
        TypeError: not a tensor, another layout, or a non-floating dtype.
        ValueError: not 2-D, or a negative, NaN or infinite value.

    Source: docs/mult.md#B3.3 (MULT, arXiv 2402.00672).
    """
    _check_affinity(affinity)
    if not affinity.is_floating_point():
        raise TypeError(f"affinity must be a floating tensor, got dtype {affinity.dtype}")
    affinity = affinity.detach()
    n = affinity.shape[0]
    if affinity.layout == torch.strided:
        values = affinity
    else:
        values = affinity.values()
    if values.numel() and not bool((torch.isfinite(values) & (values >= 0)).all()):
        raise ValueError("affinity must be finite and non-negative: found negative, NaN or Inf values")
    if affinity.layout == torch.strided:
        sums = affinity.sum(dim=1, dtype=torch.float64, keepdim=True)
        return (affinity.double() / torch.where(sums > 0, sums, torch.ones_like(sums))).to(affinity.dtype)
    crow = affinity.crow_indices()
    rows = torch.repeat_interleave(torch.arange(n, device=crow.device), crow.diff().long(),
                                   output_size=values.numel())
    sums = torch.zeros(n, dtype=torch.float64, device=values.device).index_add_(0, rows, values.double())
    sums = torch.where(sums > 0, sums, torch.ones_like(sums))
    new_values = (values.double() / sums[rows]).to(values.dtype)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the layout is all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, affinity.col_indices(), new_values, size=tuple(affinity.shape),
                                       check_invariants=False)


def _register_fake() -> None:
    @torch.library.register_fake("dmdl::propagate")
    def _propagate_fake(crow: Tensor, col: Tensor, val: Tensor, x: Tensor, z: Tensor, a: float, b: float):
        torch._check(x.dim() == 2, lambda: "x must be 2-D [N_in, K]")
        torch._check(z.dim() == 2, lambda: "z must be 2-D [N_out, K]")
        torch._check(x.dtype == torch.float32, lambda: "x must be float32")
        torch._check(z.shape[1] == x.shape[1], lambda: "z and x must have the same K")
        return x.new_empty((z.shape[0], x.shape[1]))


if _library.is_available():
    _register_fake()
