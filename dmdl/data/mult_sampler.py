"""MULT's batch samplers (docs/mult.md#B5): paired RGB and IR index lists per iteration.

Each iteration draws identities, then ``num_instances`` images per identity: without replacement
when the identity has *more* than ``num_instances`` images, with replacement otherwise (MULT's
``np.random.choice`` rule). The RGB and IR batches of an iteration are built together, so the two
loaders of a step see matching identities in the cross stage.

- :func:`single_stage_batches` (MULT's ``StageOneSampler``): ``num_ids`` RGB identities and
  ``num_ids`` IR identities per iteration, drawn independently, each modality over its own DBSCAN
  clusters (outliers never drawn).
- :func:`cross_stage_batches` (``StageThreeSampler``): ``num_ids / 2`` identities of the RGB label
  space (present among both the RGB samples' intra labels and the IR samples' cross labels) give
  ``num_instances`` RGB images by intra label and ``num_instances`` IR images by cross label;
  ``num_ids / 2`` identities of the IR label space likewise, with the roles swapped.

Identities are drawn without replacement within an iteration; when a space has fewer identities
than asked (small data) they are drawn with replacement instead (MULT would raise).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

__all__ = ["single_stage_batches", "cross_stage_batches"]


def _members(labels: Sequence[int]) -> dict[int, np.ndarray]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(np.asarray(labels, dtype=np.int64).tolist()):
        if y >= 0:
            groups[y].append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}


def _draw_ids(rng: np.random.Generator, ids: np.ndarray, n: int) -> np.ndarray:
    return rng.choice(ids, n, replace=len(ids) < n)


def _draw_images(rng: np.random.Generator, members: np.ndarray, n: int) -> np.ndarray:
    return rng.choice(members, n, replace=len(members) <= n)


def _check(num_ids: int, num_instances: int, iterations: int) -> None:
    if num_ids < 1 or num_instances < 1 or iterations < 0:
        raise ValueError(f"need num_ids >= 1, num_instances >= 1, iterations >= 0; got {num_ids}, "
                         f"{num_instances}, {iterations}")


def single_stage_batches(labels_rgb: Sequence[int], labels_ir: Sequence[int], iterations: int, num_ids: int,
                         num_instances: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Index batches of MULT's single stage.

    Args:
        labels_rgb: (N_R,) int DBSCAN labels of the RGB samples, -1 outliers; labels_ir: (N_I,).
        iterations: batches to draw. num_ids: identities per modality and batch.
        num_instances: images per identity. seed: of a ``numpy.random.default_rng``.

    Returns:
        (rgb, ir): two lists of ``iterations`` int64 arrays of ``num_ids * num_instances`` sample
        indices into the modality's sample list.

    Raises:
        ValueError: a modality without any labelled sample, or bad sizes.
    """
    _check(num_ids, num_instances, iterations)
    groups = {"RGB": _members(labels_rgb), "IR": _members(labels_ir)}
    for name, g in groups.items():
        if not g:
            raise ValueError(f"no labelled {name} sample to draw from (every label is -1)")
    rng = np.random.default_rng(seed)
    ids = {k: np.array(sorted(g)) for k, g in groups.items()}
    out: dict[str, list[np.ndarray]] = {"RGB": [], "IR": []}
    for _ in range(iterations):
        for name in ("RGB", "IR"):
            pick = _draw_ids(rng, ids[name], num_ids)
            out[name].append(np.concatenate([_draw_images(rng, groups[name][p], num_instances) for p in pick]))
    return out["RGB"], out["IR"]


def cross_stage_batches(labels_rgb: Sequence[int], labels_ir: Sequence[int], rgb_in_ir: Sequence[int],
                        ir_in_rgb: Sequence[int], iterations: int, num_ids: int, num_instances: int,
                        seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Index batches of MULT's cross stage (``StageThreeSampler``).

    Args:
        labels_rgb: (N_R,) intra-modality labels of every RGB sample (after the label transfer);
            labels_ir: (N_I,) the same for IR; rgb_in_ir: (N_R,) each RGB sample's label in the IR
            space; ir_in_rgb: (N_I,) each IR sample's label in the RGB space.
        iterations, num_instances, seed: as in :func:`single_stage_batches`.
        num_ids: identities per batch, even: half from each label space.

    Returns:
        (rgb, ir): lists of ``iterations`` int64 arrays of ``num_ids * num_instances`` indices;
        position j of the RGB and the IR batch belong to the same identity block.

    Raises:
        ValueError: ``num_ids`` odd, or a label space with no identity present in both modalities.
    """
    _check(num_ids, num_instances, iterations)
    if num_ids % 2:
        raise ValueError(f"the cross stage draws half its identities from each label space: num_ids must be "
                         f"even, got {num_ids}")
    rgb_intra, ir_intra = _members(labels_rgb), _members(labels_ir)
    rgb_cross, ir_cross = _members(rgb_in_ir), _members(ir_in_rgb)
    rgb_space = np.array(sorted(set(rgb_intra) & set(ir_cross)))  # RGB-space ids with RGB and IR members
    ir_space = np.array(sorted(set(ir_intra) & set(rgb_cross)))
    for name, ids in (("RGB", rgb_space), ("IR", ir_space)):
        if len(ids) == 0:
            raise ValueError(f"no identity of the {name} label space has members in both modalities")
    rng = np.random.default_rng(seed)
    half = num_ids // 2
    out_rgb, out_ir = [], []
    for _ in range(iterations):
        rgb_parts, ir_parts = [], []
        for p in _draw_ids(rng, rgb_space, half):
            rgb_parts.append(_draw_images(rng, rgb_intra[p], num_instances))
            ir_parts.append(_draw_images(rng, ir_cross[p], num_instances))
        for p in _draw_ids(rng, ir_space, half):
            rgb_parts.append(_draw_images(rng, rgb_cross[p], num_instances))
            ir_parts.append(_draw_images(rng, ir_intra[p], num_instances))
        out_rgb.append(np.concatenate(rgb_parts))
        out_ir.append(np.concatenate(ir_parts))
    return out_rgb, out_ir
