"""Tests for dmdl.evaluation.metrics (CMC / mAP / mINP for SYSU, LLCM, RegDB).

Expected numbers in the hand-computed cases are derived in the comments; the
randomised tests compare against a plain per-query Python loop written below.
"""

import numpy as np
import pytest

from dmdl.evaluation.metrics import eval_llcm, eval_regdb, eval_sysu


def _check(result, cmc, mAP, mINP):
    got_cmc, got_map, got_minp = result
    assert isinstance(got_cmc, np.ndarray)
    assert got_cmc.dtype == np.float64
    assert isinstance(got_map, float) and isinstance(got_minp, float)
    np.testing.assert_allclose(got_cmc, cmc, rtol=0, atol=1e-12)
    assert got_map == pytest.approx(mAP, abs=1e-12)
    assert got_minp == pytest.approx(mINP, abs=1e-12)


# --------------------------------------------------------------------------- #
# A small shared case: 3 queries, 5 gallery items, one camera each side.
# --------------------------------------------------------------------------- #
G_PIDS = np.array([1, 2, 3, 1, 2])
Q_PIDS = np.array([1, 2, 3])
DIST = np.array(
    [
        # q0 (pid 1): order g1 g2 g4 g0 g3 -> pids 2 3 2 1 1
        #   matches at positions 4, 5 -> first match rank 4 (plain)
        #   AP = (1/4 + 2/5) / 2 = 0.325 ; INP = 2/5 = 0.4
        #   dedup list: 2 3 1 -> rank 3 (pid 2 seen twice counts once)
        [0.5, 0.1, 0.2, 0.9, 0.3],
        # q1 (pid 2): order g1 g0 g2 g3 g4 -> pids 2 1 3 1 2
        #   matches at 1, 5 -> rank 1 ; AP = (1/1 + 2/5) / 2 = 0.7 ; INP = 2/5
        #   dedup list: 2 1 3 -> rank 1
        [0.3, 0.0, 0.4, 0.5, 0.6],
        # q2 (pid 3): order g0 g1 g2 g3 g4 -> pids 1 2 3 1 2
        #   match at 3 -> rank 3 ; AP = 1/3 ; INP = 1/3 ; dedup list 1 2 3 -> rank 3
        [0.1, 0.2, 0.3, 0.4, 0.5],
    ]
)
MAP = (0.325 + 0.7 + 1 / 3) / 3
MINP = (0.4 + 0.4 + 1 / 3) / 3


def test_regdb_hand_computed_ranks_1_3_4():
    # per-query curves (max_rank 5): q0 [0,0,0,1,1], q1 [1,1,1,1,1], q2 [0,0,1,1,1]
    cmc = np.array([1, 1, 2, 3, 3]) / 3
    _check(eval_regdb(DIST, Q_PIDS, G_PIDS, max_rank=5), cmc, MAP, MINP)


def test_sysu_dedup_cmc_counts_repeated_wrong_identity_once():
    # No cam3 query, so nothing is removed; AP/INP equal the RegDB numbers.
    # dedup curves: q0 [0,0,1,1,1] (rank 3 instead of 4), q1 all 1, q2 [0,0,1,1,1]
    cams_q = np.array([6, 6, 6])
    cams_g = np.array([1, 2, 4, 5, 1])
    cmc = np.array([1, 1, 3, 3, 3]) / 3
    _check(eval_sysu(DIST, Q_PIDS, G_PIDS, cams_q, cams_g, max_rank=5), cmc, MAP, MINP)
    # LLCM: query cameras (6) never equal gallery cameras -> nothing removed, same result
    _check(eval_llcm(DIST, Q_PIDS, G_PIDS, cams_q, cams_g, max_rank=5), cmc, MAP, MINP)


def test_default_max_rank_and_padding():
    # Gallery of 5 but max_rank 20: dedup lists have 3 entries, curves padded with
    # their last value (1), so cmc[2:] == 1.
    cmc, _, _ = eval_sysu(DIST, Q_PIDS, G_PIDS, [6, 6, 6], [1, 1, 1, 1, 1])
    assert cmc.shape == (20,)
    np.testing.assert_allclose(cmc, [1 / 3, 1 / 3] + [1.0] * 18)
    cmc, _, _ = eval_regdb(DIST, Q_PIDS, G_PIDS)
    assert cmc.shape == (20,)
    np.testing.assert_allclose(cmc, [1 / 3, 1 / 3, 2 / 3] + [1.0] * 17)


def test_max_rank_one():
    cmc, _, _ = eval_regdb(DIST, Q_PIDS, G_PIDS, max_rank=1)
    np.testing.assert_allclose(cmc, [1 / 3])


# --------------------------------------------------------------------------- #
# Ties
# --------------------------------------------------------------------------- #
def test_ties_broken_stably_by_gallery_index():
    dist = np.array([[0.5, 0.5, 0.5]])
    # gallery pids 7 8 9, query pid 9: stable order g0 g1 g2 -> match at 3
    # rank 3, AP = 1/3, INP = 1/3
    _check(eval_regdb(dist, [9], [7, 8, 9], max_rank=3), [0, 0, 1], 1 / 3, 1 / 3)
    # query pid 7: match at position 1 -> AP = INP = 1
    _check(eval_regdb(dist, [7], [7, 8, 9], max_rank=3), [1, 1, 1], 1.0, 1.0)
    # integer distances with ties: [2, 1, 1, 2] -> order g1 g2 g0 g3
    # pids 5 6 6 5 -> ranked 6 6 5 5; query pid 5: matches at 3, 4
    # plain: rank 3, AP = (1/3 + 2/4)/2 = 5/12, INP = 2/4
    d = np.array([[2, 1, 1, 2]])
    _check(eval_regdb(d, [5], [5, 6, 6, 5], max_rank=4), [0, 0, 1, 1], 5 / 12, 0.5)
    # dedup: 6 5 -> rank 2 (curve padded to length 4)
    _check(eval_sysu(d, [5], [5, 6, 6, 5], [6], [1, 1, 1, 1], max_rank=4),
           [0, 1, 1, 1], 5 / 12, 0.5)


# --------------------------------------------------------------------------- #
# Queries without a match
# --------------------------------------------------------------------------- #
def test_query_without_match_is_skipped():
    # q0 pid 1 matches at rank 1 (AP = INP = 1); q1 pid 9 has no match -> skipped,
    # divisor is 1, not 2.
    dist = np.array([[0.1, 0.2], [0.3, 0.4]])
    _check(eval_regdb(dist, [1, 9], [1, 2], max_rank=2), [1, 1], 1.0, 1.0)
    _check(eval_sysu(dist, [1, 9], [1, 2], [3, 6], [1, 1], max_rank=2), [1, 1], 1.0, 1.0)
    # Adding a match-less query to the shared case changes nothing.
    d = np.vstack([DIST, [0.0, 0.1, 0.2, 0.3, 0.4]])
    _check(eval_regdb(d, [1, 2, 3, 42], G_PIDS, max_rank=5),
           np.array([1, 1, 2, 3, 3]) / 3, MAP, MINP)


def test_all_queries_invalid_raises():
    dist = np.zeros((2, 3))
    with pytest.raises(ValueError, match="no query has a true match"):
        eval_regdb(dist, [8, 9], [1, 2, 3])
    with pytest.raises(ValueError, match="no query has a true match"):
        eval_llcm(dist, [8, 9], [1, 2, 3], [1, 1], [2, 2, 2])
    # SYSU: the only true match is on cam2 and the query is cam3 -> filtered out.
    with pytest.raises(ValueError, match="no query has a true match"):
        eval_sysu(np.zeros((1, 2)), [1], [1, 2], [3], [2, 1])
    # LLCM: the only true match has the query's pid and camera -> filtered out.
    with pytest.raises(ValueError, match="no query has a true match"):
        eval_llcm(np.zeros((1, 2)), [1], [1, 2], [4], [4, 1])


# --------------------------------------------------------------------------- #
# Removal rules
# --------------------------------------------------------------------------- #
CAM_G_PIDS = np.array([1, 2, 1, 3])
CAM_G_CAMS = np.array([2, 2, 1, 4])
CAM_DIST = np.array([[0.3, 0.1, 0.2, 0.4]])  # order g1 g2 g0 g3 -> pids 2 1 1 3


def test_sysu_cam3_query_drops_all_cam2_items():
    # cam3 query, pid 1: g1 (pid 2, cam2) and g0 (pid 1, cam2) are both removed,
    # the wrong identity included. Left: g2 (pid 1), g3 (pid 3) -> match at 1.
    # rank 1, AP = 1, INP = 1/1 = 1
    _check(eval_sysu(CAM_DIST, [1], CAM_G_PIDS, [3], CAM_G_CAMS, max_rank=3),
           [1, 1, 1], 1.0, 1.0)


def test_sysu_cam6_and_cam2_queries_keep_gallery():
    # pids 2 1 1 3 -> matches at 2, 3: AP = (1/2 + 2/3)/2 = 7/12, INP = 2/3
    # dedup list 2 1 3 -> rank 2
    for cam in (6, 2, 1):
        _check(eval_sysu(CAM_DIST, [1], CAM_G_PIDS, [cam], CAM_G_CAMS, max_rank=3),
               [0, 1, 1], 7 / 12, 2 / 3)


def test_llcm_drops_same_pid_same_camera_only():
    # query pid 1 cam2: removes g0 (pid 1, cam 2) only; g1 (pid 2, cam 2) stays.
    # kept pids 2 1 3 -> match at 2: rank 2, AP = 1/2, INP = 1/2
    _check(eval_llcm(CAM_DIST, [1], CAM_G_PIDS, [2], CAM_G_CAMS, max_rank=3),
           [0, 1, 1], 0.5, 0.5)
    # query pid 1 cam3: nothing removed (no cam3 gallery), same as SYSU cam6 above
    _check(eval_llcm(CAM_DIST, [1], CAM_G_PIDS, [3], CAM_G_CAMS, max_rank=3),
           [0, 1, 1], 7 / 12, 2 / 3)
    # query pid 1 cam1: removes g2 (pid 1, cam 1); kept pids 2 1 3 (g1, g0, g3)
    # match at 2: AP = 1/2, INP = 1/2
    _check(eval_llcm(CAM_DIST, [1], CAM_G_PIDS, [1], CAM_G_CAMS, max_rank=3),
           [0, 1, 1], 0.5, 0.5)


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #
def test_bad_inputs_raise():
    d = np.zeros((2, 3))
    with pytest.raises(ValueError, match="distmat"):
        eval_regdb(np.zeros(3), [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="q_pids"):
        eval_regdb(d, [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="g_pids"):
        eval_regdb(d, [1, 2], [1, 2])
    with pytest.raises(ValueError, match="g_pids"):
        eval_regdb(d, [1, 2], [[1, 2, 3]])
    with pytest.raises(ValueError, match="q_camids"):
        eval_sysu(d, [1, 2], [1, 2, 3], [3], [1, 1, 1])
    with pytest.raises(ValueError, match="g_camids"):
        eval_llcm(d, [1, 2], [1, 2, 3], [3, 3], [1, 1])
    bad = d.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        eval_regdb(bad, [1, 2], [1, 2, 3])
    bad[1, 2] = -np.inf
    with pytest.raises(ValueError, match="infinite"):
        eval_sysu(bad, [1, 2], [1, 2, 3], [3, 6], [1, 1, 1])
    for mr in (0, -1, 2.5):
        with pytest.raises(ValueError, match="max_rank"):
            eval_regdb(d, [1, 2], [1, 2, 3], max_rank=mr)


# --------------------------------------------------------------------------- #
# Randomised comparison against a straightforward per-query loop
# --------------------------------------------------------------------------- #
def _naive(dist, q_pids, g_pids, q_cams, g_cams, rule, dedup, max_rank):
    n_q, n_g = len(dist), len(dist[0])
    curves, aps, inps = [], [], []
    for i in range(n_q):
        ranked = sorted(range(n_g), key=lambda j: (dist[i][j], j))
        kept = []
        for j in ranked:
            if rule == "sysu" and q_cams[i] == 3 and g_cams[j] == 2:
                continue
            if rule == "llcm" and q_pids[i] == g_pids[j] and q_cams[i] == g_cams[j]:
                continue
            kept.append(j)
        labels = [g_pids[j] for j in kept]
        matches = [lab == q_pids[i] for lab in labels]
        if not any(matches):
            continue
        if dedup:
            seen, unique_labels = set(), []
            for lab in labels:
                if lab not in seen:
                    seen.add(lab)
                    unique_labels.append(lab)
            first = unique_labels.index(q_pids[i])
        else:
            first = matches.index(True)
        curves.append([1.0 if k >= first else 0.0 for k in range(max_rank)])
        hits, total, last = 0, 0.0, 0
        for pos, m in enumerate(matches, start=1):
            if m:
                hits += 1
                total += hits / pos
                last = pos
        aps.append(total / hits)
        inps.append(hits / last)
    if not curves:
        return None
    n = len(curves)
    cmc = [sum(c[k] for c in curves) / n for k in range(max_rank)]
    return np.array(cmc), sum(aps) / n, sum(inps) / n


@pytest.mark.parametrize("seed", range(12))
def test_random_against_naive_loop(seed):
    rng = np.random.default_rng(seed)
    n_q = int(rng.integers(1, 40))
    n_g = int(rng.integers(1, 30))
    n_ids = int(rng.integers(1, 9))
    q_pids = rng.integers(0, n_ids, n_q)
    g_pids = rng.integers(0, n_ids, n_g)
    q_cams = rng.integers(1, 7, n_q)
    g_cams = rng.integers(1, 7, n_g)
    dist = rng.integers(0, 4, (n_q, n_g))  # few values -> many ties
    if seed % 2:
        dist = dist.astype(np.float32) * 0.5 - 1.0
    max_rank = int(rng.choice([1, 5, 20, n_g + 3]))

    cases = [
        (lambda: eval_sysu(dist, q_pids, g_pids, q_cams, g_cams, max_rank), "sysu", True),
        (lambda: eval_llcm(dist, q_pids, g_pids, q_cams, g_cams, max_rank), "llcm", True),
        (lambda: eval_regdb(dist, q_pids, g_pids, max_rank), "none", False),
    ]
    dl = dist.tolist()
    ql, gl, qcl, gcl = q_pids.tolist(), g_pids.tolist(), q_cams.tolist(), g_cams.tolist()
    for fn, rule, dedup in cases:
        expected = _naive(dl, ql, gl, qcl, gcl, rule, dedup, max_rank)
        if expected is None:
            with pytest.raises(ValueError, match="no query has a true match"):
                fn()
            continue
        cmc, mAP, mINP = fn()
        assert cmc.shape == (max_rank,)
        np.testing.assert_allclose(cmc, expected[0], rtol=0, atol=1e-12)
        assert mAP == pytest.approx(expected[1], abs=1e-12)
        assert mINP == pytest.approx(expected[2], abs=1e-12)
        assert 0.0 <= mAP <= 1.0 and 0.0 <= mINP <= 1.0


def test_chunked_path_matches_naive(monkeypatch):
    # Force tiny blocks so that the per-block accumulation is exercised.
    import dmdl.evaluation.metrics as m

    monkeypatch.setattr(m, "_CHUNK_CELLS", 7)
    rng = np.random.default_rng(123)
    q_pids, g_pids = rng.integers(0, 5, 25), rng.integers(0, 5, 11)
    q_cams, g_cams = rng.choice([3, 6], 25), rng.integers(1, 5, 11)
    dist = rng.integers(0, 3, (25, 11))
    exp = _naive(dist.tolist(), q_pids.tolist(), g_pids.tolist(), q_cams.tolist(),
                 g_cams.tolist(), "sysu", True, 10)
    cmc, mAP, mINP = m.eval_sysu(dist, q_pids, g_pids, q_cams, g_cams, 10)
    np.testing.assert_allclose(cmc, exp[0], atol=1e-12)
    assert mAP == pytest.approx(exp[1]) and mINP == pytest.approx(exp[2])
