"""Retrieval metrics for visible-infrared re-identification: CMC, mAP and mINP.

Three protocol variants are provided; they differ only in which gallery items are
removed from a query's ranking and in whether the CMC is identity-deduplicated:

============  ===========================================  ==================
function      gallery items removed for a query             CMC
============  ===========================================  ==================
eval_sysu     camera 2, when the query camera is 3          identity-dedup
eval_llcm     same identity *and* same camera as the query  identity-dedup
eval_regdb    none                                          plain
============  ===========================================  ==================

Common definitions (per query, on the ranked and filtered gallery list):

* The gallery is sorted by ascending distance. Ties are broken **stably by gallery
  index** (``np.argsort(..., kind="stable")``), so equal distances keep the gallery
  order. The AGW/DDAG/DEEN reference code uses NumPy's default (unstable quicksort),
  so results on tied distances may differ from it; results without ties are identical.
* A query is *valid* when at least one gallery item with its identity survives the
  filtering. Invalid queries are skipped: they add nothing to any metric and are not
  counted in the divisor.
* AP = mean over the true matches of (matches up to and including that position) /
  (1-based position), on the filtered list **without** deduplication.
* INP = (number of true matches) / (1-based position of the last true match) on the
  same list (Ye et al., "Deep Learning for Person Re-identification: A Survey and
  Outlook", TPAMI 2021).
* CMC: rank-k is the fraction of valid queries whose first correct identity occurs
  within the first k entries. For the deduplicated variant (the SYSU-MM01 authors'
  MATLAB protocol) the filtered list first keeps only the first occurrence of every
  gallery identity. ``cmc[k - 1]`` is rank-k.

See docs/datasets.md#sysu-camera-rule/#metrics (SYSU-MM01), #regdb-protocol (RegDB) and #llcm-protocol (LLCM) of the
project specification.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["eval_sysu", "eval_llcm", "eval_regdb"]

# Number of (query, gallery) cells processed at once; bounds the temporary memory.
_CHUNK_CELLS = 1 << 22

_MODES = ("sysu", "llcm", "none")


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #
def _as_1d(name: str, values, expected_len: int, axis_desc: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.shape[0] != expected_len:
        raise ValueError(
            f"{name} has length {arr.shape[0]} but distmat has {expected_len} "
            f"{axis_desc} (distmat must have shape (num_query, num_gallery))"
        )
    return arr


def _check_distmat(distmat) -> np.ndarray:
    dist = np.asarray(distmat)
    if dist.ndim != 2:
        raise ValueError(
            f"distmat must be a 2-D array of shape (num_query, num_gallery), "
            f"got shape {dist.shape}"
        )
    if not (np.issubdtype(dist.dtype, np.floating) or np.issubdtype(dist.dtype, np.integer)):
        raise ValueError(f"distmat must hold real numbers, got dtype {dist.dtype}")
    if np.issubdtype(dist.dtype, np.floating) and not np.all(np.isfinite(dist)):
        raise ValueError("distmat contains NaN or infinite values")
    return dist


def _check_max_rank(max_rank) -> int:
    if isinstance(max_rank, (bool, np.bool_)) or not isinstance(max_rank, numbers.Integral):
        raise ValueError(f"max_rank must be an integer >= 1, got {max_rank!r}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    return int(max_rank)


# --------------------------------------------------------------------------- #
# shared core
# --------------------------------------------------------------------------- #
def _keep_mask(mode, q_pids, g_pids, q_camids, g_camids) -> np.ndarray:
    """Boolean (n_q, n_g) mask, in gallery-index order, of the items kept per query."""
    n_q, n_g = q_pids.shape[0], g_pids.shape[0]
    if mode == "sysu":
        # cam3 and cam2 are the same room: a cam3 query loses every cam2 item.
        return ~((q_camids == 3)[:, None] & (g_camids == 2)[None, :])
    if mode == "llcm":
        return ~((q_pids[:, None] == g_pids[None, :]) & (q_camids[:, None] == g_camids[None, :]))
    return np.ones((n_q, n_g), dtype=bool)


def _evaluate(dist, q_pids, g_pids, q_camids, g_camids, mode, dedup, max_rank):
    """Metrics for validated inputs.

    Works on blocks of queries; every step is vectorised over the block.

    Returns ``(cmc, mAP, mINP)`` as in the public functions.
    """
    n_q, n_g = dist.shape
    # rank_hist[r] = number of valid queries whose first correct entry is at 0-based
    # (possibly deduplicated) position r; positions >= max_rank are clipped to max_rank.
    rank_hist = np.zeros(max_rank + 1, dtype=np.int64)
    ap_sum = 0.0
    inp_sum = 0.0
    n_valid = 0

    if dedup and n_g > 0:
        # Group gallery columns by identity, for a per-identity minimum along each row.
        uniq, g_codes = np.unique(g_pids, return_inverse=True)
        g_codes = g_codes.reshape(-1)
        col_order = np.argsort(g_codes, kind="stable")
        group_starts = np.flatnonzero(
            np.r_[True, g_codes[col_order][1:] != g_codes[col_order][:-1]]
        )
        # Code of every query identity among the gallery identities (-1 if absent;
        # such a query has no match and is invalid anyway).
        q_pos = np.searchsorted(uniq, q_pids)
        q_pos_c = np.minimum(q_pos, len(uniq) - 1)
        q_codes = np.where(uniq[q_pos_c] == q_pids, q_pos_c, -1)

    block = max(1, _CHUNK_CELLS // max(n_g, 1))
    for start in range(0, n_q, block):
        stop = min(start + block, n_q)
        qp = q_pids[start:stop]

        order = np.argsort(dist[start:stop], axis=1, kind="stable")
        keep = _keep_mask(
            mode, qp, g_pids,
            None if q_camids is None else q_camids[start:stop], g_camids,
        )
        match = (qp[:, None] == g_pids[None, :]) & keep  # gallery-index order

        rel = np.take_along_axis(match, order, axis=1)   # sorted order, filtered matches
        keep_s = np.take_along_axis(keep, order, axis=1)
        pos = np.cumsum(keep_s, axis=1)               # 1-based position among kept
        hits = np.cumsum(rel, axis=1)
        n_rel = hits[:, -1] if n_g > 0 else np.zeros(stop - start, dtype=np.int64)
        valid = n_rel > 0
        if not np.any(valid):
            continue

        rel_v, pos_v, hits_v, n_rel_v = rel[valid], pos[valid], hits[valid], n_rel[valid]
        n_valid += int(valid.sum())

        # AP: mean over true matches of hits / position.
        # (pos is 0 before the first kept item; those cells are never true matches.)
        prec = np.where(rel_v, hits_v / np.maximum(pos_v, 1), 0.0)
        ap_sum += float(np.sum(prec.sum(axis=1) / n_rel_v))

        # INP: n_rel / position of the last true match.
        last_pos = np.max(np.where(rel_v, pos_v, 0), axis=1)
        inp_sum += float(np.sum(n_rel_v / last_pos))

        if dedup:
            # rank[i, j]: position of gallery item j in row i's sorted order; removed
            # items get n_g, which is larger than any real position.
            rank = np.empty((stop - start, n_g), dtype=np.int64)
            np.put_along_axis(rank, order, np.arange(n_g)[None, :], axis=1)
            rank = np.where(keep, rank, n_g)[valid]
            # First (kept) position of every gallery identity along each row.
            first_of_id = np.minimum.reduceat(rank[:, col_order], group_starts, axis=1)
            qc = q_codes[start:stop][valid]
            first_true = first_of_id[np.arange(len(qc)), qc]
            # Distinct identities seen before the first correct one = 0-based
            # position of the correct identity in the deduplicated list.
            first_rank = np.sum(first_of_id < first_true[:, None], axis=1)
        else:
            first_rank = np.argmax(rel_v, axis=1)
            first_rank = pos_v[np.arange(len(first_rank)), first_rank] - 1

        rank_hist += np.bincount(np.minimum(first_rank, max_rank), minlength=max_rank + 1)

    if n_valid == 0:
        raise ValueError(
            "no query has a true match in the gallery (after the protocol's gallery "
            "filtering); check q_pids/g_pids and the query/gallery split"
        )

    cmc = np.cumsum(rank_hist[:max_rank]).astype(np.float64) / n_valid
    return cmc, ap_sum / n_valid, inp_sum / n_valid


def _run(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, mode, dedup):
    assert mode in _MODES
    dist = _check_distmat(distmat)
    n_q, n_g = dist.shape
    max_rank = _check_max_rank(max_rank)
    q_pids = _as_1d("q_pids", q_pids, n_q, "rows (queries)")
    g_pids = _as_1d("g_pids", g_pids, n_g, "columns (gallery items)")
    if mode != "none":
        q_camids = _as_1d("q_camids", q_camids, n_q, "rows (queries)")
        g_camids = _as_1d("g_camids", g_camids, n_g, "columns (gallery items)")
    return _evaluate(dist, q_pids, g_pids, q_camids, g_camids, mode, dedup, max_rank)


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #
_COMMON_DOC = """
    Parameters
    ----------
    distmat : array_like, shape (num_query, num_gallery)
        Real, finite distances; smaller means more similar (e.g. the negative dot
        product of L2-normalised features). Ties are broken stably by gallery index.
    q_pids : array_like, shape (num_query,)
        Query identity labels (any comparable dtype, typically integer).
    g_pids : array_like, shape (num_gallery,)
        Gallery identity labels, same kind as ``q_pids``.
{cam_params}    max_rank : int, default 20
        Length of the returned CMC curve; must be >= 1. It may exceed the gallery
        size: the curves are cumulative, so each per-query curve is padded with its
        last value (1 for a valid query).

    Returns
    -------
    cmc : numpy.ndarray of float64, shape (max_rank,)
        ``cmc[k - 1]`` is rank-k accuracy, a fraction in [0, 1] (multiply by 100 for
        percent), averaged over valid queries.
    mAP : float
        Mean average precision over valid queries, a fraction in [0, 1].
    mINP : float
        Mean inverse negative penalty over valid queries, a fraction in [0, 1].

    Raises
    ------
    ValueError
        If ``distmat`` is not 2-D or has non-real dtype, if it contains NaN or
        infinite values, if a pid/camid array is not 1-D or its length does not
        match the corresponding ``distmat`` dimension, if ``max_rank`` is not an
        integer >= 1, or if no query has a true match in the (filtered) gallery.
"""

_CAM_PARAMS = """    q_camids : array_like of int, shape (num_query,)
        Query camera ids.
    g_camids : array_like of int, shape (num_gallery,)
        Gallery camera ids.
"""


def eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    return _run(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, "sysu", True)


eval_sysu.__doc__ = (
    """SYSU-MM01 evaluation: CMC (identity-deduplicated), mAP and mINP.

    For each query the gallery is sorted by ascending distance (stable ties by gallery
    index). If the query comes from camera 3, every gallery item from camera 2 is
    removed, whatever its identity (cameras 2 and 3 share a room; docs/datasets.md#sysu-camera-rule).
    Queries from other cameras keep the whole gallery. On the filtered list:

    * CMC: identity-deduplicated, following the SYSU-MM01 authors' MATLAB protocol —
      only the first occurrence of each gallery identity is kept, so a wrong identity
      appearing several times ahead of the correct one costs one rank.
    * AP and INP on the filtered, non-deduplicated list (INP from Ye et al., TPAMI
      2021).
    * Queries with no true match after filtering are skipped and not counted.

    Source: docs/datasets.md#metrics; docs/datasets.md#metrics.
"""
    + _COMMON_DOC.format(cam_params=_CAM_PARAMS)
)


def eval_llcm(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    return _run(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, "llcm", True)


eval_llcm.__doc__ = (
    """LLCM evaluation: CMC (identity-deduplicated), mAP and mINP.

    Identical to :func:`eval_sysu` except for the removal rule: for each query, the
    gallery items with the **same identity and the same camera id** as the query are
    removed (a VIS camera k and NIR camera k are one physical dual-mode camera). Ties
    are broken stably by gallery index; queries with no remaining true match are
    skipped.

    Source: docs/datasets.md#llcm-protocol; docs/datasets.md#metrics.
"""
    + _COMMON_DOC.format(cam_params=_CAM_PARAMS)
)


def eval_regdb(distmat, q_pids, g_pids, max_rank=20):
    return _run(distmat, q_pids, g_pids, None, None, max_rank, "none", False)


eval_regdb.__doc__ = (
    """RegDB evaluation: plain CMC, mAP and mINP.

    No gallery item is removed and the CMC is not deduplicated: rank-k is 1 for a
    query when any of its first k ranked gallery items has the query identity
    (first-match cumulative). Ties are broken stably by gallery index. Queries with no
    true match in the gallery are skipped (never the case on the standard RegDB split).

    Source: docs/datasets.md#regdb-protocol; docs/datasets.md#metrics; INP from Ye et al., TPAMI
    2021.
"""
    + _COMMON_DOC.format(cam_params="")
)
