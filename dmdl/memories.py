"""The cross-modal memory: every cluster memory of one epoch, behind one object, and the
memory updates of a step as data (:class:`MemoryUpdate`, applied in order by
:meth:`CrossModalMemory.apply`).

A USL-VI-ReID epoch keeps several cluster memories (docs/dmdl.md#A4.1, #A5.3):

- one per modality (``"visible"``, ``"infrared"``), each over the labels its own
  samples carry: in stage 1 its DBSCAN clusters, in stage 2 the *unified* ids
  present among its samples (the anchor modality covers all K, the mapped one a
  subset);
- optionally a modality-shared memory (``"shared"``) over all K unified ids,
  centroids of visible + infrared samples;
- the label -> row table of each memory, and the modality prior
  ``P(C = c) = N_c / (N_V + N_I)`` over non-outlier samples (docs/dmdl.md#A5.3, used by CAI).

Labels given to this object are always label-space ids (stage 1: per-modality
cluster ids; stage 2: unified ids); the row lookup happens here, so the method
code never handles memory rows.

Losses go through :func:`dmdl.ops.memory_loss` (hard labels: :meth:`CrossModalMemory.loss`;
soft target rows: :meth:`CrossModalMemory.soft_loss`), updates through
:func:`dmdl.ops.momentum_update_` (the C++ op on the CPU, Triton kernels on CUDA).

MULT's six memories (docs/mult.md#B4) live in the same object (:meth:`CrossModalMemory.from_centroids`: named
memories whose labels are their rows).

Update order (the reference leaves it to autograd's backward order; we define
it): losses are computed with the memories as they are at forward time
(``memory_loss`` computes its feature gradient then, so later updates cannot change it); after
``loss.backward()`` the method applies its step's list of :class:`MemoryUpdate` in order
(DMDL: :func:`dmdl.methods.dmdl.step.dmdl_memory_updates`; MULT:
:func:`dmdl.methods.mult.step.mult_memory_updates`).

Each update is the sequential momentum rule of :func:`dmdl.ops.momentum_update_`
(reference: :func:`dmdl.ops.memory.momentum_update_reference`), samples in batch order;
samples whose label has no row in that memory are skipped (the memory's ``row_ids`` table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmdl.guards import require_finite_loss
from dmdl.modalities import MODALITIES
from dmdl.ops.memory import ClusterMemory, cluster_centroids


@dataclass(frozen=True)
class MemoryUpdate:
    """One momentum update of memory ``memory`` with ``features`` (B, D) and their label-space
    ``labels`` (B,), samples in batch order; ``momentum`` None (the memory's own) or (B,)."""

    memory: str
    features: Tensor
    labels: Tensor
    momentum: Tensor | None = None


class CrossModalMemory(nn.Module):
    """Per-modality memories, an optional shared memory, their label tables and the prior.

    Build it with :meth:`build`. Memories are ``ClusterMemory`` modules in
    ``self.memories[name]``; ``self.id_to_row[name]`` is a (K,) int64 tensor
    mapping a label-space id to the row of that memory (-1: no row).

    Attributes:
        num_ids: K, the size of the label space (stage 1: unused, per-modality
            spaces differ; stage 2: the unified space).
        prior: ``{"visible": pi_V, "infrared": pi_I}``, non-outlier sample
            shares (docs/dmdl.md#A5.3).
    """

    def __init__(self, memories: Mapping[str, ClusterMemory], id_to_row: Mapping[str, Tensor],
                 prior: Mapping[str, float], num_ids: int):
        super().__init__()
        self.memories = nn.ModuleDict(dict(memories))
        self.id_to_row = {k: v for k, v in id_to_row.items()}
        self.prior = dict(prior)
        self.num_ids = num_ids
        self._row_ids: dict[str, Tensor] = {}

    @classmethod
    def build(cls, features: Mapping[str, Tensor], labels: Mapping[str, np.ndarray], temperature: float = 0.05,
              momentum: float = 0.2, shared: bool = False) -> "CrossModalMemory":
        """Memories from L2-normalised cluster centroids (rebuilt every epoch, docs/dmdl.md#A4.1, #A5.3).

        Args:
            features: ``{"visible": (N_V, D), "infrared": (N_I, D)}`` float features, one device.
            labels: the same keys, (N_c,) int arrays, -1 for outliers. Stage 1: each
                modality's own clusters; stage 2: unified ids in [0, K).
            temperature, momentum: of every memory (0.05 and 0.2 in DMDL).
            shared: also build the modality-shared memory over ids 0..K-1, K =
                max label + 1; every id must then have a member in some modality.

        Raises:
            ValueError: a modality without any labelled sample, or (``shared``) an
                id in [0, K) without a member.
        """
        device = features["visible"].device
        memories, tables, counts = {}, {}, {}
        num_ids = 1 + max(int(np.max(labels[m], initial=-1)) for m in MODALITIES)
        for m in MODALITIES:
            lab = torch.as_tensor(np.asarray(labels[m]), dtype=torch.long)
            ids = torch.unique(lab[lab >= 0])
            if ids.numel() == 0:
                raise ValueError(f"the {m} modality has no labelled sample: cannot build its memory")
            lut = torch.full((num_ids,), -1, dtype=torch.long)
            lut[ids] = torch.arange(len(ids))
            rows = torch.where(lab >= 0, lut[lab.clamp_min(0)], lab)
            cent = cluster_centroids(features[m].float(), rows.to(device), len(ids))
            memories[m] = ClusterMemory.from_centroids(cent, temperature, momentum)
            tables[m] = lut.to(device)
            counts[m] = int((lab >= 0).sum())
        if shared:
            both = torch.cat([torch.as_tensor(np.asarray(labels[m]), dtype=torch.long) for m in MODALITIES])
            cent = cluster_centroids(torch.cat([features[m].float() for m in MODALITIES]), both.to(device), num_ids)
            memories["shared"] = ClusterMemory.from_centroids(cent, temperature, momentum)
            tables["shared"] = torch.arange(num_ids, device=device)
        total = sum(counts.values())
        prior = {m: counts[m] / total for m in MODALITIES}
        return cls(memories, tables, prior, num_ids)

    @classmethod
    def from_centroids(cls, centroids: Mapping[str, Tensor], temperature: float = 0.05,
                       momentum: float = 0.2) -> "CrossModalMemory":
        """Named memories from (K_name, D) centroids (normalised here), each over its own label
        space whose ids are its rows (MULT's six memories, docs/mult.md#B4); no prior, no shared label space."""
        memories = {k: ClusterMemory.from_centroids(c, temperature, momentum) for k, c in centroids.items()}
        tables = {k: torch.arange(len(c), device=c.device) for k, c in centroids.items()}
        return cls(memories, tables, {}, 0)

    @torch.no_grad()
    def apply(self, updates: Iterable[MemoryUpdate]) -> None:
        """Apply ``updates`` in order (:meth:`update` each)."""
        for u in updates:
            self.update(u.memory, u.features, u.labels, u.momentum)

    def rows(self, name: str, labels: Tensor) -> Tensor:
        """(B,) label-space ids -> (B,) rows of memory ``name`` (-1 where it has none)."""
        lut = self.id_to_row[name]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(lut)):
            raise ValueError(f"labels must lie in [0, {len(lut)}) for memory {name!r}")
        return lut[labels.to(lut.device)]

    def logits(self, name: str, features: Tensor) -> Tensor:
        """(B, D) features -> (B, K_name) cosine / temperature against memory ``name``."""
        return self.memories[name].logits(features)

    def loss(self, name: str, features: Tensor, labels: Tensor) -> Tensor:
        """Contrastive (cross-entropy) loss of features against memory ``name`` (docs/dmdl.md#A4.4, #A5.5),
        by :func:`dmdl.ops.memory_loss` (the gradient flows to ``features`` only).

        Args:
            features: (B, D) raw features (normalised inside).
            labels: (B,) int64 label-space ids; every one must have a row in ``name``.

        Raises:
            ValueError: a label without a row in that memory.
        """
        rows = self.rows(name, labels)
        if rows.numel() and int(rows.min()) < 0:
            raise ValueError(f"memory {name!r} has no row for some labels; use the anchor or shared memory")
        return self.memories[name](features, rows)

    def soft_loss(self, name: str, features: Tensor, targets: Tensor) -> Tensor:
        """Soft-target cross-entropy ``mean_i(-sum_k t_ik log softmax(f̂_i M^T / T)_k)`` against memory
        ``name`` (docs/dmdl.md#A4.4 ``CE_soft``; equal to ``soft_cross_entropy(self.logits(name, f), t)``), by
        :func:`dmdl.ops.memory_loss`.

        Args:
            features: (B, D) raw features (normalised inside).
            targets: (B, K_name) soft targets over the rows of memory ``name`` (rows summing to 1,
                not renormalised; detached).
        """
        return self.memories[name](features, targets)

    def row_ids(self, name: str) -> Tensor:
        """(K_name,) int64: the label-space id each row of memory ``name`` stands for (cached)."""
        if name not in self._row_ids:
            lut = self.id_to_row[name]
            ids = torch.nonzero(lut >= 0).flatten()
            table = torch.empty_like(ids)
            table[lut[ids]] = ids
            self._row_ids[name] = table
        return self._row_ids[name]

    @torch.no_grad()
    def update(self, name: str, features: Tensor, labels: Tensor, momentum: Tensor | None = None) -> None:
        """Momentum update of memory ``name``, samples in batch order; labels without a row skipped.

        Runs :func:`dmdl.ops.momentum_update_` with the memory's ``row_ids``. ``momentum``: None
        (the memory's own) or a (B,) per-sample tensor (adaptive eta_x).

        Raises:
            ValueError: a label outside [0, K) of the label space.
        """
        self.rows(name, labels)  # range check of the label-space ids
        self.memories[name].update(features.detach(), labels.to(self.id_to_row[name].device), momentum,
                                   row_ids=self.row_ids(name))


@dataclass
class MemoryRead:
    """One read of a memory by a batch of features (a call of the released code's memory op).

    Attributes:
        memory: the memory's name.
        features: (B, D) L2-normalised features, connected to the model's graph.
        logits: (B, K) leaf tensor ``features @ M^T`` at the time of the read (requires grad).
        labels: (B,) label-space ids the read updates its memory with; momentum: None or (B,).
    """

    memory: str
    features: Tensor
    logits: Tensor
    labels: Tensor
    momentum: Tensor | None = None


class ReadTape:
    """The released code's memory semantics for one step (``memory_semantics: reference``).

    In the released DMDL and MULT code (Cluster-Contrast's ``CM`` pattern) every call of a memory is
    an autograd node whose *backward* computes the feature gradient against the memory buffer as it
    is at that moment, then updates that buffer with the call's samples; autograd runs the node
    created last first. When a memory is read more than once in a step, an earlier read's gradient
    is therefore taken against a memory that a later read's samples have already moved, and the
    updates land in reverse creation order.

    :meth:`read` records a read and returns its logits ``f̂ M^T / T`` (computed with the memory as
    it is at the read, as the released forward does); the losses are built from them. Then
    :meth:`objective` replays the released backward explicitly: the gradient of the loss with
    respect to every read's logits, then, from the last read to the first, the feature gradient
    ``g M_live`` and the read's momentum update (:meth:`CrossModalMemory.update`, the fused op); it
    returns the objective whose ``backward()`` gives the model the released gradients.

    Args:
        memory: the step's memories.
    """

    def __init__(self, memory: CrossModalMemory):
        self.memory = memory
        self.reads: list[MemoryRead] = []

    def read(self, name: str, features: Tensor, labels: Tensor, momentum: Tensor | None = None) -> Tensor:
        """Read memory ``name`` with (B, D) raw ``features`` (normalised here); the read will
        update the memory with them and ``labels`` (B,) label-space ids (ids without a row are
        skipped) in :meth:`objective`.

        Returns:
            (B, K_name) logits ``normalize(features) @ M^T / T``, differentiable; their gradient
            reaches ``features`` only through :meth:`objective`.
        """
        mem = self.memory.memories[name]
        f_hat = F.normalize(features.float(), dim=1)
        z = (f_hat.detach() @ mem.features.t()).requires_grad_()
        self.reads.append(MemoryRead(name, f_hat, z, labels, momentum))
        return z / mem.temperature

    def objective(self, loss: Tensor) -> Tensor:
        """Run the released backward of the reads (see the class docstring): memories updated in
        place, last read first; returns ``loss + sum_k <f̂_k, g_k M_k>`` with the feature gradients
        ``g_k M_k`` detached, whose gradient with respect to the model is the released step's.

        Raises:
            FloatingPointError: ``loss`` is NaN or infinite (nothing is updated).
        """
        require_finite_loss(loss)
        grads = torch.autograd.grad(loss, [r.logits for r in self.reads], retain_graph=True, allow_unused=True)
        objective = loss
        for read, g in reversed(list(zip(self.reads, grads))):
            if g is not None:
                v = g @ self.memory.memories[read.memory].features  # the memory as it stands now
                objective = objective + (read.features * v).sum()
            self.memory.update(read.memory, read.features.detach(), read.labels, read.momentum)
        return objective


def step_backward(loss: Tensor, tape: ReadTape | None = None) -> None:
    """The backward of one step without an optimiser (the default of the methods' ``*_step``
    functions; tests and tools use it): ``loss.backward()``, or under ``reference`` semantics the
    backward of ``tape.objective(loss)`` (which also applies the read memories' updates).

    Raises:
        FloatingPointError: ``loss`` is NaN or infinite (nothing is updated).
    """
    require_finite_loss(loss)
    (loss if tape is None else tape.objective(loss)).backward()
