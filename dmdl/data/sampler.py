"""Camera-aware pseudo-identity sampler (algorithm.md §A4.2).

Port of the behaviour of Cluster-Contrast's ``RandomMultipleGallerySampler``:
for every pseudo-identity (shuffled) one random anchor image, then
``num_instances - 1`` more images of the same identity taken preferentially from
other cameras (without replacement when enough exist, else with replacement).
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Iterator, Sequence

from torch.utils.data import Sampler


class PseudoIdentitySampler(Sampler[int]):
    """Indices grouped by pseudo-label, ``num_instances`` consecutive per identity.

    Args:
        labels: (N,) ints; -1 samples are never drawn.
        camids: (N,) camera ids.
        num_instances: images per identity in a batch.
        seed: RNG seed of this sampler (one ``random.Random``).
        min_length: an epoch yields at least this many indices: when there are
            too few pseudo-identities to fill it (e.g. one batch), further
            shuffled passes over the identities are appended.

    Raises:
        ValueError: no labelled sample or ``num_instances < 1``.
    """

    def __init__(self, labels: Sequence[int], camids: Sequence[int], num_instances: int, seed: int = 0,
                 min_length: int = 0):
        if num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {num_instances}")
        self.num_instances = num_instances
        self.labels = [int(x) for x in labels]
        self.camids = [int(c) for c in camids]
        self.index_by_pid: dict[int, list[int]] = defaultdict(list)
        for i, pid in enumerate(self.labels):
            if pid >= 0:
                self.index_by_pid[pid].append(i)
        self.pids = sorted(self.index_by_pid)
        if not self.pids:
            raise ValueError("no labelled sample to draw from (every label is -1)")
        self.rng = random.Random(seed)
        per_pass = len(self.pids) * num_instances
        self.passes = max(1, -(-min_length // per_pass))

    def __len__(self) -> int:
        return self.passes * len(self.pids) * self.num_instances

    def __iter__(self) -> Iterator[int]:
        out: list[int] = []
        for _ in range(self.passes):
            out.extend(self._one_pass())
        return iter(out)

    def _one_pass(self) -> list[int]:
        rng = self.rng
        pids = self.pids[:]
        rng.shuffle(pids)
        out: list[int] = []
        k = self.num_instances - 1
        for pid in pids:
            members = self.index_by_pid[pid]
            anchor = rng.choice(members)
            others = [i for i in members if i != anchor]
            other_cam = [i for i in others if self.camids[i] != self.camids[anchor]]
            pool = other_cam if other_cam else others
            if not pool:
                picks = [anchor] * k
            elif len(pool) >= k:
                picks = rng.sample(pool, k)
            else:
                picks = [rng.choice(pool) for _ in range(k)]
            out.append(anchor)
            out.extend(picks)
        return out
