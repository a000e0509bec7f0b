"""One test per bad input a user can hand the ``dmdl`` command: each answers with one line,
``dmdl <verb>: error: ...`` naming the path or key, exit code 2 (input) or 1 (run failure),
no traceback, before any training or evaluation starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmdl.cli import main
from dmdl.data.check import check_dataset, format_report, preflight
from dmdl.data.toy import make_toy_dataset
from dmdl.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--height", "64", "--width", "32", "--iters", "2", "--batch-size", "16", "--num-instances", "4",
        "--k1", "6", "--k2", "2", "--eps", "0.5", "--workers", "0", "--eval-untrained", "false"]


@pytest.fixture
def regdb(tmp_path):
    return make_toy_dataset(tmp_path / "RegDB", "regdb", num_ids=4, images_per_id=2, trials=1)


@pytest.fixture
def sysu(tmp_path):
    return make_toy_dataset(tmp_path / "SYSU-MM01", "sysu", num_ids=5, images_per_camera=(1, 1), image_size=(24, 48))


@pytest.fixture
def llcm(tmp_path):
    return make_toy_dataset(tmp_path / "LLCM", "llcm", num_ids=4, images_per_camera=(1, 1), image_size=(24, 48))


def _first_image(root: Path, idx: str = "train_visible_1.txt") -> Path:
    return root / (root / "idx" / idx).read_text().split()[0]


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return rc, err


def _train(capsys, dataset, root, *extra, preset=None):
    preset = preset or {"regdb": "regdb-cpu", "sysu": "sysu", "llcm": "llcm"}[dataset]
    return _run(capsys, ["train", "--config", preset, "--data-root", str(root), *TINY, *extra,
                         "--output-dir", str(Path(root).parent / "run")])


def _one_error_line(err: str, verb: str = "train") -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith(f"dmdl {verb}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- datasets
def test_missing_root(capsys, tmp_path):
    rc, err = _train(capsys, "regdb", tmp_path / "nowhere")
    assert rc == 2 and f"RegDB root not found: {tmp_path / 'nowhere'}" in _one_error_line(err)


def test_missing_camera_folder(capsys, sysu):
    shutil.rmtree(sysu / "cam3")
    rc, err = _train(capsys, "sysu", sysu)
    assert rc == 2 and f"SYSU-MM01 camera folder not found: {sysu.resolve() / 'cam3'}" in err


def test_missing_test_folder_llcm(capsys, llcm):
    shutil.rmtree(llcm / "test_nir")
    rc, err = _train(capsys, "llcm", llcm)
    assert rc == 2 and f"LLCM test folder not found: {llcm.resolve() / 'test_nir'}" in err


def test_missing_idx_file(capsys, regdb):
    (regdb / "idx" / "train_thermal_1.txt").unlink()
    rc, err = _train(capsys, "regdb", regdb)
    assert rc == 2 and f"RegDB idx file not found: {regdb.resolve() / 'idx' / 'train_thermal_1.txt'}" in err


def test_idx_line_pointing_to_a_missing_image(capsys, regdb):
    img = _first_image(regdb)
    img.unlink()
    rc, err = _train(capsys, "regdb", regdb)
    assert rc == 2 and "train_visible_1.txt:1 not found" in err and img.name in err


def test_malformed_idx_line(capsys, regdb):
    f = regdb / "idx" / "train_visible_1.txt"
    f.write_text(f.read_text().replace(" 0\n", " zero\n", 1))
    rc, err = _train(capsys, "regdb", regdb)
    assert rc == 2 and "train_visible_1.txt:1: label is not an integer" in err


def test_malformed_id_list(capsys, sysu):
    (sysu / "exp" / "test_id.txt").write_text("1,2,x3\n")
    rc, err = _train(capsys, "sysu", sysu)
    assert rc == 2 and "test_id.txt:1: malformed id list, token 'x3'" in err


@pytest.mark.parametrize("damage,why", [
    (lambda b: b[: len(b) // 2], "truncated file"),
    (lambda b: b"not an image at all", "not an image file"),
    (lambda b: b"", "empty file (0 bytes)"),
])
def test_unreadable_or_truncated_image(capsys, regdb, damage, why):
    img = _first_image(regdb, "test_thermal_1.txt")
    img.write_bytes(damage(img.read_bytes()))
    t = time.time()
    rc, err = _train(capsys, "regdb", regdb)
    assert rc == 2 and f"cannot decode image {img.resolve()}: {why}" in err
    assert time.time() - t < 30  # before the untrained evaluation or any training


def test_truncated_jpeg(capsys, sysu):
    img = sorted((sysu / "cam1").glob("*/*.jpg"))[0]
    img.write_bytes(img.read_bytes()[:-20])
    rc, err = _train(capsys, "sysu", sysu)
    assert rc == 2 and f"cannot decode image {img.resolve()}: truncated file" in err


def test_several_problems_are_listed_with_the_check_dataset_hint(capsys, regdb):
    a, b = _first_image(regdb), _first_image(regdb, "train_thermal_1.txt")
    a.write_bytes(b"junk")
    b.write_bytes(b"junk")
    rc, err = _train(capsys, "regdb", regdb)
    assert rc == 2 and "2 problems in RegDB trial 1" in err and a.name in err and b.name in err
    assert "dmdl check-dataset --dataset regdb" in err


def test_empty_modality(capsys, regdb):
    f = regdb / "idx" / "train_thermal_1.txt"
    f.write_text("\n")
    rc, err = _train(capsys, "regdb", regdb)
    assert rc == 2 and f"RegDB: no thermal train image ({f.resolve()} lists none)" in err


def test_test_id_without_images_regdb(capsys, regdb):
    f = regdb / "idx" / "test_visible_1.txt"
    lines = f.read_text().splitlines()
    pid = lines[0].split("/")[1]
    f.write_text("\n".join(ln for ln in lines if ln.split("/")[1] != pid) + "\n")
    rc, err = _train(capsys, "regdb", regdb)
    assert rc == 2 and f"RegDB test id {pid} has thermal images but no visible image in {f.resolve()}" in err


def test_test_id_without_images_sysu(capsys, sysu):
    pid = int((sysu / "exp" / "test_id.txt").read_text().split(",")[0])
    for cam in (3, 6):
        shutil.rmtree(sysu / f"cam{cam}" / f"{pid:04d}", ignore_errors=True)
    rc, err = _train(capsys, "sysu", sysu)
    assert rc == 2 and f"SYSU-MM01 test id {pid} has no infrared image: none of cam3/{pid:04d}, cam6/{pid:04d}" in err


def test_check_dataset_lists_every_problem_with_counts(capsys, regdb):
    imgs = [regdb / ln.split()[0] for ln in (regdb / "idx" / "train_visible_1.txt").read_text().splitlines()[:3]]
    for p in imgs:
        p.write_bytes(p.read_bytes()[:100])
    missing = _first_image(regdb, "test_thermal_1.txt")
    missing.unlink()
    f = regdb / "idx" / "train_thermal_1.txt"
    f.write_text(f.read_text() + "Thermal/x/bad.bmp 0\n")
    rc = main(["check-dataset", "--dataset", "regdb", "--data-root", str(regdb), "--trial", "1"])
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err
    assert "5 problems: malformed idx line 1, missing image 1, unreadable image 3" in out
    for p in imgs + [missing]:
        assert str(p.resolve()) in out
    assert "dmdl check-dataset: error: 5 problems in the dataset" in err
    # the library call gives the same, and a clean dataset is clean
    report = check_dataset("regdb", regdb, trials=[1])
    assert len(report.problems) == 5 and format_report(report).count("\n  ") >= 5


def test_check_dataset_clean_and_missing_root(capsys, llcm, tmp_path):
    assert main(["check-dataset", "--dataset", "llcm", "--data-root", str(llcm)]) == 0
    assert "no problem found" in capsys.readouterr().out
    assert main(["check-dataset", "--dataset", "sysu", "--data-root", str(tmp_path / "none")]) == 2
    out, err = capsys.readouterr()
    assert "missing root (1)" in out and "SYSU-MM01 root not found" in out


def test_preflight_raises_dataset_error(regdb):
    _first_image(regdb).write_bytes(b"")
    with pytest.raises(DatasetError) as info:
        preflight("regdb", regdb, 1)
    assert info.value.problems[0].kind == "unreadable image"


# ----------------------------------------------------------------------------- config and arguments
@pytest.mark.parametrize("argv,code,text", [
    (["train", "--config", "nosuchpreset"], 2, "unknown config 'nosuchpreset'"),
    (["train", "--config", "regdb-cpu", "--foo", "3"], 2, "unknown config key --foo"),
    (["train", "--config", "regdb-cpu", "--stage1-epoch", "3"], 2, "did you mean --stage1-epochs"),
    (["train", "--config", "regdb-cpu", "--k1", "abc"], 2, "k1: cannot read 'abc' as int"),
    (["train", "--config", "regdb-cpu", "--k1"], 2, "missing value for --k1"),
    (["train", "--config", "regdb-cpu", "--trial", "11"], 2, "--trial: RegDB trials are 1..10"),
    (["train", "--config", "regdb-cpu", "--batch-size", "30"], 2, "multiple of num_instances"),
    (["train", "--config", "regdb-cpu", "--pretrained", "/no/such.pth"], 2, "no such weights file: /no/such.pth"),
    (["train", "--config", "regdb-cpu", "--max-outlier-share", "2"], 2, "max_outlier_share must be in [0, 1]"),
    (["train", "--config", "missing.yaml"], 2, "config file not found: missing.yaml"),
    (["train"], 2, "pass --config PRESET"),
])
def test_config_and_argument_errors(capsys, argv, code, text):
    rc, err = _run(capsys, argv)
    assert rc == code and text in _one_error_line(err, argv[0])


def test_toy_target_not_empty(capsys, tmp_path):
    (tmp_path / "x").write_text("")
    rc, err = _run(capsys, ["make-toy-dataset", "--layout", "regdb", str(tmp_path)])
    assert rc == 2 and f"toy dataset target is not empty: {tmp_path}" in _one_error_line(err, "make-toy-dataset")


def test_argparse_errors_use_the_same_style(capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--data-root", "x", "--checkpoint", "y", "--bogus", "1"])
    assert info.value.code == 2 and "dmdl evaluate: error: unrecognized arguments: --bogus 1" in capsys.readouterr().err


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    from dmdl import __version__

    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"dmdl {__version__}"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--stage1-epochs=" in out and "--max-outlier-share=" in out and "regdb-cpu" in out and "--resume" in out
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "--device DEVICE       cpu, cuda" in out and "RegDB test split" in out


def test_a_typo_is_answered_before_torch_is_imported():
    code = ("import sys, time; t = time.time(); from dmdl.cli import main; "
            "rc = main(['train', '--config', 'regdb-cpu', '--foo', '3']); "
            "assert rc == 2 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m); "
            "print(time.time() - t)")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert float(res.stdout.strip()) < 1.0
    assert "dmdl train: error: unknown config key --foo" in res.stderr


# ----------------------------------------------------------------------------- checkpoints
def test_not_a_checkpoint(capsys, regdb, tmp_path):
    bad = tmp_path / "checkpoint.pth"
    bad.write_text("this is not a checkpoint")
    rc, err = _run(capsys, ["evaluate", "--data-root", str(regdb), "--checkpoint", str(bad)])
    assert rc == 2 and f"{bad} is not a readable checkpoint (UnpicklingError" in _one_error_line(err, "evaluate")


def test_checkpoint_without_the_keys(capsys, regdb, tmp_path):
    import torch

    bad = tmp_path / "weights.pth"
    torch.save({"state_dict": {}}, bad)
    rc, err = _run(capsys, ["evaluate", "--data-root", str(regdb), "--checkpoint", str(bad)])
    assert rc == 2 and f"{bad} is not a dmdl checkpoint: no 'model', 'config' entries" in err


def test_resume_of_a_directory_that_is_not_a_run(capsys, tmp_path):
    rc, err = _run(capsys, ["train", "--resume", str(tmp_path)])
    assert rc == 2 and f"--resume: {tmp_path} is not a dmdl run directory (no config.json)" in err
    rc, err = _run(capsys, ["train", "--resume", str(tmp_path / "gone")])
    assert rc == 2 and "no run directory or checkpoint at" in err
