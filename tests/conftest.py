"""Shared test fixtures: small generated datasets and the real RegDB-mini."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REGDB_MINI = Path(__file__).resolve().parents[2] / "shared/data/RegDB-mini"


@pytest.fixture
def one_thread():
    """torch on one thread for the test. References that issue thousands of tiny torch ops stall
    in the parallel regions of a multi-threaded pool on busy shared cores (30x slower with 2
    threads on 2 shared cores)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def toy_regdb(tmp_path_factory) -> Path:
    """A RegDB-layout toy: 12 ids x (10 visible + 10 thermal), 10 trials."""
    from dmdl.data.toy import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "RegDB", layout="regdb",
                            num_ids=12, seed=0)


@pytest.fixture(scope="session")
def toy_sysu(tmp_path_factory) -> Path:
    """A SYSU-MM01-layout toy with 16 ids (cams and exp/ directly under root)."""
    from dmdl.data.toy import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "SYSU-MM01", layout="sysu",
                            num_ids=16, seed=0, image_size=(32, 64))


@pytest.fixture(scope="session")
def toy_llcm(tmp_path_factory) -> Path:
    """An LLCM-layout toy with 15 ids."""
    from dmdl.data.toy import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "LLCM", layout="llcm",
                            num_ids=15, seed=0, image_size=(32, 64))


@pytest.fixture(scope="session")
def regdb_mini() -> Path:
    """Path of the real RegDB subset (skips when it is not available)."""
    if not (REGDB_MINI / "idx").is_dir():
        pytest.skip(f"real RegDB-mini data not found at {REGDB_MINI}")
    return REGDB_MINI


@pytest.fixture
def assert_evaluate_reproduces():
    """``check(data_root, run_dir, trained)``: ``dmdl evaluate`` on the run's checkpoint exits 0 and
    gives the RegDB trial-1 numbers ``train`` reported (``trained``: the ``results["trained"]``)."""
    import json

    from dmdl.cli import main
    from dmdl.rundir import CHECKPOINT_NAME

    def check(data_root, run_dir, trained):
        rc = main(["evaluate", "--dataset", "regdb", "--data-root", str(data_root),
                   "--checkpoint", str(Path(run_dir) / CHECKPOINT_NAME), "--workers", "0"])
        assert rc == 0
        ev = json.loads((Path(run_dir) / "evaluation_regdb_trial1.json").read_text())
        for direction in ("v2t", "t2v"):
            for k, v in trained[direction].items():
                assert ev["results"]["model"][direction][k] == pytest.approx(v, abs=1e-6)

    return check


@pytest.fixture(scope="session")
def trained_runs(toy_regdb, tmp_path_factory) -> dict:
    """Run directories of two tiny trained models on the toy RegDB (1 + 1 epochs of 2 iterations,
    64 x 32 inputs, a few seconds each): ``"dmdl"``, a one-stream DMDL MobileNetV2, and ``"mult"``,
    a two-stream MULT MobileNetV2. Shared by the after-training tests; do not write into them."""
    import warnings

    import torch

    from dmdl.config import load_config
    from dmdl.engine import Engine
    from dmdl.methods import get_method

    tiny = ["--height", "64", "--width", "32", "--iters", "2", "--batch-size", "16", "--num-instances", "4",
            "--k1", "6", "--k2", "2", "--eps", "0.5", "--workers", "0", "--stage1-epochs", "1",
            "--stage2-epochs", "1", "--eval-untrained", "false"]
    runs = {}
    for name, preset in (("dmdl", "regdb-cpu"), ("mult", "regdb-cpu-mult")):
        out = tmp_path_factory.mktemp("runs") / name
        cfg = load_config(preset, tiny + ["--data-root", str(toy_regdb), "--output-dir", str(out)])
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Engine(cfg, get_method(cfg)).run()
        runs[name] = out
    return runs
