"""Association alternatives of DMDL Table 4: Hungarian (PGM's BGM), OT (DOTLA-style), dispatcher."""

import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from dmdl.pseudo_labels import associate, hungarian_matching, imca, ot_matching
from dmdl.pseudo_labels.association import _sinkhorn
from dmdl.testing import direction_features

OUTLIER_DIR = [0.3, -0.7, 0.2]


def _samples(dirs, labels):
    """Features: each cluster's direction scaled by 1.1 and 0.9 in turn (centroid direction kept)."""
    return direction_features(dirs, labels, OUTLIER_DIR, jitter=0.1)


def _cos(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


# IR (anchor) clusters along the axes; visible clusters 0 and 1 both prefer IR 0.
IR_DIRS = {0: [1.0, 0.0, 0.0], 1: [0.0, 1.0, 0.0], 2: [0.0, 0.0, 1.0]}
VIS_DIRS = {0: [1.0, 0.2, 0.0], 1: [1.0, 0.6, 0.1], 2: [0.1, 0.3, 1.0]}
LV = np.array([0, 1, 2, -1, 0, 1, 2, 2])
LI = np.array([2, 1, 0, 0, -1, 1, 2])


def test_hungarian_equals_bruteforce_and_is_one_to_one_where_imca_is_not():
    fv, fi = _samples(VIS_DIRS, LV), _samples(IR_DIRS, LI)
    cost = np.exp(-_cos([VIS_DIRS[k] for k in range(3)], [IR_DIRS[k] for k in range(3)]))
    best = min(itertools.permutations(range(3)), key=lambda perm: sum(cost[i, perm[i]] for i in range(3)))
    uv, ui, k = hungarian_matching(fv, LV, fi, LI, anchor="infrared")
    assert k == 3
    expected = np.array([best[c] if c >= 0 else -1 for c in LV])
    np.testing.assert_array_equal(uv, expected)
    np.testing.assert_array_equal(ui, LI)
    assert sorted(best) == [0, 1, 2] and best == (0, 1, 2)
    # iMCA on the same data is many-to-one: visible 0 and 1 both -> IR 0
    uv_imca, _, _ = imca(fv, LV, fi, LI, anchor="infrared")
    assert uv_imca[0] == uv_imca[1] == 0


def test_hungarian_anchor_visible_maps_infrared_clusters():
    # swap roles: IR clusters (VIS_DIRS geometry) are mapped onto visible clusters (axes)
    fv, fi = _samples(IR_DIRS, LI), _samples(VIS_DIRS, LV)
    uv, ui, k = hungarian_matching(fv, LI, fi, LV, anchor="visible")
    assert k == 3
    np.testing.assert_array_equal(uv, LI)
    np.testing.assert_array_equal(ui, [c if c >= 0 else -1 for c in LV])  # identity matching


def test_hungarian_second_pass_when_mapped_has_more_clusters():
    ir = {0: [1.0, 0.0], 1: [0.0, 1.0]}
    vis = {0: [1.0, 0.1], 1: [0.1, 1.0], 2: [1.0, 0.3], 3: [1.0, 0.5]}
    lv = np.array([0, 1, 2, 3, -1, 3, 2, 1, 0])
    li = np.array([0, 1, -1, 1, 0])
    uv, ui, k = hungarian_matching(_samples(vis, lv), lv, _samples(ir, li), li, anchor="infrared")
    assert k == 2
    cost = np.exp(-_cos([vis[c] for c in range(4)], [ir[c] for c in range(2)]))
    rows, cols = linear_sum_assignment(cost)  # first pass: one-to-one over 2 of the 4 clusters
    assert list(rows) == [0, 1] and list(cols) == [0, 1]
    # second pass on {2, 3}: both prefer IR 0; the joint optimum is 2 -> 0, 3 -> 1
    mapping = np.array([0, 1, 0, 1])
    np.testing.assert_array_equal(uv, np.where(lv >= 0, mapping[np.clip(lv, 0, None)], -1))
    assert np.all(uv[lv >= 0] >= 0)
    np.testing.assert_array_equal(ui, li)


def test_hungarian_more_than_twice_the_anchor_clusters():
    # PGM's padding crashes above 2x (issue #2); the repeated passes label every cluster
    ir = {0: [1.0, 0.0], 1: [0.0, 1.0]}
    vis = {c: [np.cos(a), np.sin(a)] for c, a in enumerate(np.linspace(0.0, np.pi / 2, 5))}
    lv = np.array([0, 1, 2, 3, 4, -1])
    li = np.array([0, 1])
    uv, _, k = hungarian_matching(_samples(vis, lv), lv, _samples(ir, li), li, anchor="infrared")
    assert k == 2 and np.all(uv[:5] >= 0) and uv[5] == -1
    assert uv[0] == 0 and uv[4] == 1


@pytest.mark.parametrize("fn", [hungarian_matching, ot_matching])
def test_outliers_stay_outliers_and_anchor_errors(fn):
    fv, fi = _samples(VIS_DIRS, LV), _samples(IR_DIRS, LI)
    for anchor in ("infrared", "visible"):
        uv, ui, _ = fn(fv, LV, fi, LI, anchor=anchor)
        assert uv.dtype == np.int64 and ui.dtype == np.int64
        np.testing.assert_array_equal(uv == -1, LV == -1)
        np.testing.assert_array_equal(ui == -1, LI == -1)
    with pytest.raises(ValueError, match="anchor"):
        fn(fv, LV, fi, LI, anchor="rgb")
    with pytest.raises(ValueError, match="at least one cluster"):
        fn(fv, np.full(len(LV), -1), fi, LI, anchor="infrared")


def test_sinkhorn_plan_has_uniform_marginals():
    rng = np.random.default_rng(0)
    cost = 1.0 - _cos(rng.normal(size=(5, 8)), rng.normal(size=(7, 8)))
    plan = _sinkhorn(cost, epsilon=0.05, n_iter=2000, tol=1e-4)
    assert plan.shape == (5, 7) and np.all(plan >= 0)
    np.testing.assert_allclose(plan.sum(axis=1), 1 / 5, atol=1e-3)
    np.testing.assert_allclose(plan.sum(axis=0), 1 / 7, atol=1e-3)
    assert plan.sum() == pytest.approx(1.0, abs=1e-3)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        _sinkhorn(cost, epsilon=0.05, n_iter=1, tol=1e-12)
    with pytest.raises(ValueError, match="epsilon"):
        _sinkhorn(cost, epsilon=0.0, n_iter=10, tol=1e-6)


def test_ot_well_separated_gives_obvious_matching():
    perm = {0: 2, 1: 0, 2: 1}  # visible cluster c sits on IR cluster perm[c]
    vis = {c: np.array(IR_DIRS[perm[c]]) + 0.05 for c in range(3)}
    uv, ui, k = ot_matching(_samples(vis, LV), LV, _samples(IR_DIRS, LI), LI, anchor="infrared")
    assert k == 3
    np.testing.assert_array_equal(uv, [perm[c] if c >= 0 else -1 for c in LV])
    np.testing.assert_array_equal(ui, LI)


def test_ot_balanced_marginals_spread_clusters_where_imca_merges():
    ir = {0: [1.0, 0.0], 1: [0.0, 1.0]}
    vis = {0: [1.0, 0.1], 1: [1.0, 0.4]}  # both closest to IR 0
    lv, li = np.array([0, 1, 1, 0]), np.array([0, 1])
    fv, fi = _samples(vis, lv), _samples(ir, li)
    np.testing.assert_array_equal(imca(fv, lv, fi, li, anchor="infrared")[0], [0, 0, 0, 0])
    np.testing.assert_array_equal(ot_matching(fv, lv, fi, li, anchor="infrared")[0], [0, 1, 1, 0])


def test_associate_dispatches_and_rejects_unknown_methods():
    fv, fi = _samples(VIS_DIRS, LV), _samples(IR_DIRS, LI)
    for name, fn in (("imca", imca), ("hungarian", hungarian_matching), ("ot", ot_matching)):
        got = associate(name, fv, LV, fi, LI, "visible")
        want = fn(fv, LV, fi, LI, "visible")
        for g, w in zip(got[:2], want[:2]):
            np.testing.assert_array_equal(g, w)
        assert got[2] == want[2]
    uv, _, _ = associate("ot", fv, LV, fi, LI, "infrared", epsilon=0.1, iterations=500)
    assert uv.shape == LV.shape
    with pytest.raises(ValueError, match=r"\['hungarian', 'imca', 'ot', 'mult'\].*'bgm'"):
        associate("bgm", fv, LV, fi, LI, "infrared")
