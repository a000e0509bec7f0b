"""MULT end to end on a tiny generated RegDB-layout dataset: both stages, both unified spaces,
checkpoint, evaluation through the two-stream backbone, and DMDL with the mult association."""

import csv
import warnings

import pytest
import torch

from dmdl.config import load_config
from dmdl.engine import Engine
from dmdl.methods import get_method
from dmdl.rundir import CHECKPOINT_NAME

TINY = [  # as test_train_smoke.py
    "--height", "64", "--width", "32", "--iters", "2", "--batch-size", "16",
    "--num-instances", "4", "--k1", "6", "--k2", "2", "--eps", "0.5", "--workers", "0",
]


@pytest.fixture
def toy_root(toy_regdb):
    return str(toy_regdb)  # conftest's session toy (12 ids), the one test_train_smoke generates too


def test_mult_trains_both_stages(toy_root, tmp_path, assert_evaluate_reproduces):
    out = tmp_path / "mult"
    cfg = load_config("regdb-cpu-mult", TINY + ["--data-root", toy_root, "--output-dir", str(out),
                                                "--stage1-epochs", "1", "--stage2-epochs", "2"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng = Engine(cfg, get_method(cfg))
        assert eng.ctx.model.two_stream
        results = eng.run()
    with open(out / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["stage"], r["epoch"]) for r in rows] == [("1", "0"), ("2", "0"), ("2", "1")]
    assert rows[0]["matching"] == "" and float(rows[0]["loss_oclr"]) == 0.0
    assert [r["matching"] for r in rows[1:]] == ["mult->rgb", "mult->ir"]  # the unified space alternates
    for r in rows[1:]:
        assert float(r["loss_oclr"]) > 0 and float(r["loss_ma"]) > 0 and float(r["seconds_transfer"]) >= 0
        assert int(r["unified_ids"]) > 0
    ckpt = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    assert set(ckpt["memories"]) == {"v", "va", "rcm", "r", "ra", "vcm"}
    assert any(k.startswith("stem_infrared") for k in ckpt["model"])
    assert_evaluate_reproduces(toy_root, out, results["trained"])


def test_mult_refuses_a_one_stream_backbone(toy_root, tmp_path):
    with pytest.raises(ValueError, match="two-stream"):  # the config says so, before any model is built
        load_config("regdb-cpu-mult", TINY + ["--data-root", toy_root, "--output-dir", str(tmp_path),
                                              "--two-stream", "false", "--pretrained", "none"])


def test_dmdl_with_the_mult_association(toy_root, tmp_path):
    out = tmp_path / "dmdl-mult"
    cfg = load_config("regdb-cpu", TINY + ["--data-root", toy_root, "--output-dir", str(out),
                                           "--stage1-epochs", "1", "--stage2-epochs", "1",
                                           "--association", "mult", "--matching", "cluster"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Engine(cfg, get_method(cfg)).run()
    with open(out / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[1]["matching"] == "mult->infrared" and int(rows[1]["unified_ids"]) > 0
