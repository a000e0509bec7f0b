import numpy as np
import pytest
import torch

from dmdl.pseudo_labels import imca
from dmdl.testing import direction_features


def test_imca_maps_clusters_to_most_similar_anchor_cluster():
    # visible clusters: 0 ~ x-axis, 1 ~ y-axis, 2 ~ between (closer to y); IR clusters: 0 ~ y, 1 ~ x
    vis_dirs = {0: [1.0, 0.05, 0.0], 1: [0.05, 1.0, 0.0], 2: [0.4, 1.0, 0.0]}
    ir_dirs = {0: [0.0, 1.0, 0.0], 1: [1.0, 0.0, 0.0]}
    lv = np.array([0, 0, 1, 2, -1, 1])
    li = np.array([1, 0, 0, -1, 1])
    outlier = [0.0, 0.0, 1.0]
    fv, fi = direction_features(vis_dirs, lv, outlier), direction_features(ir_dirs, li, outlier)
    uv, ui, k = imca(fv, lv, fi, li, anchor="infrared")
    assert k == 2
    np.testing.assert_array_equal(uv, [1, 1, 0, 0, -1, 0])  # many-to-one: clusters 1 and 2 -> IR 0
    np.testing.assert_array_equal(ui, li)
    uv2, ui2, k2 = imca(fv, lv, fi, li, anchor="visible")
    assert k2 == 3
    np.testing.assert_array_equal(uv2, lv)
    # IR 0 (y-axis): cos with vis1 = 1/|[.05,1]| ~ .9988, with vis2 = 1/|[.4,1]| ~ .928 -> vis 1
    np.testing.assert_array_equal(ui2, [0, 1, 1, -1, 0])


def test_imca_errors():
    f = torch.eye(3)
    with pytest.raises(ValueError, match="anchor"):
        imca(f, np.array([0, 0, 1]), f, np.array([0, 1, 1]), anchor="rgb")
    with pytest.raises(ValueError, match="at least one cluster"):
        imca(f, np.array([-1, -1, -1]), f, np.array([0, 1, 1]), anchor="infrared")


# ---- nearest_sample_matching (RegDB sample-level matching, docs/dmdl.md#A5.2) ----

from dmdl.pseudo_labels import nearest_sample_matching  # noqa: E402


def _polar(deg, norm=1.0):
    r = np.deg2rad(deg)
    return [norm * np.cos(r), norm * np.sin(r)]


# 2-D points given by angle (degrees) and norm; norms chosen so that a raw dot product
# would pick a different neighbour than cosine in several places.
IR_PTS = [(0, 1.0), (20, 10.0), (90, 1.0), (180, 1.0), (60, 1.0)]
IR_LAB = np.array([0, 0, 1, -1, 2])
VIS_PTS = [(5, 1.0), (45, 1.0), (170, 1.0), (80, 10.0), (30, 2.0)]
VIS_LAB = np.array([3, 0, 1, 2, -1])


def _pts(pts):
    return torch.tensor([_polar(a, n) for a, n in pts], dtype=torch.float32)


def test_nearest_sample_matching_hand_example_anchor_infrared():
    fv, fi = _pts(VIS_PTS), _pts(IR_PTS)
    lv0, li0 = VIS_LAB.copy(), IR_LAB.copy()
    uv, ui, k = nearest_sample_matching(fv, VIS_LAB, fi, IR_LAB, anchor="infrared")
    # v0 5deg -> ir0 (0deg) -> 0; v1 45deg -> ir4 (60deg, 15 away; ir1 at 20deg has norm 10
    # and would win by dot product) -> 2; v2 170deg -> ir3 (outlier) -> -1; v3 80deg -> ir2 -> 1;
    # v4 30deg (a visible outlier, still mapped) -> ir1 (20deg) -> 0
    np.testing.assert_array_equal(uv, [0, 2, -1, 1, 0])
    np.testing.assert_array_equal(ui, IR_LAB)
    assert k == 3
    np.testing.assert_array_equal(VIS_LAB, lv0)  # inputs not modified
    np.testing.assert_array_equal(IR_LAB, li0)


def test_nearest_sample_matching_hand_example_anchor_visible():
    fv, fi = _pts(VIS_PTS), _pts(IR_PTS)
    uv, ui, k = nearest_sample_matching(fv, VIS_LAB, fi, IR_LAB, anchor="visible")
    # ir0 0deg -> v0 (5deg) -> 3; ir1 20deg -> v4 (30deg, a visible outlier) -> -1;
    # ir2 90deg -> v3 (80deg) -> 2; ir3 180deg (an IR outlier, still mapped) -> v2 (170deg) -> 1;
    # ir4 60deg -> v1 (45deg; v3 at 80deg has norm 10 and would win by dot product) -> 0
    np.testing.assert_array_equal(ui, [3, -1, 2, 1, 0])
    np.testing.assert_array_equal(uv, VIS_LAB)
    assert k == 4  # anchor clusters 0..3


def _np_nearest(f_map, f_anchor, l_anchor):
    a = f_map / np.linalg.norm(f_map, axis=1, keepdims=True)
    b = f_anchor / np.linalg.norm(f_anchor, axis=1, keepdims=True)
    out = np.empty(len(a), dtype=np.int64)
    for i in range(len(a)):
        best, best_j = -np.inf, -1
        for j in range(len(b)):
            c = float(a[i] @ b[j])
            if c > best:
                best, best_j = c, j
        out[i] = l_anchor[best_j]
    return out


@pytest.mark.parametrize("anchor", ["infrared", "visible"])
def test_nearest_sample_matching_matches_numpy_bruteforce(anchor):
    rng = np.random.default_rng(0)
    fv = rng.normal(size=(40, 8)) * rng.uniform(0.2, 5, size=(40, 1))
    fi = rng.normal(size=(30, 8)) * rng.uniform(0.2, 5, size=(30, 1))
    lv = rng.integers(-1, 6, size=40)
    li = rng.integers(-1, 4, size=30)
    lv[:6], li[:4] = np.arange(6), np.arange(4)  # every cluster id present
    uv, ui, k = nearest_sample_matching(torch.tensor(fv, dtype=torch.float32), lv,
                                        torch.tensor(fi, dtype=torch.float32), li, anchor=anchor)
    if anchor == "infrared":
        np.testing.assert_array_equal(uv, _np_nearest(fv, fi, li))
        np.testing.assert_array_equal(ui, li)
        assert k == 4
    else:
        np.testing.assert_array_equal(ui, _np_nearest(fi, fv, lv))
        np.testing.assert_array_equal(uv, lv)
        assert k == 6


def test_nearest_sample_matching_mapped_modality_may_be_all_outliers():
    fv, fi = _pts(VIS_PTS), _pts(IR_PTS)
    uv, _, k = nearest_sample_matching(fv, np.full(5, -1), fi, IR_LAB, anchor="infrared")
    np.testing.assert_array_equal(uv, [0, 2, -1, 1, 0])
    assert k == 3


def test_nearest_sample_matching_errors():
    f = torch.eye(3)
    with pytest.raises(ValueError, match="anchor"):
        nearest_sample_matching(f, np.array([0, 0, 1]), f, np.array([0, 1, 1]), anchor="rgb")
    with pytest.raises(ValueError, match="infrared"):
        nearest_sample_matching(f, np.array([0, 0, 1]), f, np.array([-1, -1, -1]), anchor="infrared")
    with pytest.raises(ValueError, match="visible"):
        nearest_sample_matching(f, np.array([-1, -1, -1]), f, np.array([0, 1, 1]), anchor="visible")
