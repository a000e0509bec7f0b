"""End to end on a tiny generated RegDB-layout dataset: train, checkpoint, evaluate, resume, trials."""

import csv
import json
import warnings

import pytest
import torch

from dmdl.cli import main
from dmdl.config import load_config
from dmdl.data.toy import make_toy_dataset
from dmdl.engine import Engine
from dmdl.methods import get_method
from dmdl.rundir import CHECKPOINT_NAME, RESULTS_NAME


def Trainer(cfg):  # noqa: N802  (the engine with the config's method)
    return Engine(cfg, get_method(cfg))

TINY = [
    "--height", "64", "--width", "32", "--iters", "2", "--batch-size", "16",
    "--num-instances", "4", "--k1", "6", "--k2", "2", "--eps", "0.5", "--workers", "0",
]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return str(make_toy_dataset(tmp_path_factory.mktemp("toy") / "RegDB", layout="regdb", num_ids=12, seed=0))


def _cfg(root, out, *extra):
    return load_config("regdb-cpu", TINY + ["--data-root", root, "--output-dir", str(out), *extra])


def test_train_then_evaluate_reproduces(toy_root, tmp_path, capsys, assert_evaluate_reproduces):
    out = tmp_path / "run"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = Trainer(_cfg(toy_root, out, "--stage1-epochs", "1", "--stage2-epochs", "1")).run()
    for key in ("untrained", "trained"):
        for direction in ("v2t", "t2v"):
            vals = results[key][direction]
            assert set(vals) == {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}
            assert all(0.0 <= v <= 100.0 for v in vals.values())
    saved = json.loads((out / RESULTS_NAME).read_text())
    assert saved["units"] == "percent" and saved["results"]["trained"] == results["trained"]
    assert saved["results"]["pictures"] == ["training_curves.png"]  # drawn from log.csv at the end of the run
    from PIL import Image

    assert Image.open(out / "training_curves.png").size == (1500, 800)
    with open(out / "log.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("1", "0"), ("2", "0")]
    assert all(None not in r for r in rows)  # no row has more fields than the header
    assert rows[0]["ari_unified"] == "" and 0 < int(rows[1]["unified_ids"])
    assert rows[1]["matching"] == "imca->infrared"  # stage 2 epoch 0: iMCA, IR anchor
    for key in ("seconds_features", "seconds_clustering", "seconds_training"):
        assert float(rows[0][key]) >= 0

    assert_evaluate_reproduces(toy_root, out, results["trained"])


def test_resume_continues_where_the_run_stopped(toy_root, tmp_path):
    # a run "killed" after stage 1, resumed into stage 2, equals the uninterrupted run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = Trainer(_cfg(toy_root, tmp_path / "full", "--stage1-epochs", "1", "--stage2-epochs", "1",
                            "--eval-untrained", "false")).run()
        Trainer(_cfg(toy_root, tmp_path / "part", "--stage1-epochs", "1", "--stage2-epochs", "0",
                     "--eval-untrained", "false")).run()
        resumed = Trainer(_cfg(toy_root, tmp_path / "resumed", "--stage1-epochs", "1", "--stage2-epochs", "1",
                               "--eval-untrained", "false",
                               "--resume", str(tmp_path / "part" / CHECKPOINT_NAME))).run()
    rows = (tmp_path / "resumed" / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in rows] == [["2", "0"]]
    a = torch.load(tmp_path / "full" / CHECKPOINT_NAME, weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / CHECKPOINT_NAME, weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert resumed["trained"] == full["trained"]


def test_cli_errors_name_the_problem(tmp_path, capsys):
    rc = main(["train", "--config", "regdb-cpu", "--data-root", str(tmp_path / "missing")])
    assert rc == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
    rc = main(["evaluate", "--dataset", "regdb", "--data-root", str(tmp_path), "--checkpoint", str(tmp_path / "x.pth")])
    assert rc == 2 and "dmdl evaluate: error: checkpoint not found" in capsys.readouterr().err


def test_trial_list_trains_one_model_per_trial_and_averages(toy_root, tmp_path, capsys):
    out = tmp_path / "trials"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["train", "--config", "regdb-cpu", "--data-root", toy_root, "--trial", "1,2", *TINY,
                   "--stage1-epochs", "1", "--stage2-epochs", "0", "--output-dir", str(out)])
    assert rc == 0
    summary = json.loads((out / "results_trials.json").read_text())
    assert set(summary["trials"]) == {"1", "2"}
    for t in ("1", "2"):
        assert (out / f"trial{t}" / CHECKPOINT_NAME).is_file()
        cfg = json.loads((out / f"trial{t}" / "config.json").read_text())
        assert cfg["trial"] == int(t)
    # the mean row is the mean of the per-trial rows
    for model in ("untrained", "trained"):
        for direction in ("v2t", "t2v"):
            for k in ("rank1", "mAP", "mINP"):
                vals = [summary["trials"][t][model][direction][k] for t in ("1", "2")]
                assert summary["mean"][model][direction][k] == pytest.approx(sum(vals) / 2)
    printed = capsys.readouterr().out
    assert "mean" in printed and "results_trials.json" in printed


def test_test_set_selection_is_labelled_and_ghost_bn_runs(toy_root, tmp_path, capsys):
    out = tmp_path / "sel"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = Trainer(_cfg(toy_root, out, "--stage1-epochs", "1", "--stage2-epochs", "1",
                               "--eval-untrained", "false", "--select-on-test", "true",
                               "--ghost-bn-groups", "4", "--cai", "true", "--cbt-label", "true",
                               "--cbt-feature", "true", "--refine-from-stage2", "0")).run()
    sel = results["test_selected"]
    assert "test set" in sel["note"] and (sel["stage"], sel["epoch"]) in ((1, 0), (2, 0))
    assert "trained" in results and (out / "test_selected.pth").is_file()
    printed = capsys.readouterr().out
    assert "test-sel." in printed and "optimistic" in printed
    rows = list(csv.DictReader(open(out / "log.csv", newline="")))
    assert all(r["test_mAP"] != "" for r in rows)
    assert float(rows[1]["loss_cai"]) > 0 and float(rows[1]["loss_mmd"]) != 0


def test_seed_list_trains_one_model_per_seed_with_mean_and_spread(toy_root, tmp_path, capsys):
    out = tmp_path / "seeds"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["train", "--config", "regdb-cpu", "--data-root", toy_root, "--seeds", "3,5", *TINY,
                   "--stage1-epochs", "1", "--stage2-epochs", "0", "--eval-untrained", "false", "--output-dir", str(out)])
    assert rc == 0
    summary = json.loads((out / "results_seeds.json").read_text())
    assert set(summary["seeds"]) == {"3", "5"} and summary["std_ddof"] == 1
    for s in ("3", "5"):
        assert json.loads((out / f"seed{s}" / "config.json").read_text())["seed"] == int(s)
    for direction in ("v2t", "t2v"):
        for k in ("rank1", "mAP", "mINP"):
            vals = [summary["seeds"][s]["trained"][direction][k] for s in ("3", "5")]
            assert summary["mean"]["trained"][direction][k] == pytest.approx((vals[0] + vals[1]) / 2)
            assert summary["std"]["trained"][direction][k] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
    printed = capsys.readouterr().out
    assert "seed 3" in printed and "std" in printed and "results_seeds.json" in printed
    # --resume of the seed-list directory reads the finished seeds back
    rc = main(["train", "--resume", str(out)])
    assert rc == 0 and json.loads((out / "results_seeds.json").read_text())["mean"] == summary["mean"]
