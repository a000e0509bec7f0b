"""Dataset readers on generated layouts (and the real RegDB-mini when present)."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmdl.data import (INFRARED, LLCM, VISIBLE, ImageRecord, RegDB, SYSUMM01,
                       ensure_toy_dataset, make_toy_dataset, toy_default_root)


def _check_records(records, modality, cams):
    for r in records:
        assert isinstance(r, ImageRecord)
        assert os.path.isabs(r.path) and os.path.isfile(r.path)
        assert r.modality == modality
        assert r.camid in cams


def _ids_in_file(path):
    return [int(x) for x in Path(path).read_text().strip().split(",")]


# ----------------------------------------------------------------- RegDB ----
def test_regdb_toy_trial1(toy_regdb):
    ds = RegDB(toy_regdb, trial=1)
    assert len(ds.train_visible) == len(ds.train_infrared) == 60
    assert len(ds.test_visible) == len(ds.test_infrared) == 60
    assert len(ds.train_ids) == len(ds.test_ids) == 6
    assert not set(ds.train_ids) & set(ds.test_ids)
    _check_records(ds.train_visible + ds.test_visible, VISIBLE, {1})
    _check_records(ds.train_infrared + ds.test_infrared, INFRARED, {2})
    for r in ds.train_visible + ds.train_infrared + ds.test_visible + ds.test_infrared:
        p = Path(r.path)
        assert p.parent.parent.name == ("Visible" if r.modality == VISIBLE else "Thermal")
        assert int(p.parent.name) == r.pid and p.name.endswith(f"_{r.pid}.bmp")
    # visible / thermal lists are line-paired by frame
    for v, t in zip(ds.train_visible, ds.train_infrared):
        assert Path(v.path).name.replace("_v_", "_t_") == Path(t.path).name
    # labels renumbered by first appearance, 10 consecutive lines per id
    assert ds.train_labels_visible == [i // 10 for i in range(60)]
    assert "train" in ds.summary() and "RegDB" in repr(ds)


def test_regdb_toy_trials_differ_and_images(toy_regdb):
    splits = {tuple(RegDB(toy_regdb, trial=t).test_ids) for t in range(1, 11)}
    assert len(splits) > 1
    ds = RegDB(toy_regdb, trial=3)
    v = ds.train_visible[0].path
    t = ds.train_infrared[0].path
    assert os.path.getsize(v) == 24630  # 64x128, 24-bit BMP
    with Image.open(v) as im:
        assert im.format == "BMP" and im.mode == "RGB" and im.size == (64, 128)
    with Image.open(t) as im:
        a = np.asarray(im)
    assert a.shape == (128, 64, 3)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()


@pytest.mark.parametrize("trial", [0, 11, "1", 1.0, True])
def test_regdb_bad_trial(toy_regdb, trial):
    with pytest.raises(ValueError, match="trial"):
        RegDB(toy_regdb, trial=trial)


@pytest.fixture
def small_regdb(tmp_path):
    return make_toy_dataset(tmp_path / "RegDB", "regdb", num_ids=4, images_per_id=2, trials=1)


def test_regdb_missing_root_and_idx(small_regdb, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RegDB(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train_visible_2.txt"):
        RegDB(small_regdb, trial=2)
    (small_regdb / "idx" / "test_thermal_1.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test_thermal_1.txt"):
        RegDB(small_regdb, trial=1)


@pytest.mark.parametrize("bad", [
    "Visible/5/male_front_v_00001_5.bmp",             # no label
    "Visible/5/male_front_v_00001_5.bmp x",           # label not int
    "Thermal/5/male_front_t_00001_5.bmp 0",           # wrong modality folder
    "Visible/5/male_front_v_00001_6.bmp 0",           # suffix pid != folder pid
    "Visible/abc/male_front_v_00001_5.bmp 0",         # pid folder not a number
    "male_front_v_00001_5.bmp 0",                     # no folders
])
def test_regdb_malformed_line(small_regdb, bad):
    f = small_regdb / "idx" / "train_visible_1.txt"
    lines = f.read_text().splitlines()
    lines.insert(1, bad)
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train_visible_1\.txt:2"):
        RegDB(small_regdb, trial=1)


def test_regdb_missing_image(small_regdb):
    first = (small_regdb / "idx" / "test_visible_1.txt").read_text().split()[0]
    (small_regdb / first).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(Path(first).name)):
        RegDB(small_regdb, trial=1)


def test_regdb_mini_real(regdb_mini):
    ds = RegDB(regdb_mini, trial=1)
    assert len(ds.train_visible) == len(ds.train_infrared) == 480
    assert len(ds.test_visible) == len(ds.test_infrared) == 480
    assert len(ds.train_ids) == len(ds.test_ids) == 48
    assert not set(ds.train_ids) & set(ds.test_ids)
    assert ds.train_visible[0].pid == 285 and ds.train_visible[0].camid == 1
    assert ds.train_infrared[0].modality == INFRARED and ds.train_infrared[0].camid == 2
    for r in ds.test_visible[:20] + ds.test_infrared[:20]:
        assert int(Path(r.path).parent.name) == r.pid
    for t in range(2, 11):
        d = RegDB(regdb_mini, trial=t)
        assert not set(d.train_ids) & set(d.test_ids)


# ------------------------------------------------------------------ SYSU ----
def _walk_sysu(base, ids, cams):
    out = []
    for pid in sorted(ids):
        for cam in cams:
            d = os.path.join(base, f"cam{cam}", f"{pid:04d}")
            if os.path.isdir(d):
                out += [(os.path.join(d, n), pid, cam) for n in sorted(os.listdir(d))]
    return out


def test_sysu_toy(toy_sysu):
    ds = SYSUMM01(toy_sysu)
    exp = toy_sysu / "exp"
    train, val, test = (set(_ids_in_file(exp / f"{n}_id.txt")) for n in ("train", "val", "test"))
    avail = set(_ids_in_file(exp / "available_id.txt"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == avail
    assert ds.train_ids == sorted(train | val) and ds.test_ids == sorted(test)
    assert ds.val_ids == sorted(val)
    base = os.path.realpath(toy_sysu)
    for recs, ids, cams, mod in [(ds.train_visible, train | val, (1, 2, 4, 5), VISIBLE),
                                 (ds.train_infrared, train | val, (3, 6), INFRARED),
                                 (ds.test_visible, test, (1, 2, 4, 5), VISIBLE),
                                 (ds.test_infrared, test, (3, 6), INFRARED)]:
        assert [(r.path, r.pid, r.camid) for r in recs] == _walk_sysu(base, ids, cams)
        _check_records(recs, mod, set(cams))
        for r in recs:
            p = Path(r.path)
            assert p.parent.parent.name == f"cam{r.camid}" and int(p.parent.name) == r.pid
    # not every id in every camera
    present = {(r.pid, r.camid) for r in ds.train_visible + ds.test_visible}
    assert len(present) < 4 * len(avail)
    assert set(ds.test_visible_index) == {(r.pid, r.camid) for r in ds.test_visible}
    assert all(list(v) == sorted(v) for v in ds.test_visible_index.values())
    assert "SYSUMM01" in repr(ds) and "test" in ds.summary()


def test_sysu_ori_data_and_tricky_root(tmp_path):
    root = make_toy_dataset(tmp_path / "cam3" / "0006" / "SYSU-MM01", "sysu", num_ids=5,
                            images_per_camera=(1, 2), image_size=(24, 48), ori_data=True)
    assert (root / "ori_data" / "exp").is_dir()
    ds = SYSUMM01(root)
    assert ds.data_dir == root.resolve() / "ori_data"
    assert {r.camid for r in ds.train_infrared + ds.test_infrared} <= {3, 6}
    assert {r.camid for r in ds.train_visible + ds.test_visible} <= {1, 2, 4, 5}
    for r in ds.train_visible + ds.train_infrared + ds.test_visible + ds.test_infrared:
        p = Path(r.path)
        assert p.parent.parent.name == f"cam{r.camid}" and int(p.parent.name) == r.pid


@pytest.fixture
def small_sysu(tmp_path):
    return make_toy_dataset(tmp_path / "SYSU-MM01", "sysu", num_ids=5,
                            images_per_camera=(1, 1), image_size=(24, 48))


def test_sysu_errors(small_sysu, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SYSUMM01(tmp_path / "nowhere")
    (small_sysu / "exp" / "val_id.txt").write_text("1,2,x3\n")
    with pytest.raises(ValueError, match=r"val_id\.txt:1"):
        SYSUMM01(small_sysu)
    (small_sysu / "exp" / "val_id.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        SYSUMM01(small_sysu)
    (small_sysu / "exp" / "val_id.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val_id.txt"):
        SYSUMM01(small_sysu)
    shutil.rmtree(small_sysu / "exp")
    with pytest.raises(FileNotFoundError, match="exp"):
        SYSUMM01(small_sysu)


def test_sysu_no_camera_folders(small_sysu):
    for k in range(1, 7):
        shutil.rmtree(small_sysu / f"cam{k}")
    with pytest.raises(FileNotFoundError, match="camera"):
        SYSUMM01(small_sysu)


# ------------------------------------------------------------------ LLCM ----
def test_llcm_toy(toy_llcm):
    ds = LLCM(toy_llcm)
    idx = toy_llcm / "idx"
    for recs, fname, tag in [(ds.train_visible, "train_vis.txt", "vis"),
                             (ds.train_infrared, "train_nir.txt", "nir")]:
        lines = (idx / fname).read_text().split("\n")[:-1]
        assert len(recs) == len(lines)
        for r, line in zip(recs, lines):
            rel = line.split()[0]
            assert r.path == os.path.join(os.path.realpath(toy_llcm), rel)
            parts = rel.split("/")
            assert parts[0] == tag and int(parts[1]) == r.pid
            assert f"_c{r.camid:02d}_" in parts[2]
    test_order = _ids_in_file(idx / "test_id.txt")
    assert ds.test_id_order == test_order and ds.test_ids == sorted(test_order)
    assert (idx / "test_id.txt").read_text().split(",")[0] == f"{test_order[0]:04d}"
    assert not set(ds.train_ids) & set(ds.test_ids)
    _check_records(ds.train_visible + ds.test_visible, VISIBLE, set(range(1, 10)))
    _check_records(ds.train_infrared + ds.test_infrared, INFRARED, {1, 2, 4, 5, 6, 7, 8, 9})
    for r in ds.test_visible + ds.test_infrared:
        p = Path(r.path)
        assert p.parent.parent.name == f"cam{r.camid}" and int(p.parent.name) == r.pid
        assert p.parent.parent.parent.name == ("test_vis" if r.modality == VISIBLE else "test_nir")
    # test folders hold exactly the test images of vis/ and nir/
    n_test_vis = sum(len(os.listdir(toy_llcm / "vis" / f"{p:04d}")) for p in test_order)
    assert len(ds.test_visible) == n_test_vis
    assert not (toy_llcm / "test_nir" / "cam3").exists()
    assert "LLCM" in repr(ds)


def test_llcm_camera_from_component_not_substring(tmp_path):
    root = make_toy_dataset(tmp_path / "cam7" / "LLCM", "llcm", num_ids=3,
                            images_per_camera=(1, 1), image_size=(24, 48))
    ds = LLCM(root)
    for r in ds.test_visible + ds.test_infrared:
        assert Path(r.path).parent.parent.name == f"cam{r.camid}"


@pytest.fixture
def small_llcm(tmp_path):
    return make_toy_dataset(tmp_path / "LLCM", "llcm", num_ids=3,
                            images_per_camera=(1, 1), image_size=(24, 48))


def test_llcm_errors(small_llcm, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        LLCM(tmp_path / "nowhere")
    f = small_llcm / "idx" / "train_nir.txt"
    good = f.read_text()
    rel = good.split()[0]
    f.write_text(good + rel.replace("_c0", "_x0") + " 0\n")
    n = len(good.splitlines()) + 1
    with pytest.raises(ValueError, match=rf"train_nir\.txt:{n}"):
        LLCM(small_llcm)
    f.write_text("vis/" + rel[4:] + " 0\n")
    with pytest.raises(ValueError, match=r"train_nir\.txt:1"):
        LLCM(small_llcm)
    f.write_text(good)
    (small_llcm / rel).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(Path(rel).name)):
        LLCM(small_llcm)
    f.unlink()
    with pytest.raises(FileNotFoundError, match="train_nir.txt"):
        LLCM(small_llcm)


def test_llcm_missing_test_id(small_llcm):
    (small_llcm / "idx" / "test_id.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test_id.txt"):
        LLCM(small_llcm)


# ------------------------------------------------------------------- toy ----
def test_toy_deterministic(tmp_path):
    a = make_toy_dataset(tmp_path / "a", "regdb", num_ids=2, images_per_id=2, trials=2, seed=3)
    b = make_toy_dataset(tmp_path / "b", "regdb", num_ids=2, images_per_id=2, trials=2, seed=3)
    c = make_toy_dataset(tmp_path / "c", "regdb", num_ids=2, images_per_id=2, trials=2, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "idx/train_visible_1.txt").read_text() != (c / "idx/train_visible_1.txt").read_text()
    with pytest.raises(FileExistsError):
        make_toy_dataset(a, "regdb")
    with pytest.raises(ValueError, match="layout"):
        make_toy_dataset(tmp_path / "d", "market")


def test_ensure_toy_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("DMDL_HOME", str(tmp_path / "home"))
    assert toy_default_root() == tmp_path / "home" / "toy-regdb"
    kw = dict(num_ids=2, images_per_id=2, trials=1)
    root = ensure_toy_dataset(**kw)
    assert root == toy_default_root()
    stamp = (root / "idx" / "train_visible_1.txt").stat().st_mtime_ns
    assert ensure_toy_dataset(**kw) == root
    assert (root / "idx" / "train_visible_1.txt").stat().st_mtime_ns == stamp
    assert RegDB(root, trial=1).train_visible
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["toy-regdb"]
    # different arguments regenerate in place
    root2 = ensure_toy_dataset(num_ids=4, images_per_id=2, trials=1)
    assert root2 == root and len(RegDB(root, 1).train_ids) == 2
    assert ensure_toy_dataset(num_ids=4, images_per_id=2, trials=1) == root
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["toy-regdb"]
