"""Ghost BatchNorm: batch statistics over fixed groups of the batch (algorithm.md §A2).

DMDL's reference run wraps the model in ``nn.DataParallel`` on 4 GPUs without SyncBN, so every
BatchNorm layer normalises each GPU's quarter of the batch with that quarter's statistics, and
the running statistics that survive are those of replica 0 (DataParallel copies the module
from device 0 before every forward and discards the replicas' buffers). A single GPU sees one
set of statistics over the whole batch, a known source of GPU-count-dependent results (PGM
issue #1). :func:`convert_ghost_batchnorm` makes one device reproduce the multi-GPU statistics:
in training, a ``groups``-way split of the batch along dim 0, each group normalised with its
own statistics, running statistics updated from group 0 only. Evaluation is unchanged.

The layers keep their class's state-dict keys (the class of each BN module is swapped in
place), so checkpoints and pretrained weights load as before. The caller orders the batch so
that contiguous groups are the replicas' inputs (see :func:`dataparallel_order`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _GhostMixin:
    ghost_groups: int = 1

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        g = self.ghost_groups
        if not self.training or g <= 1:
            return super().forward(x)
        if x.shape[0] % g:
            raise ValueError(f"ghost BatchNorm: batch of {x.shape[0]} is not divisible into {g} groups")
        chunks = x.chunk(g)
        out = [super().forward(chunks[0])]  # replica 0: updates the running statistics
        for c in chunks[1:]:
            out.append(F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps))
        return torch.cat(out)


class GhostBatchNorm1d(_GhostMixin, nn.BatchNorm1d):
    """BatchNorm1d with ghost groups (see the module docstring)."""


class GhostBatchNorm2d(_GhostMixin, nn.BatchNorm2d):
    """BatchNorm2d with ghost groups (see the module docstring)."""


def convert_ghost_batchnorm(model: nn.Module, groups: int) -> nn.Module:
    """Make every ``BatchNorm1d``/``BatchNorm2d`` of ``model`` a ghost BatchNorm with ``groups``
    groups, in place (parameters, buffers and state-dict keys unchanged); returns ``model``.

    Raises:
        ValueError: ``groups`` < 1.
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    for mod in model.modules():
        if type(mod) is nn.BatchNorm2d or isinstance(mod, GhostBatchNorm2d):
            mod.__class__ = GhostBatchNorm2d
        elif type(mod) is nn.BatchNorm1d or isinstance(mod, GhostBatchNorm1d):
            mod.__class__ = GhostBatchNorm1d
        else:
            continue
        mod.ghost_groups = groups
    return model


def replica_order(infrared: Tensor, groups: int) -> Tensor:
    """Permutation of a batch whose rows are visible (``infrared`` False) or infrared into
    DataParallel's replica layout when the model is called with the two modalities as separate
    inputs: replica k gets chunk k of the visible rows, then chunk k of the infrared rows (each
    in batch order). With ``n`` visible rows followed by ``n`` infrared rows this is
    :func:`dataparallel_order` ``(n, groups)``.

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


def dataparallel_order(batch: int, groups: int) -> Tensor:
    """Permutation of a ``[x1; x2]`` batch (x1 = visible rows, x2 = infrared rows, ``batch``
    each) into DataParallel's replica layout: replica k gets chunk k of x1 then chunk k of x2.

    Returns:
        (2 * batch,) int64 permutation ``p``; ``model(x[p])`` then ``out[argsort(p)]``.

    Raises:
        ValueError: ``batch`` not divisible by ``groups``.
    """
    if batch % groups:
        raise ValueError(f"a modality batch of {batch} rows is not divisible into {groups} groups")
    c = batch // groups
    parts = []
    for k in range(groups):
        parts += [torch.arange(k * c, (k + 1) * c), batch + torch.arange(k * c, (k + 1) * c)]
    return torch.cat(parts)
