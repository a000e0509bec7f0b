"""`dmdl evaluate` with --rerank and its pictures, training curves, `dmdl plot`, `dmdl visualize tsne`."""

import csv
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dmdl.cli import main
from dmdl.data.regdb import RegDB
from dmdl.evaluation.metrics import eval_regdb
from dmdl.evaluation.runner import evaluate_model, extract_features
from dmdl.inference._bridge import load_model
from dmdl.inference.evaluation import SAMPLE_QUERIES, SAMPLE_TOPK, evaluate_protocol
from dmdl.visualization import ranklist
from dmdl.visualization.curves import plot_training_curves

from test_search import _row_size, rerank_numpy


def _png(path, size):
    with Image.open(path) as im:
        im.load()  # decodes the whole file
        assert im.format == "PNG" and im.size == size, (path, im.size)


@pytest.fixture(scope="module")
def evaluated(trained_runs, toy_regdb, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "evaluation_regdb_trial1.json"
    rc = main(["evaluate", "--data-root", str(toy_regdb), "--checkpoint", str(trained_runs["mult"]),
               "--workers", "0", "--rerank", "--output", str(out)])
    assert rc == 0
    return out


def test_evaluate_rerank_numbers_equal_the_numpy_rederivation(evaluated, trained_runs, toy_regdb):
    res = json.loads(evaluated.read_text())["results"]
    trained = json.loads((trained_runs["mult"] / "results.json").read_text())["results"]["trained"]
    ds = RegDB(toy_regdb, trial=1)
    model = load_model(trained_runs["mult"]).model
    feats = {m: extract_features(model, [r.path for r in getattr(ds, f"test_{m}")], 64, 32, modality=m,
                                 interpolation="bilinear").numpy()  # MULT's test resize
             for m in ("visible", "infrared")}
    pids = {m: np.array([r.pid for r in getattr(ds, f"test_{m}")]) for m in ("visible", "infrared")}
    assert res["rerank"] == {"k1": 20, "k2": 6, "lambda": 0.3}
    for direction, (qm, gm) in {"v2t": ("visible", "infrared"), "t2v": ("infrared", "visible")}.items():
        for k, v in trained[direction].items():  # the plain numbers: the engine's own evaluation
            assert res["model"][direction][k] == pytest.approx(v, abs=1e-6)
        dist = rerank_numpy(feats[qm], feats[gm], 20, 6, 0.3)
        cmc, mAP, mINP = eval_regdb(dist, pids[qm], pids[gm])
        got = res["model_reranked"][direction]
        assert got["rank1"] == pytest.approx(100 * cmc[0], abs=1e-6)
        assert got["rank5"] == pytest.approx(100 * cmc[4], abs=1e-6)
        assert got["mAP"] == pytest.approx(100 * mAP, abs=1e-4) and got["mINP"] == pytest.approx(100 * mINP, abs=1e-4)
        np.testing.assert_allclose(res["cmc_reranked"][direction], cmc, atol=1e-9)
        assert len(res["cmc"][direction]) == 20 and res["cmc"][direction][0] * 100 == pytest.approx(
            res["model"][direction]["rank1"])


def test_evaluate_writes_decodable_pictures_named_in_the_json(evaluated):
    res = json.loads(evaluated.read_text())["results"]
    names = res["pictures"]
    assert names == ["cmc_regdb_trial1.png", "ranklist_regdb_trial1_v2t.png", "ranklist_regdb_trial1_t2v.png"]
    _png(evaluated.parent / names[0], (640, 480))
    row_w, row_h = _row_size(SAMPLE_TOPK)
    for name in names[1:]:
        _png(evaluated.parent / name, (row_w, ranklist.TITLE + SAMPLE_QUERIES * row_h))


def test_evaluate_without_pictures(trained_runs, toy_regdb, tmp_path):
    out = tmp_path / "e.json"
    assert main(["evaluate", "--data-root", str(toy_regdb), "--checkpoint", str(trained_runs["dmdl"]),
                 "--workers", "0", "--no-pictures", "--output", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert "pictures" not in res and "model_reranked" not in res and sorted(p.name for p in tmp_path.iterdir()) == [
        "e.json"]


@pytest.mark.parametrize("layout", ["toy_sysu", "toy_llcm"])
def test_protocol_numbers_equal_evaluate_model_on_sysu_and_llcm(layout, trained_runs, request):
    from dmdl.data.check import open_dataset

    root = request.getfixturevalue(layout)
    name = {"toy_sysu": "sysu", "toy_llcm": "llcm"}[layout]
    ds = open_dataset(name, root)
    model = load_model(trained_runs["mult"]).model
    ref = evaluate_model(model, name, ds, 64, 32, num_trials=3)
    got = evaluate_protocol(model, name, ds, 64, 32, num_trials=3, rerank={"k1": 4, "k2": 2})
    assert got.results == ref
    assert set(got.reranked) == set(got.cmc_reranked) == set(k for k in ref if k != "per_trial")
    for setting, curve in got.cmc.items():  # the mean CMC over the draws
        assert curve[0] * 100 == pytest.approx(ref[setting]["rank1"])


def test_training_curves_from_log_csv(trained_runs, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_runs["mult"] / "log.csv", run / "log.csv")
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[1]["ari_unified"] != "" and rows[0]["clusters_visible"] != ""
    paths = plot_training_curves(run)
    assert paths == [run / "training_curves.png"]
    _png(paths[0], (1500, 800))


def test_plot_cli_redraws_a_run(trained_runs, evaluated, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_runs["dmdl"] / "log.csv", run / "log.csv")
    shutil.copy(evaluated, run / evaluated.name)
    assert main(["plot", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "training_curves.png" in printed and "cmc_regdb_trial1.png" in printed
    _png(run / "training_curves.png", (1500, 800))
    _png(run / "cmc_regdb_trial1.png", (640, 480))


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such run directory"),
    ("empty", "nothing to draw"),
    ("bad log", "holds no epoch row"),
])
def test_plot_cli_errors(case, expected, tmp_path, capsys):
    run = tmp_path / "run"
    if case != "missing":
        run.mkdir()
    if case == "bad log":
        (run / "log.csv").write_text("a,b\n")
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dmdl plot: error: ") and expected in err[0]


def test_visualize_tsne(trained_runs, toy_regdb, tmp_path, capsys):
    out = tmp_path / "t.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["visualize", "tsne", "--checkpoint", str(trained_runs["mult"]), "--data-root", str(toy_regdb),
                     "--out", str(out), "--max-images", "80"]) == 0
    assert "(80 images)" in capsys.readouterr().out
    _png(out, (1200, 600))
    assert main(["visualize", "tsne", "--checkpoint", str(trained_runs["mult"]), "--out", str(out)]) == 2
    assert "needs --data-root" in capsys.readouterr().err


def test_visualize_tsne_from_features_files(trained_runs, toy_regdb, tmp_path):
    for m, folder in (("visible", "Visible"), ("infrared", "Thermal")):
        assert main(["extract", "--checkpoint", str(trained_runs["dmdl"]), "--images",
                     str(toy_regdb / folder / "*" / "*_1[0-9][0-9].bmp"), "--modality", m, "--out",
                     str(tmp_path / f"{m}.npz")]) == 0
    out = tmp_path / "t.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["visualize", "tsne", "--features", str(tmp_path / "visible.npz"),
                     str(tmp_path / "infrared.npz"), "--out", str(out)]) == 0
    _png(out, (1200, 600))


@pytest.mark.parametrize("case, expected", [
    ("missing checkpoint", "checkpoint not found"),
    ("neither", "give either --checkpoint"),
    ("other models", "come from different models"),
    ("not a features file", "is not a dmdl features file"),
])
def test_visualize_tsne_errors(case, expected, toy_regdb, tmp_path, capsys):
    from dmdl.inference.features import save_features

    x = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    a = save_features(tmp_path / "a.npz", x, [f"{i}.png" for i in range(6)], "visible", "aaaa", "c", 64, 32)
    b = save_features(tmp_path / "b.npz", x, [f"{i}.png" for i in range(6)], "infrared", "bbbb", "c", 64, 32)
    (tmp_path / "c.npz").write_bytes(b"junk")
    args = {"missing checkpoint": ["--checkpoint", str(tmp_path / "no.pth"), "--data-root", str(toy_regdb)],
            "neither": [],
            "other models": ["--features", str(a), str(b)],
            "not a features file": ["--features", str(tmp_path / "c.npz")]}[case]
    assert main(["visualize", "tsne", *args, "--out", str(tmp_path / "t.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dmdl visualize: error: ") and expected in err[0]
    assert not (tmp_path / "t.png").exists()
