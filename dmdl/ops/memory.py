"""Cluster memory bank: contrastive loss against cluster centroids + momentum update.

Source: Cluster-Contrast (Dai et al., ACCV 2022) as used by ADCA, PGM and DMDL
(docs/dmdl.md#A4.1, #A4.4, #A5.5, #A8; docs/benchmarks.md#memory-step).

The op family used by every memory of the trainers:

* :func:`memory_loss` — ``mean_i CE(normalize(x_i) @ M^T / T, target_i)`` with hard labels
  or soft target rows; the gradient flows to the features only.
* :func:`momentum_update_` — the reference's sequential momentum update, in place:
  ``m_r <- normalize(mu m_r + (1 - mu) normalize(x))`` per sample in batch order; optional
  label -> row table ``row_ids``, per-sample momentum, and the "hard" variant.

Three implementations compute them: the pure-PyTorch references
(:func:`memory_loss_reference`, :func:`momentum_update_reference`: the per-sample loop of the
reference repositories), the C++ CPU kernels ``torch.ops.dmdl.memory_loss_forward`` /
``torch.ops.dmdl.momentum_update_`` (csrc/cpu/memory_cpu.cpp; GEMMs in ATen, the rest fused;
update parallel across rows, each row's samples in batch order), and Triton kernels for CUDA
tensors (``dmdl.kernels.memory``, registered here as the ops' CUDA kernels). CPU tensors run the
C++ op and CUDA tensors the Triton kernels; there is no fallback between them.

Update order (the reference leaves it to autograd's backward order; we define it):
:func:`memory_loss` reads the memory only while it is called (the feature gradient is computed
then, at forward time), so the loss and its gradient always use the memory as it was when the
loss was computed, whatever updates happen before ``backward()``. The trainers compute every
loss of a step first and call :func:`momentum_update_` after ``loss.backward()``; when one
memory is updated more than once in a step, the calls run in the order documented in
:mod:`dmdl.memories`, and each call applies its samples in batch order.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _library

__all__ = [
    "memory_loss",
    "momentum_update_",
    "memory_loss_reference",
    "momentum_update_reference",
    "cluster_centroids",
    "ClusterMemory",
]

_FLOATS = (torch.float32, torch.float64)
_NORM_EPS = 1e-12  # F.normalize's default


# ---------------------------------------------------------------------------------------- checks
def _is_int_dtype(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _check_features_memory(features: Tensor, memory: Tensor) -> None:
    for name, t in (("features", features), ("memory", memory)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if memory.dim() != 2 or memory.shape[0] < 1:
        raise ValueError(f"memory must be a 2-D tensor of shape [K >= 1, D], got shape {tuple(memory.shape)}")
    if memory.dtype not in _FLOATS:
        raise ValueError(f"memory must be float32 or float64, got dtype {memory.dtype}")
    if features.dim() != 2 or features.shape[1] != memory.shape[1]:
        raise ValueError(f"features must be a 2-D tensor of shape [B, D] with the D = {memory.shape[1]} of memory "
                         f"{tuple(memory.shape)}, got shape {tuple(features.shape)}")
    if features.dtype != memory.dtype:
        raise ValueError(f"features must have the dtype of memory ({memory.dtype}), got dtype {features.dtype}")
    if features.device != memory.device:
        raise ValueError(f"features and memory must be on one device, got features on {features.device} "
                         f"and memory on {memory.device}")
    if memory.is_cuda and memory.dtype != torch.float32:
        raise ValueError(f"on CUDA the memory kernels (Triton) take float32 tensors, got {memory.dtype}")
    if memory.device.type not in ("cpu", "cuda"):
        raise ValueError(f"memory must be on the CPU or a CUDA device, got {memory.device}")


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a real number > 0, got {temperature!r}")
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def _check_targets(targets: Tensor, features: Tensor, num_rows: int) -> Tensor:
    """int labels [B] in [0, K) -> int64; or soft targets [B, K] of the features' dtype."""
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    b = features.shape[0]
    if targets.device != features.device:
        raise ValueError(f"targets must be on the device of features ({features.device}), got {targets.device}")
    if _is_int_dtype(targets):
        if targets.dim() != 1 or targets.shape[0] != b:
            raise ValueError(f"hard targets must be integer labels of shape [B] = [{b}], "
                             f"got shape {tuple(targets.shape)}")
        targets = targets.to(torch.int64)
        if b and not torch.compiler.is_compiling():  # value check (a host sync); the C++ op checks too
            lo, hi = torch.aminmax(targets)
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= num_rows:
                raise ValueError(f"targets must lie in [0, {num_rows}) (the rows of memory), got range [{lo}, {hi}]")
        return targets
    if targets.is_floating_point():
        if targets.dim() != 2 or targets.shape != (b, num_rows):
            raise ValueError(f"soft targets must have shape [B, K] = [{b}, {num_rows}], got shape "
                             f"{tuple(targets.shape)}")
        if targets.dtype != features.dtype:
            raise ValueError(f"soft targets must have the dtype of features ({features.dtype}), got {targets.dtype}")
        return targets.detach()
    raise ValueError(f"targets must be integer labels [B] or floating soft targets [B, K], got dtype {targets.dtype}")


def _check_update_args(memory: Tensor, features: Tensor, labels: Tensor, momentum, row_ids: Tensor | None,
                       name: str = "labels") -> tuple[Tensor, Tensor, Tensor | None]:
    """Validates momentum_update_'s arguments; returns (labels int64, momentum tensor, row_ids int64)."""
    _check_features_memory(features, memory)
    b, k = features.shape[0], memory.shape[0]
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != b or not _is_int_dtype(labels):
        got = f"shape {tuple(labels.shape)} and dtype {labels.dtype}" if isinstance(labels, Tensor) else type(labels)
        raise ValueError(f"{name} must be a 1-D integer (int64) tensor of shape [B] = [{b}], got {got}")
    if labels.device != memory.device:
        raise ValueError(f"{name} must be on the device of memory ({memory.device}), got {labels.device}")
    labels = labels.to(torch.int64)
    if row_ids is not None:
        if (not isinstance(row_ids, Tensor) or row_ids.dim() != 1 or row_ids.shape[0] != k
                or not _is_int_dtype(row_ids)):
            got = (f"shape {tuple(row_ids.shape)} and dtype {row_ids.dtype}" if isinstance(row_ids, Tensor)
                   else type(row_ids))
            raise ValueError(f"row_ids must be a 1-D integer (int64) tensor of shape [K] = [{k}], got {got}")
        if row_ids.device != memory.device:
            raise ValueError(f"row_ids must be on the device of memory ({memory.device}), got {row_ids.device}")
        row_ids = row_ids.to(torch.int64)
        if not torch.compiler.is_compiling():  # value checks (host syncs); the C++ op checks too
            if int(row_ids.min()) < 0:
                raise ValueError(f"row_ids must be >= 0, got min {int(row_ids.min())}")
            if torch.unique(row_ids).numel() != k:
                raise ValueError("row_ids must be distinct: one row per label")
            if b and int(labels.min()) < 0:
                raise ValueError(f"{name} must be >= 0 (remove outliers labelled -1), got min {int(labels.min())}")
    elif b and not torch.compiler.is_compiling():
        lo, hi = torch.aminmax(labels)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= k:
            raise ValueError(f"{name} must lie in [0, {k}) (the rows of memory; pass row_ids for a memory that "
                             f"covers only some labels), got range [{lo}, {hi}]")
    if isinstance(momentum, Tensor):
        if not momentum.is_floating_point() or momentum.shape not in ((), (b,)):
            raise ValueError(f"momentum must be a float or a floating tensor of shape [B] = [{b}], got shape "
                             f"{tuple(momentum.shape)} and dtype {momentum.dtype}")
        if momentum.device != memory.device:
            raise ValueError(f"momentum must be on the device of memory ({memory.device}), got {momentum.device}")
        mu = momentum.detach().to(torch.float64 if memory.device.type == "cpu" else torch.float32)
    elif isinstance(momentum, numbers.Real) and not isinstance(momentum, bool) and math.isfinite(float(momentum)):
        mu = torch.tensor(float(momentum), dtype=torch.float64 if memory.device.type == "cpu" else torch.float32,
                          device=memory.device)
    else:
        raise ValueError(f"momentum must be a finite float or a floating tensor of shape [B], got {momentum!r}")
    return labels, mu, row_ids


# ------------------------------------------------------------------------------------- public ops
def memory_loss(features: Tensor, memory: Tensor, targets: Tensor, temperature: float = 0.05) -> Tensor:
    """Contrastive loss of features against a cluster memory (ClusterNCE; soft-target CE).

    ``loss = mean_i( -sum_k t_ik log softmax_k(normalize(x_i) @ memory^T / temperature) )``,
    with ``normalize(x) = x / max(||x||, 1e-12)`` (``F.normalize``) and ``t_i`` the one-hot of a
    hard label or a soft target row. Equal to ``F.cross_entropy(F.normalize(features, dim=1)
    @ memory.T / temperature, targets)`` (mean over the batch; soft rows are NOT renormalised:
    rows summing to 1 are expected, as ``dmdl.losses.soft_cross_entropy`` assumes).

    The gradient flows to ``features`` only (the memory is a momentum-updated buffer). It is
    computed when this function is called (one fused call: logits GEMM, softmax-CE, feature
    gradient GEMM), so later in-place updates of ``memory`` do not change it.

    Args:
        features: [B, D] float32 or float64 (B >= 1), on the CPU or a CUDA device (CUDA:
            float32 only). Normalised inside.
        memory: [K, D] same dtype and device (rows normally unit-norm; used as given).
        targets: integer labels [B] in [0, K) (converted to int64), or floating soft targets
            [B, K] of the features' dtype (detached), same device.
        temperature: > 0 (0.05 in DMDL and MULT).

    Returns:
        A 0-dim tensor of the features' dtype, on their device.

    Raises:
        ValueError: wrong shapes, dtypes (features/memory not float32/float64 or not equal,
            soft targets of another dtype), devices (tensors on different devices), a label
            outside [0, K), or a temperature not > 0.
        ImportError: the compiled extension ``dmdl._C`` is not built.
        RuntimeError: CUDA tensors without Triton installed.

    Source: Cluster-Contrast (ACCV 2022) ClusterMemory; docs/dmdl.md#A4.4 (soft targets,
    stage 1), docs/dmdl.md#A5.5 (hard labels, stage 2), docs/dmdl.md#A8.
    """
    _check_features_memory(features, memory)
    if features.shape[0] < 1:
        raise ValueError(f"features must have at least one row, got shape {tuple(features.shape)}")
    t = _check_temperature(temperature)
    targets = _check_targets(targets, features, memory.shape[0])
    _library.load()
    loss, _ = torch.ops.dmdl.memory_loss_forward(features, memory.detach(), targets, t)
    return loss


@torch.no_grad()
def momentum_update_(memory: Tensor, features: Tensor, labels: Tensor, momentum: float | Tensor,
                     row_ids: Tensor | None = None, hard: bool = False) -> Tensor:
    """Sequential momentum update of a cluster memory, in place (the reference's semantics).

    For each sample i in batch order, with ``r`` the row holding label ``labels[i]`` and
    ``x̂_i = features[i] / max(||features[i]||, 1e-12)``::

        m_r <- v / max(||v||, 1e-12),   v = mu_i * m_r + (1 - mu_i) * x̂_i

    ``mu_i`` is the weight of the OLD row; ``mu_i >= 1`` leaves the row unchanged (the
    reference skips such samples). Rows that several samples share are updated one sample
    after the other, in batch order (later samples weigh more). The kernels run distinct rows
    in parallel; the result does not depend on it.

    Args:
        memory: [K, D] float32/float64 (CUDA: float32), updated in place and returned.
        features: [B, D] same dtype and device (normalised here; never differentiated).
        labels: [B] integer labels, same device. Without ``row_ids``: the row itself, in
            [0, K). With ``row_ids``: label ids >= 0; samples whose label no row holds are skipped.
        momentum: a float (every sample) or a floating tensor [B] (per sample, e.g. DMDL's
            adaptive ``eta_x = 0.2 / max(q_x, 0.2)`` of the shared memory, docs/dmdl.md#A5.5,
            paper Eqs. 12-13), same device. Values are not range-checked (no device sync).
        row_ids: None, or [K] integer: the label id each row holds (distinct, >= 0), for
            memories that cover only some labels (stage-2 modality memories, docs/dmdl.md#A5.3).
        hard: Cluster-Contrast's "hard" mode: per row, ONE update with the sample of LOWEST
            cosine similarity between x̂ and the current row (the first one in batch order on
            ties, as ``np.argmin``), with that sample's momentum. Distinct rows are independent,
            so the order in which labels are processed (ascending here; first appearance in
            the reference) does not matter.

    Returns:
        ``memory``.

    Raises:
        ValueError: wrong shapes, dtypes or devices; labels out of range (or negative with
            ``row_ids``); ``row_ids`` not distinct or negative; a non-finite float momentum.
        ImportError: the compiled extension ``dmdl._C`` is not built.
        RuntimeError: CUDA tensors without Triton installed.

    Source: Cluster-Contrast (ACCV 2022) ``CM.backward`` / ``CM_Hard.backward``;
    docs/dmdl.md#A4.1, #A5.5, #A8, docs/mult.md#B4.
    """
    labels, mu, row_ids = _check_update_args(memory, features, labels, momentum, row_ids)
    _library.load()
    buf = memory if memory.is_contiguous() else memory.contiguous()
    torch.ops.dmdl.momentum_update_(buf, features.detach(), labels, mu, row_ids, bool(hard))
    if buf is not memory:
        memory.copy_(buf)
    return memory


# ------------------------------------------------------------------------------------ references
def memory_loss_reference(features: Tensor, memory: Tensor, targets: Tensor, temperature: float = 0.05) -> Tensor:
    """Pure-PyTorch :func:`memory_loss`: ``F.cross_entropy(F.normalize(x) @ M.detach().T / T, targets)``.

    Autograd computes the gradient (to ``features`` only). Same arguments and errors.
    """
    _check_features_memory(features, memory)
    t = _check_temperature(temperature)
    targets = _check_targets(targets, features, memory.shape[0])
    return F.cross_entropy(F.normalize(features, dim=1) @ memory.detach().t() / t, targets)


def momentum_update_reference(memory: Tensor, features: Tensor, targets: Tensor, momentum: float | Tensor,
                              row_ids: Tensor | None = None, hard: bool = False) -> Tensor:
    """Pure-PyTorch :func:`momentum_update_`: a Python loop over the batch, one sample at a time,
    as the reference repositories run it (Cluster-Contrast ``CM.backward``; ``CM_Hard.backward``
    for ``hard``).

    For i = 0..B-1: ``m[r_i] <- normalize(mu_i * m[r_i] + (1 - mu_i) * x_i)`` where x_i is
    ``features[i]`` L2-normalised (docs/dmdl.md#A4.1), ``r_i`` the row of ``targets[i]`` and
    ``mu_i`` the momentum (one float for every sample, or a (B,) tensor: DMDL's adaptive
    ``eta_x = 0.2 / max(q_x, 0.2)`` of the shared memory, docs/dmdl.md#A5.5, paper Eqs. 12-13;
    ``mu_i >= 1`` leaves the row unchanged).

    Args:
        memory: (K, D) float tensor, updated in place and returned.
        features: (B, D) features (cast to the memory's dtype, normalised here; no gradient flows).
        targets: (B,) int64: rows in [0, K), or with ``row_ids`` label ids (samples whose
            label no row holds are skipped).
        momentum: weight of the old memory row, a float or a (B,) tensor.
        row_ids: None or (K,) int64, the label each row holds.
        hard: one update per label with its least similar sample (labels in ascending order).

    Raises:
        ValueError: on shape mismatch or out-of-range targets.
    """
    _check_ref_update_args(memory, features, targets, row_ids)
    if isinstance(momentum, Tensor):
        if momentum.shape != targets.shape:
            raise ValueError(f"momentum must be a float or a (B,) tensor, got shape {tuple(momentum.shape)}")
        mus = [float(v) for v in momentum.detach().cpu()]
    else:
        mus = [float(momentum)] * targets.shape[0]
    with torch.no_grad():
        x = F.normalize(features.detach().to(memory.dtype), dim=1)
        ys = targets.tolist()  # one device-to-host copy, not one sync per sample
        if row_ids is not None:
            table = {int(v): r for r, v in enumerate(row_ids.tolist())}
            ys = [table.get(y, -1) for y in ys]
        if hard:
            groups: dict[int, list[int]] = {}
            for i, y in enumerate(ys):
                if y >= 0:
                    groups.setdefault(y, []).append(i)
            for y in sorted(groups):
                members = groups[y]
                sims = [float(x[i] @ memory[y]) for i in members]
                i = members[min(range(len(sims)), key=sims.__getitem__)]  # first minimum, as np.argmin
                if mus[i] >= 1.0:
                    continue
                row = mus[i] * memory[y] + (1.0 - mus[i]) * x[i]
                memory[y] = row / row.norm().clamp_min(_NORM_EPS)
            return memory
        for i in range(x.shape[0]):
            y = ys[i]
            mu = mus[i]
            if y < 0 or mu >= 1.0:
                continue
            row = mu * memory[y] + (1.0 - mu) * x[i]
            memory[y] = row / row.norm().clamp_min(_NORM_EPS)
    return memory


def _check_ref_update_args(memory: Tensor, features: Tensor, targets: Tensor, row_ids: Tensor | None = None) -> None:
    if memory.dim() != 2 or features.dim() != 2 or features.shape[1] != memory.shape[1]:
        raise ValueError(
            f"memory must be (K, D) and features (B, D) with the same D; got {tuple(memory.shape)} "
            f"and {tuple(features.shape)}"
        )
    if targets.dim() != 1 or targets.shape[0] != features.shape[0]:
        raise ValueError(f"targets must be (B,) with B = {features.shape[0]}; got {tuple(targets.shape)}")
    if row_ids is not None:
        if row_ids.shape != (memory.shape[0],) or torch.unique(row_ids).numel() != memory.shape[0]:
            raise ValueError(f"row_ids must be (K,) = ({memory.shape[0]},) distinct label ids")
        if targets.numel() and int(targets.min()) < 0:
            raise ValueError("targets must be >= 0")
        return
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= memory.shape[0]):
        raise ValueError(f"targets must lie in [0, {memory.shape[0]}); "
                         f"got [{int(targets.min())}, {int(targets.max())}]")


def cluster_centroids(features: Tensor, labels: Tensor, num_clusters: int | None = None,
                      normalize: bool = True) -> Tensor:
    """L2-normalised (``normalize=False``: raw) mean feature of every cluster.

    Args:
        features: (N, D) float features.
        labels: (N,) int64 cluster ids; -1 (DBSCAN outlier) rows are ignored.
        num_clusters: K; defaults to ``labels.max() + 1``.
        normalize: L2-normalise the means (memory initialisation) or not (MULT's centroids).

    Returns:
        (K, D) float tensor (unit rows unless ``normalize`` is False), on ``features.device``.

    Raises:
        ValueError: when a cluster id in [0, K) has no member, or shapes mismatch.
    """
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features must be (N, D) and labels (N,); got {tuple(features.shape)}, {tuple(labels.shape)}")
    labels = labels.to(features.device)
    keep = labels >= 0
    k = int(labels.max()) + 1 if num_clusters is None else num_clusters
    sums = torch.zeros(k, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels[keep], features[keep])
    counts = torch.bincount(labels[keep], minlength=k)
    if (counts == 0).any():
        empty = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"clusters {empty} have no member; labels must be contiguous 0..K-1")
    means = sums / counts.unsqueeze(1).to(features.dtype)
    return F.normalize(means, dim=1) if normalize else means


class ClusterMemory(nn.Module):
    """Memory bank of K cluster centroids with a contrastive (ClusterNCE) loss.

    ``loss = CE(normalize(x) @ M.T / temperature, y)`` (docs/dmdl.md#A4.4, #C), computed by
    :func:`memory_loss` (hard labels or soft target rows). The memory rows are a buffer (no
    gradient); :meth:`update` applies the sequential momentum rule of
    :func:`momentum_update_` (reference: :func:`momentum_update_reference`).

    Args:
        num_features: D.
        num_clusters: K.
        temperature: softmax temperature (0.05 in DMDL).
        momentum: memory momentum (0.2 in DMDL).
    """

    def __init__(self, num_features: int, num_clusters: int, temperature: float = 0.05, momentum: float = 0.2):
        super().__init__()
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        self.temperature = temperature
        self.momentum = momentum
        self.register_buffer("features", torch.zeros(num_clusters, num_features))

    @classmethod
    def from_centroids(cls, centroids: Tensor, temperature: float = 0.05, momentum: float = 0.2) -> "ClusterMemory":
        mem = cls(centroids.shape[1], centroids.shape[0], temperature, momentum).to(centroids.device)
        mem.features.copy_(F.normalize(centroids.detach(), dim=1))
        return mem

    @property
    def num_clusters(self) -> int:
        return self.features.shape[0]

    def logits(self, inputs: Tensor) -> Tensor:
        """(B, D) raw features -> (B, K) similarities / temperature."""
        return F.normalize(inputs, dim=1) @ self.features.t().to(inputs.dtype) / self.temperature

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Contrastive loss (scalar) of (B, D) features against (B,) int64 row ids in [0, K), or
        against (B, K) soft targets. float16/bfloat16 features are computed in float32."""
        x = inputs if inputs.dtype in _FLOATS else inputs.float()
        mem = self.features if self.features.dtype == x.dtype else self.features.to(x.dtype)
        if targets.is_floating_point() and targets.dtype != x.dtype:
            targets = targets.to(x.dtype)
        return memory_loss(x, mem, targets, self.temperature)

    @torch.no_grad()
    def update(self, inputs: Tensor, targets: Tensor, momentum: Tensor | None = None,
               row_ids: Tensor | None = None, hard: bool = False) -> None:
        """Momentum update (:func:`momentum_update_`) of the rows ``targets`` (or, with
        ``row_ids``, of the rows holding those labels) with ``inputs`` in batch order, with the
        memory's momentum or a per-sample (B,) ``momentum``."""
        momentum_update_(self.features, inputs.detach().to(self.features.dtype), targets,
                         self.momentum if momentum is None else momentum, row_ids=row_ids, hard=hard)


# ---------------------------------------------------------------------- op registrations (Python)
def _triton_kernels():
    """dmdl.kernels.memory, or a clear error: CUDA tensors have no other implementation."""
    try:
        from dmdl.kernels import memory as kernels  # noqa: PLC0415
    except ImportError as exc:  # triton missing or broken
        raise RuntimeError(
            f"dmdl memory ops on CUDA tensors run Triton kernels (dmdl.kernels.memory), which could not be "
            f"imported ({exc}); install triton, or pass CPU tensors") from exc
    return kernels


def _memory_loss_forward_cuda(features: Tensor, memory: Tensor, targets: Tensor, temperature: float):
    with torch.cuda.device(features.device):
        return _triton_kernels().memory_loss_forward(features, memory, targets, temperature)


def _momentum_update_cuda(memory: Tensor, features: Tensor, labels: Tensor, momentum: Tensor,
                          row_ids: Tensor | None, hard: bool) -> None:
    with torch.cuda.device(memory.device):
        _triton_kernels().momentum_update_(memory, features, labels, momentum, row_ids, hard)


def _register() -> None:
    @torch.library.register_fake("dmdl::memory_loss_forward")
    def _memory_loss_forward_fake(features, memory, targets, temperature):
        torch._check(features.dim() == 2, lambda: "features must be 2-D [B, D]")
        return features.new_empty(()), torch.empty_like(features, memory_format=torch.contiguous_format)

    @torch.library.register_fake("dmdl::momentum_update_")
    def _momentum_update_fake(memory, features, labels, momentum, row_ids, hard):
        return None

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])

    def _backward(ctx, grad_loss, _grad_grad):
        (grad_features,) = ctx.saved_tensors
        return grad_loss * grad_features, None, None, None

    # d loss / d features was computed in the forward call; the memory gets no gradient.
    torch.library.register_autograd("dmdl::memory_loss_forward", _backward, setup_context=_setup_context)
    torch.library.impl("dmdl::memory_loss_forward", "CUDA", _memory_loss_forward_cuda)
    torch.library.impl("dmdl::momentum_update_", "CUDA", _momentum_update_cuda)


if _library.is_available():
    _register()
