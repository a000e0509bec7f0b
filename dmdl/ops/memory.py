"""Cluster memory bank: contrastive loss against cluster centroids + momentum update.

Source: Cluster-Contrast (Dai et al., ACCV 2022) as used by ADCA, PGM and DMDL
(algorithm.md §A4.1, §A8; performance.md §3). This is the pure-PyTorch version
with the exact sequential update semantics of the reference code; the fused
CUDA/Triton kernel comes later behind the same class.

Update order (defined here, because the reference leaves it to autograd): the
loss is computed with the memory as it was at forward time; the momentum update
runs when :meth:`ClusterMemory.update` is called (the trainer calls it after
``loss.backward()``), sample by sample in batch order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def momentum_update_reference(memory: Tensor, features: Tensor, targets: Tensor, momentum: float | Tensor) -> Tensor:
    """Sequential momentum update, in place, one sample at a time in batch order.

    For i = 0..B-1: ``m[y_i] <- normalize(mu_i * m[y_i] + (1 - mu_i) * x_i)``
    where x_i is ``features[i]`` L2-normalised (algorithm.md §A4.1) and ``mu_i`` the
    momentum (one float for every sample, or a (B,) tensor: DMDL's adaptive
    ``eta_x = 0.2 / max(q_x, 0.2)`` of the shared memory, §A5.5, paper Eqs. 12-13;
    ``mu_i = 1`` leaves the row unchanged).

    Args:
        memory: (K, D) float tensor, updated in place and returned.
        features: (B, D) features (normalised here; no gradient flows).
        targets: (B,) int64 row indices into ``memory`` in [0, K).
        momentum: weight of the old memory row, in [0, 1], a float or a (B,) tensor.

    Raises:
        ValueError: on shape mismatch or out-of-range targets.
    """
    _check_update_args(memory, features, targets)
    if isinstance(momentum, Tensor):
        if momentum.shape != targets.shape:
            raise ValueError(f"momentum must be a float or a (B,) tensor, got shape {tuple(momentum.shape)}")
        mus = [float(v) for v in momentum.detach().cpu()]
    else:
        mus = [float(momentum)] * targets.shape[0]
    with torch.no_grad():
        x = F.normalize(features.detach().to(memory.dtype), dim=1)
        ys = targets.tolist()  # one device-to-host copy, not one sync per sample
        for i in range(x.shape[0]):
            y = ys[i]
            mu = mus[i]
            if mu >= 1.0:
                continue
            row = mu * memory[y] + (1.0 - mu) * x[i]
            memory[y] = row / row.norm().clamp_min(1e-12)
    return memory


def _check_update_args(memory: Tensor, features: Tensor, targets: Tensor) -> None:
    if memory.dim() != 2 or features.dim() != 2 or features.shape[1] != memory.shape[1]:
        raise ValueError(
            f"memory must be (K, D) and features (B, D) with the same D; got {tuple(memory.shape)} "
            f"and {tuple(features.shape)}"
        )
    if targets.dim() != 1 or targets.shape[0] != features.shape[0]:
        raise ValueError(f"targets must be (B,) with B = {features.shape[0]}; got {tuple(targets.shape)}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= memory.shape[0]):
        raise ValueError(f"targets must lie in [0, {memory.shape[0]}); got [{int(targets.min())}, {int(targets.max())}]")


def cluster_centroids(features: Tensor, labels: Tensor, num_clusters: int | None = None) -> Tensor:
    """L2-normalised mean feature of every cluster.

    Args:
        features: (N, D) float features.
        labels: (N,) int64 cluster ids; -1 (DBSCAN outlier) rows are ignored.
        num_clusters: K; defaults to ``labels.max() + 1``.

    Returns:
        (K, D) float tensor of unit rows, on ``features.device``.

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
    return F.normalize(sums / counts.unsqueeze(1).to(features.dtype), dim=1)


class ClusterMemory(nn.Module):
    """Memory bank of K cluster centroids with a contrastive (ClusterNCE) loss.

    ``loss = CE(normalize(x) @ M.T / temperature, y)`` (algorithm.md §A4.4, §C).
    The memory rows are a buffer (no gradient); :meth:`update` applies the
    sequential momentum rule of :func:`momentum_update_reference`.

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
        """Contrastive loss (scalar) of (B, D) features against (B,) int64 cluster ids."""
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.num_clusters):
            raise ValueError(f"targets must lie in [0, {self.num_clusters})")
        return F.cross_entropy(self.logits(inputs), targets)

    @torch.no_grad()
    def update(self, inputs: Tensor, targets: Tensor, momentum: Tensor | None = None) -> None:
        """Momentum update of the rows ``targets`` with ``inputs`` (in batch order), with the
        memory's momentum or a per-sample (B,) ``momentum``."""
        momentum_update_reference(self.features, inputs.float(), targets,
                                  self.momentum if momentum is None else momentum)
