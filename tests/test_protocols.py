"""Query/gallery construction against independent re-derivations."""

import os
import random
from collections import Counter
from pathlib import Path

import pytest

from dmdl.data import INFRARED, LLCM, VISIBLE, RegDB, SYSUMM01
from dmdl.evaluation.protocols import (llcm_query_gallery, regdb_query_gallery,
                                       sysu_query_gallery)


@pytest.fixture(scope="module")
def sysu(toy_sysu):
    return SYSUMM01(toy_sysu)


@pytest.fixture(scope="module")
def llcm(toy_llcm):
    return LLCM(toy_llcm)


def _reference_gallery(base, test_ids, cam_dirs, trial):
    """The AGW/DEEN draw: random.seed(trial), one random.choice per folder."""
    random.seed(trial)
    out = []
    for pid in sorted(test_ids):
        for cam_dir in cam_dirs:
            d = os.path.join(base, cam_dir, "%04d" % pid)
            if os.path.isdir(d):
                files = sorted(os.path.join(d, n) for n in os.listdir(d))
                out.append(random.choice(files))
    return out


def _sysu_test_ids(root):
    return [int(x) for x in (Path(root) / "exp" / "test_id.txt").read_text().split(",")]


@pytest.mark.parametrize("mode,cams", [("all", (1, 2, 4, 5)), ("indoor", (1, 2))])
def test_sysu_gallery_one_per_folder(sysu, mode, cams):
    _, gallery = sysu_query_gallery(sysu, mode=mode, trial=0)
    keys = [(r.pid, r.camid) for r in gallery]
    assert len(keys) == len(set(keys))
    expected = {k for k in sysu.test_visible_index if k[1] in cams}
    assert set(keys) == expected and expected
    assert {r.camid for r in gallery} <= set(cams)
    assert all(r.modality == VISIBLE and os.path.isfile(r.path) for r in gallery)
    assert all(r.path in sysu.test_visible_index[(r.pid, r.camid)] for r in gallery)


@pytest.mark.parametrize("mode,cams", [("all", (1, 2, 4, 5)), ("indoor", (1, 2))])
def test_sysu_gallery_matches_reference_draw(toy_sysu, sysu, mode, cams):
    base = os.path.realpath(toy_sysu)
    ids = _sysu_test_ids(toy_sysu)
    galleries = []
    for trial in range(10):
        _, gallery = sysu_query_gallery(sysu, mode=mode, trial=trial)
        ref = _reference_gallery(base, ids, [f"cam{c}" for c in cams], trial)
        assert [r.path for r in gallery] == ref
        galleries.append(tuple(r.path for r in gallery))
    assert galleries[0] == tuple(r.path for r in sysu_query_gallery(sysu, mode, trial=0)[1])
    assert len(set(galleries)) > 1


def test_sysu_query(toy_sysu, sysu):
    base = os.path.realpath(toy_sysu)
    q0, _ = sysu_query_gallery(sysu, "all", trial=0)
    q5, _ = sysu_query_gallery(sysu, "indoor", trial=5)
    assert q0 == q5
    assert q0 and {r.camid for r in q0} <= {3, 6}
    assert all(r.modality == INFRARED for r in q0)
    expected = []
    for pid in sorted(_sysu_test_ids(toy_sysu)):
        for cam in (3, 6):
            d = os.path.join(base, f"cam{cam}", "%04d" % pid)
            if os.path.isdir(d):
                expected += sorted(os.path.join(d, n) for n in os.listdir(d))
    assert [r.path for r in q0] == expected


def test_sysu_multishot(sysu):
    _, g = sysu_query_gallery(sysu, "all", trial=2, shots=10)
    counts = Counter((r.pid, r.camid) for r in g)
    for key, files in sysu.test_visible_index.items():
        assert counts[key] == min(10, len(files))
    assert len({r.path for r in g}) == len(g)
    _, g2 = sysu_query_gallery(sysu, "all", trial=2, shots=10)
    assert g == g2


def test_sysu_bad_args(sysu):
    with pytest.raises(ValueError, match="mode"):
        sysu_query_gallery(sysu, mode="outdoor")
    with pytest.raises(ValueError, match="trial"):
        sysu_query_gallery(sysu, trial=-1)
    with pytest.raises(ValueError, match="shots"):
        sysu_query_gallery(sysu, shots=0)


def test_protocols_do_not_touch_disk(sysu, llcm, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("protocol listed a directory")

    monkeypatch.setattr(os, "listdir", boom)
    monkeypatch.setattr(os, "scandir", boom)
    sysu_query_gallery(sysu, "all", trial=1)
    llcm_query_gallery(llcm, "ir2vis", trial=1)
    llcm_query_gallery(llcm, "vis2ir", trial=1)


def test_regdb_directions(toy_regdb):
    ds = RegDB(toy_regdb, trial=2)
    q, g = regdb_query_gallery(ds, "v2t")
    assert q == ds.test_visible and g == ds.test_infrared
    q, g = regdb_query_gallery(ds, "t2v")
    assert q == ds.test_infrared and g == ds.test_visible
    assert {r.camid for r in q} == {2} and {r.camid for r in g} == {1}
    with pytest.raises(ValueError, match="direction"):
        regdb_query_gallery(ds, "both")


@pytest.mark.parametrize("mode,qmod,gmod,gdir,cams", [
    ("ir2vis", INFRARED, VISIBLE, "test_vis", (1, 2, 3, 4, 5, 6, 7, 8, 9)),
    ("vis2ir", VISIBLE, INFRARED, "test_nir", (1, 2, 4, 5, 6, 7, 8, 9)),
])
def test_llcm_modes(toy_llcm, llcm, mode, qmod, gmod, gdir, cams):
    base = os.path.realpath(toy_llcm)
    ids = [int(x) for x in (Path(toy_llcm) / "idx" / "test_id.txt").read_text().split(",")]
    galleries = set()
    for trial in range(10):
        q, g = llcm_query_gallery(llcm, mode, trial=trial)
        assert q == (llcm.test_infrared if qmod == INFRARED else llcm.test_visible)
        assert all(r.modality == gmod for r in g) and all(r.modality == qmod for r in q)
        keys = [(r.pid, r.camid) for r in g]
        assert len(keys) == len(set(keys))
        index = llcm.test_visible_index if gmod == VISIBLE else llcm.test_infrared_index
        assert set(keys) == set(index)
        assert {r.camid for r in g} <= set(cams)
        ref = _reference_gallery(os.path.join(base, gdir), ids, [f"cam{c}" for c in cams], trial)
        assert [r.path for r in g] == ref
        galleries.add(tuple(ref))
    assert len(galleries) > 1
    with pytest.raises(ValueError, match="mode"):
        llcm_query_gallery(llcm, "ir2ir")
