"""Ghost BatchNorm: the BatchNorm statistics of a multi-GPU DataParallel run, on one device
(docs/dmdl.md#A2).

DMDL's reference run wraps the model in ``nn.DataParallel`` on 4 GPUs without SyncBN: every replica
runs the whole model on its chunk of the batch, so every BatchNorm layer normalises each GPU's
quarter of the batch with that quarter's statistics, and the running statistics that survive are
those of replica 0 (DataParallel copies the module from device 0 before every forward and discards
the replicas' buffers). A single GPU sees one set of statistics over the whole batch, a known source
of GPU-count-dependent results (PGM issue #1). :func:`replica_forward` runs the model as the
replicas do: once per group of the batch (laid out by :func:`replica_order`), the running
statistics updated by group 0 only. Evaluation is unchanged. A distributed run forwards each
process's groups the same way (:mod:`dmdl.training.distributed`), which is what makes its result
the one-process result, to the bit with two groups.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``model`` normalise with batch statistics but leave their running
    statistics (and ``num_batches_tracked``) untouched inside the block: a DataParallel replica
    other than 0, whose buffers are discarded."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


def replica_forward(model: nn.Module, x: Tensor, groups: int, *args: Tensor) -> Tensor:
    """``model`` on ``groups`` contiguous chunks of ``x`` (and of each per-row tensor in ``args``,
    e.g. a two-stream model's modality mask), outputs concatenated: each chunk normalised by its own
    batch statistics, the running statistics updated by chunk 0 only, as DataParallel's replicas.

    Args:
        x: (B, ...) with B divisible by ``groups``, already laid out (:func:`replica_order`).
        groups: >= 1 (1: one plain forward).

    Raises:
        ValueError: B not divisible by ``groups``.
    """
    if groups <= 1:
        return model(x, *args)
    if x.shape[0] % groups:
        raise ValueError(f"ghost BatchNorm: a batch of {x.shape[0]} rows is not divisible into {groups} groups")
    outs = []
    for k, chunk in enumerate(zip(x.chunk(groups), *(a.chunk(groups) for a in args))):
        with frozen_running_stats(model) if k else contextlib.nullcontext():
            outs.append(model(*chunk))
    return torch.cat(outs)


class Replicas(nn.Module):
    """``model`` run as :func:`replica_forward` runs it: one module call (what DistributedDataParallel
    wraps, so that a process's several groups are one forward before one backward)."""

    def __init__(self, model: nn.Module, groups: int):
        super().__init__()
        self.model, self.groups = model, groups

    def forward(self, x: Tensor, *args: Tensor) -> Tensor:
        return replica_forward(self.model, x, self.groups, *args)


def replica_order(infrared: Tensor, groups: int) -> Tensor:
    """Permutation of a batch whose rows are visible (``infrared`` False) or infrared into
    DataParallel's replica layout when the model is called with the two modalities as separate
    inputs: replica k gets chunk k of the visible rows, then chunk k of the infrared rows (each
    in batch order); e.g. with 2 visible rows then 2 infrared rows and 2 groups, ``[0, 2, 1, 3]``.

    Args:
        infrared: (N,) bool, the rows' modality.

    Returns:
        (N,) int64 permutation ``p`` on ``infrared``'s device; ``model(x[p])`` then ``out[argsort(p)]``.

    Raises:
        ValueError: a modality's row count not divisible by ``groups``.
    """
    vis, ir = torch.nonzero(~infrared).flatten(), torch.nonzero(infrared).flatten()
    for name, rows in (("visible", vis), ("infrared", ir)):
        if len(rows) % groups:
            raise ValueError(f"ghost BatchNorm: the {len(rows)} {name} rows of the batch are not divisible "
                             f"into {groups} groups (--ghost-bn-groups)")
    return torch.cat([torch.cat(pair) for pair in zip(vis.chunk(groups), ir.chunk(groups))])


__all__ = ["frozen_running_stats", "replica_forward", "Replicas", "replica_order"]
