"""Camera-aware pseudo-identity sampler (docs/dmdl.md#A4.2).

Port of Cluster-Contrast's ``RandomMultipleGallerySampler`` (used unchanged by DMDL), with
its replacement rule kept exactly, per shuffled pseudo-identity:

1. one random anchor image;
2. pool = the identity's images from OTHER cameras than the anchor's; if that is empty, the
   identity's other images (any camera, anchor excluded);
3. ``num_instances - 1`` images are drawn from the pool WITHOUT replacement when
   ``len(pool) >= num_instances`` (sic: ``num_instances``, not ``num_instances - 1``, so a
   pool of exactly ``num_instances - 1`` images is drawn WITH replacement), else WITH
   replacement;
4. an identity with a single image yields only its anchor (the reference's ``continue``).

Point 4 shifts the alignment of the following identities with the batch boundaries (a batch
may then mix ``num_instances``-groups across its edge); DBSCAN clusters (``min_samples`` 4)
rarely have one member, so this matters little. ``pad_singletons=True`` instead repeats the
anchor ``num_instances`` times (the fast-reid variant), which keeps the alignment.

Inter-modality batches (DMDL's late stage 2, ``RandomMultipleGallerySamplerInterModality``,
docs/dmdl.md#A5.6): one visible and one infrared sampler built with the same ``id_order``
(:func:`shared_identity_order`, a shuffle of the union of unified ids) yield their groups
for the same identities at the same positions, so batch b of both loaders holds the same
pseudo-identities; an id absent from a modality is replaced there by a random id of that
modality, and single-image identities are padded to keep the positions paired. As in the
reference's inter-modality sampler, a group is drawn without replacement when the pool holds at
least ``num_instances - 1`` images (one fewer than the single-modality rule). The reference
draws an epoch's groups once and replays them on every pass of its loader (``replay=True``, the
default of DMDL's ``inter_sampler``); ``replay=False`` draws them afresh on every pass.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Iterator, Sequence

from torch.utils.data import Sampler


class PseudoIdentitySampler(Sampler[int]):
    """Indices grouped by pseudo-label: per identity an anchor then ``num_instances - 1`` more.

    Args:
        labels: (N,) ints; -1 samples are never drawn.
        camids: (N,) camera ids.
        num_instances: images per identity in a batch.
        seed: RNG seed of this sampler; every draw (shuffle, anchor, pool draws) uses one
            ``random.Random(seed)``, so two samplers with the same arguments yield the same
            sequence of epochs.
        min_length: an epoch yields at least this many indices: when there are
            too few pseudo-identities to fill it (e.g. one batch), further
            shuffled passes over the identities are appended.
        pad_singletons: (keyword) False (default, reference behaviour): an identity with one
            image yields 1 index; True: it yields its image ``num_instances`` times.
        id_order: (keyword) a fixed sequence of identities to draw, in order, instead of a
            shuffle (inter-modality batches, see the module docstring); ids without a sample
            here are replaced by a random id of this sampler; implies ``pad_singletons``.
        replay: (keyword) draw the indices once (at the first pass) and yield the same ones on every
            later pass, as the reference's inter-modality sampler; False: a fresh draw per pass.

    ``len(self)`` is exactly the number of indices ``__iter__`` yields: ``passes`` times the
    per-pass size, where an identity contributes ``num_instances`` indices, or 1 if it has a
    single image and ``pad_singletons`` is False.

    Raises:
        ValueError: no labelled sample, ``num_instances < 1`` or ``labels``/``camids`` lengths differ.
    """

    def __init__(self, labels: Sequence[int], camids: Sequence[int], num_instances: int, seed: int = 0,
                 min_length: int = 0, *, pad_singletons: bool = False, id_order: Sequence[int] | None = None,
                 replay: bool = False):
        if num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {num_instances}")
        self.num_instances = num_instances
        self.labels = [int(x) for x in labels]
        self.camids = [int(c) for c in camids]
        if len(self.labels) != len(self.camids):
            raise ValueError(f"labels ({len(self.labels)}) and camids ({len(self.camids)}) differ in length")
        self.pad_singletons = bool(pad_singletons)
        self.index_by_pid: dict[int, list[int]] = defaultdict(list)
        for i, pid in enumerate(self.labels):
            if pid >= 0:
                self.index_by_pid[pid].append(i)
        self.pids = sorted(self.index_by_pid)
        if not self.pids:
            raise ValueError("no labelled sample to draw from (every label is -1)")
        self.rng = random.Random(seed)
        self.id_order = None if id_order is None else [int(p) for p in id_order]
        if self.id_order is not None:
            if not self.id_order:
                raise ValueError("id_order is empty")
            self.pad_singletons = True  # paired positions across the two modalities' samplers
            self.per_pass = len(self.id_order) * num_instances
        else:
            self.per_pass = sum(self._group_size(len(self.index_by_pid[p])) for p in self.pids)
        self.passes = max(1, -(-min_length // self.per_pass))
        self.replay = bool(replay)
        self._drawn: list[int] | None = None

    def _group_size(self, members: int) -> int:
        if members == 1 and not self.pad_singletons:
            return 1
        return self.num_instances

    def __len__(self) -> int:
        return self.passes * self.per_pass

    def __iter__(self) -> Iterator[int]:
        if self.replay and self._drawn is not None:
            return iter(self._drawn)
        out: list[int] = []
        for _ in range(self.passes):
            out.extend(self._one_pass())
        if self.replay:
            self._drawn = out
        return iter(out)

    def _one_pass(self) -> list[int]:
        rng = self.rng
        n = self.num_instances
        k = n - 1
        if self.id_order is not None:  # paired with the other modality's sampler
            pids = [p if p in self.index_by_pid else rng.choice(self.pids) for p in self.id_order]
        else:
            pids = self.pids[:]
            rng.shuffle(pids)
        out: list[int] = []
        for pid in pids:
            members = self.index_by_pid[pid]
            anchor = rng.choice(members)
            out.append(anchor)
            cam = self.camids[anchor]
            pool = [i for i in members if self.camids[i] != cam]  # excludes the anchor
            if not pool:
                pool = [i for i in members if i != anchor]
                if not pool:  # single-image identity
                    if self.pad_singletons:
                        out.extend([anchor] * k)
                    continue  # reference: emit only the anchor
            # reference rule: >= num_instances, not num_instances - 1; the reference's inter-modality
            # sampler uses >= num_instances - 1
            if len(pool) >= (k if self.id_order is not None else n):
                out.extend(rng.sample(pool, k))
            else:
                out.extend(rng.choice(pool) for _ in range(k))
        return out


def shared_identity_order(labels_a: Sequence[int], labels_b: Sequence[int], seed: int) -> list[int]:
    """The union of the non-negative ids of two label lists, sorted then shuffled with
    ``random.Random(seed)``: the ``id_order`` of two paired :class:`PseudoIdentitySampler`.

    Raises:
        ValueError: neither list has a labelled sample.
    """
    ids = sorted({int(x) for x in labels_a if int(x) >= 0} | {int(x) for x in labels_b if int(x) >= 0})
    if not ids:
        raise ValueError("no labelled sample in either modality")
    random.Random(seed).shuffle(ids)
    return ids
