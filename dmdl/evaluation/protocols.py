"""Query / gallery construction for the VI-ReID benchmarks.

Implements the test protocols of (docs/datasets.md#sysu-protocol, #regdb-protocol, #llcm-protocol) on
top of the readers of :mod:`dmdl.data`.  Gallery sampling uses only the
per-camera test indexes the readers built (``test_visible_index`` /
``test_infrared_index``: ``{(pid, cam): sorted paths}``), so no directory is
listed again.

Random draws follow the reference Python code: a fresh ``random.Random(trial)``
(the same stream as ``random.seed(trial)``) and, for single-shot, exactly one
``rng.choice(sorted_files)`` per existing (test id ascending, camera in list
order) folder -- so galleries equal the reference galleries for the same
directory contents.
"""

from __future__ import annotations

import random
from typing import List, Mapping, Sequence, Tuple

from dmdl.data.records import ImageRecord
from dmdl.modalities import INFRARED, VISIBLE

__all__ = [
    "SYSU_MODES", "LLCM_MODES", "REGDB_DIRECTIONS",
    "sysu_query_gallery", "regdb_query_gallery", "llcm_query_gallery",
    "sample_gallery",
]

SYSU_MODES = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SYSU_QUERY_CAMS = (3, 6)
REGDB_DIRECTIONS = ("v2t", "t2v")
LLCM_MODES = {"ir2vis": (1, 2, 3, 4, 5, 6, 7, 8, 9),
              "vis2ir": (1, 2, 4, 5, 6, 7, 8, 9)}

QueryGallery = Tuple[List[ImageRecord], List[ImageRecord]]


def _check_trial(trial) -> int:
    if isinstance(trial, bool) or not isinstance(trial, int) or trial < 0:
        raise ValueError(f"trial must be a non-negative integer, got {trial!r}")
    return trial


def sample_gallery(index: Mapping[Tuple[int, int], Sequence[str]],
                   ids: Sequence[int], cams: Sequence[int], modality: str,
                   trial: int = 0, shots: int = 1) -> List[ImageRecord]:
    """Seeded gallery draw over ``(id ascending, cam in cams order)``.

    For every ``(pid, cam)`` present in ``index`` (visited in that order),
    ``shots == 1`` draws ``rng.choice(files)``; ``shots > 1`` draws
    ``rng.sample(files, min(shots, len(files)))`` (kept in sorted order in the
    output).  ``rng = random.Random(trial)``; ``files`` are the sorted paths of
    the folder.
    """
    trial = _check_trial(trial)
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    rng = random.Random(trial)
    gallery: List[ImageRecord] = []
    for pid in sorted(ids):
        for cam in cams:
            files = index.get((pid, cam))
            if not files:
                continue
            files = list(files)
            if shots == 1:
                picked = [rng.choice(files)]
            else:
                picked = sorted(rng.sample(files, min(shots, len(files))))
            gallery.extend(ImageRecord(p, pid, cam, modality) for p in picked)
    return gallery


def sysu_query_gallery(dataset, mode: str = "all", trial: int = 0,
                       shots: int = 1) -> QueryGallery:
    """SYSU-MM01 query and gallery for one trial (docs/datasets.md#sysu-protocol).

    Query: every IR test image of cams 3 and 6 (``dataset.test_infrared``
    filtered to those cameras; identical for all trials).

    Gallery: ``rng = random.Random(trial)``; for each test id ascending and
    each RGB camera of the mode in order (``"all"``: 1, 2, 4, 5;
    ``"indoor"``: 1, 2) whose ``cam<k>/<pid>`` folder exists, draw from the
    sorted file list.  ``shots=1`` (single-shot, the community standard) makes
    exactly one ``rng.choice`` per folder, reproducing the AGW/DDAG/DEEN/DMDL
    ``random.seed(trial)`` galleries.  ``shots=10`` gives the multi-shot
    setting of the original SYSU protocol.  The reference Python code has no
    multi-shot mode; **our definition** is ``rng.sample(files, min(10,
    len(files)))`` per folder in the same order (the official MATLAB code uses
    stored permutations instead, so its galleries differ).

    Args:
        dataset: a :class:`dmdl.data.SYSUMM01` (anything with ``test_ids``,
            ``test_infrared`` and ``test_visible_index``).
        mode: ``"all"`` or ``"indoor"``.
        trial: seed, conventionally 0..9.
        shots: 1 (single-shot) or 10 (multi-shot); any positive int accepted.
    """
    if mode not in SYSU_MODES:
        raise ValueError(f"SYSU mode must be one of {sorted(SYSU_MODES)}, got {mode!r}")
    query = [r for r in dataset.test_infrared if r.camid in SYSU_QUERY_CAMS]
    gallery = sample_gallery(dataset.test_visible_index, dataset.test_ids,
                             SYSU_MODES[mode], VISIBLE, trial=trial, shots=shots)
    return query, gallery


def regdb_query_gallery(dataset, direction: str = "v2t") -> QueryGallery:
    """RegDB query and gallery (docs/datasets.md#regdb-protocol); no sampling.

    ``"v2t"`` (visible to thermal, the AGW default): query = all test visible
    images, gallery = all test thermal images.  ``"t2v"``: swapped.
    """
    if direction == "v2t":
        return list(dataset.test_visible), list(dataset.test_infrared)
    if direction == "t2v":
        return list(dataset.test_infrared), list(dataset.test_visible)
    raise ValueError(f"RegDB direction must be 'v2t' or 't2v', got {direction!r}")


def llcm_query_gallery(dataset, mode: str = "ir2vis", trial: int = 0) -> QueryGallery:
    """LLCM query and gallery for one trial (docs/datasets.md#llcm-protocol).

    ``"ir2vis"`` (DEEN default): query = all ``test_nir`` images; gallery =
    one random VIS image per (test id ascending, VIS camera 1..9 in order,
    folder exists), ``random.Random(trial)``, sorted listings.

    ``"vis2ir"``: query = all ``test_vis`` images; gallery = one random NIR
    image per (test id, NIR camera 1, 2, 4..9).

    Ambiguity note: DEEN's VIS->IR code path builds exactly these sets but
    then transposes the distance matrix (so the sampled NIR images effectively
    act as queries), and DMDL swaps the meaning of its mode flag.  We
    implement the clean definition above: the query set is always the full
    set of the query modality, and the gallery the sampled other modality.
    """
    if mode == "ir2vis":
        query = list(dataset.test_infrared)
        gallery = sample_gallery(dataset.test_visible_index, dataset.test_ids,
                                 LLCM_MODES[mode], VISIBLE, trial=trial)
    elif mode == "vis2ir":
        query = list(dataset.test_visible)
        gallery = sample_gallery(dataset.test_infrared_index, dataset.test_ids,
                                 LLCM_MODES[mode], INFRARED, trial=trial)
    else:
        raise ValueError(f"LLCM mode must be one of {sorted(LLCM_MODES)}, got {mode!r}")
    return query, gallery
