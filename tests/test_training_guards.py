"""Runs that cannot go on stop with the numbers and the knob (exit code 1), and checkpoints are complete."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmdl.cli import main
from dmdl.rundir import CHECKPOINT_NAME
from dmdl.errors import TrainingError
from dmdl.guards import check_clustering, non_finite_loss_message

TINY = ["--height", "64", "--width", "32", "--iters", "2", "--batch-size", "16", "--num-instances", "4",
        "--k1", "6", "--k2", "2", "--eps", "0.5", "--workers", "0", "--eval-untrained", "false"]


def _train(capsys, root, out, *extra):
    rc = main(["train", "--config", "regdb-cpu", "--data-root", str(root), *TINY, "--output-dir", str(out), *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.out, captured.err


def test_check_clustering_messages():
    kw = dict(what="visible training images", where="stage 1 epoch 3", eps=0.6, k1=30, min_samples=4)
    with pytest.raises(TrainingError, match=r"stage 1 epoch 3: DBSCAN found no cluster among the 5 visible .*"
                                            r"Raise --eps \(now 0.6\) or --k1 \(now 30\)"):
        check_clustering(np.full(5, -1), **kw)
    with pytest.raises(TrainingError, match=r"put the 9 clustered visible training images into 1 cluster \(1 "
                                            r"outliers, 10%\).*Lower --eps \(now 0.6\)"):
        check_clustering(np.array([0] * 9 + [-1]), **kw)
    assert check_clustering(np.array([0] * 9 + [-1]), min_clusters=0, **kw) is None  # the knob to go on
    warn = check_clustering(np.array([0, 0, 1, 1] + [-1] * 6), **kw)
    assert "left 6 of 10 visible training images (60%) as outliers, in 2 clusters" in warn and "--eps" in warn
    assert check_clustering(np.array([0, 0, 1, 1] + [-1] * 6), max_outlier_share=0.7, **kw) is None
    msg = non_finite_loss_message("iteration 2/4 of stage 2 epoch 0: the loss is nan; lower the learning rate (--lr)",
                                  "runs/x/checkpoint.pth (stage 1 epoch 0)", "runs/x", 3.5e-4)
    assert msg == ("non-finite loss at iteration 2/4 of stage 2 epoch 0: the loss is nan; the last good checkpoint "
                   "is runs/x/checkpoint.pth (stage 1 epoch 0); continue from it with a lower learning rate: "
                   "dmdl train --resume runs/x --lr 3.5e-05")


def test_dbscan_without_clusters_stops_the_run(capsys, toy_regdb, tmp_path):
    rc, out, err = _train(capsys, toy_regdb, tmp_path / "run", "--eps", "0.01")
    assert rc == 1
    assert ("dmdl train: error: stage 1 epoch 0: DBSCAN found no cluster among the 60 visible training images"
            in err and "Raise --eps (now 0.01) or --k1 (now 6)" in err)


def test_one_cluster_stops_the_run(capsys, toy_regdb, tmp_path, monkeypatch):
    import dmdl.training.steps as steps

    monkeypatch.setattr(steps, "cluster_features", lambda f, **kw: np.zeros(len(f), dtype=np.int64))
    rc, out, err = _train(capsys, toy_regdb, tmp_path / "run")
    assert rc == 1 and "DBSCAN put the 60 clustered visible training images into 1 cluster" in err
    assert "Lower --eps (now 0.5)" in err and "--min-clusters 0" in err


def test_non_finite_loss_names_the_iteration_and_the_last_checkpoint(capsys, toy_regdb, tmp_path, monkeypatch):
    from dmdl.methods.dmdl import DMDL

    real_step = DMDL.step

    def step(self, batch, certainty_batch, plan):
        if plan.stage == 2:
            raise FloatingPointError(f"stage 2 epoch {plan.epoch}: the loss is nan; lower the learning rate (--lr)")
        return real_step(self, batch, certainty_batch, plan)

    monkeypatch.setattr(DMDL, "step", step)
    out = tmp_path / "run"
    rc, _, err = _train(capsys, toy_regdb, out, "--stage1-epochs", "1", "--stage2-epochs", "1")
    assert rc == 1
    assert (f"dmdl train: error: non-finite loss at iteration 1/2 of stage 2 epoch 0: the loss is nan; the last "
            f"good checkpoint is {out / CHECKPOINT_NAME} (stage 1 epoch 0); continue from it with a lower learning "
            f"rate: dmdl train --resume {out} --lr 3.5e-05") in err


def test_diverging_run_without_a_checkpoint(capsys, toy_regdb, tmp_path):
    rc, _, err = _train(capsys, toy_regdb, tmp_path / "run", "--lr", "1e30", "--stage1-epochs", "1",
                        "--stage2-epochs", "0")
    assert rc == 1 and "non-finite loss at iteration" in err and "no checkpoint was written yet" in err


def test_checkpoint_contents_and_workers_cap(capsys, toy_regdb, tmp_path, monkeypatch):
    import dmdl.training.context

    monkeypatch.setattr(dmdl.training.context, "available_cores", lambda: 1)
    out = tmp_path / "run"
    rc, printed, err = _train(capsys, toy_regdb, out, "--stage1-epochs", "1", "--stage2-epochs", "0",
                              "--workers", "4")
    assert rc == 0
    assert "workers: 1 (the 1 CPU cores available; the config asks 4)" in printed
    assert printed.count(f"output directory: {out.resolve()}") == 2  # at the start and at the end
    assert "progress: 1/1 epochs done (stage 1: 1/1), elapsed 0:00:" in printed and "ETA 0:00:00" in printed
    ckpt = torch.load(out / CHECKPOINT_NAME, weights_only=False)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "pseudo_labels", "memories", "sampler",
            "workers"} <= set(ckpt)
    assert set(ckpt["rng"]) == {"python", "numpy", "torch", "cuda"} and ckpt["workers"] == 1
    labels = ckpt["pseudo_labels"]["visible"]
    assert labels.shape == (60,) and labels.max() + 1 == ckpt["memories"]["features"]["visible"].shape[0]
    assert ckpt["sampler"]["batches"] == 2 and set(ckpt["sampler"]["seeds"]) == {"visible", "infrared"}
    assert not list(out.glob("*.tmp"))  # written atomically


def test_resume_with_a_new_learning_rate_applies_it(capsys, toy_regdb, tmp_path):
    out = tmp_path / "run"
    rc, _, _ = _train(capsys, toy_regdb, out, "--stage1-epochs", "1", "--stage2-epochs", "0")
    assert rc == 0
    rc = main(["train", "--resume", str(out), "--stage1-epochs", "2", "--lr", "0.001"])
    captured = capsys.readouterr()
    assert rc == 0 and "warning: resuming with settings that differ" in captured.err
    assert "lr 0.00035 -> 0.001" in captured.err and "stage 1 epoch 0 done; next stage 1 epoch 1" in captured.out
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:3] for r in rows] == [["1", "0", "0.00035"], ["1", "1", "0.001"]]
