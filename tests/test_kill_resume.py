"""A deterministic run killed with SIGKILL at a random point and resumed with ``dmdl train
--resume RUN_DIR --deterministic`` ends with the same model and metrics as an uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from dmdl.rundir import CHECKPOINT_NAME, RESULTS_NAME

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--config", "regdb-cpu", "--height", "64", "--width", "32", "--iters", "4", "--batch-size", "16",
        "--num-instances", "4", "--k1", "6", "--k2", "2", "--eps", "0.5", "--workers", "0",
        "--eval-untrained", "false", "--stage1-epochs", "1", "--stage2-epochs", "2"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _dmdl(*args):
    return [sys.executable, "-m", "dmdl.cli", "train", *args]


def _log_rows_raw(run: Path):
    with open(run / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _log_rows(run: Path):
    with open(run / "log.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in csv.DictReader(fh)]


def test_sigkill_then_resume_equals_an_uninterrupted_run(toy_regdb, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    common = ARGS + ["--data-root", str(toy_regdb), "--deterministic"]
    # the uninterrupted run and the run to kill, side by side
    p_full = subprocess.Popen(_dmdl(*common, "--output-dir", str(full)), env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    p_kill = subprocess.Popen(_dmdl(*common, "--output-dir", str(killed)), env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / CHECKPOINT_NAME).is_file():
        assert p_kill.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    # a random point inside the next epoch (the first one's length, from the log written before the checkpoint)
    epoch_seconds = float(_log_rows_raw(killed)[0]["seconds"])
    delay = random.uniform(0.1, 0.8) * epoch_seconds
    time.sleep(delay)
    assert p_kill.poll() is None, "the run ended before it was killed"
    p_kill.send_signal(signal.SIGKILL)
    assert p_kill.wait(timeout=60) == -signal.SIGKILL
    at_kill = torch.load(killed / CHECKPOINT_NAME, weights_only=False)
    assert not (killed / RESULTS_NAME).exists()
    _, err = p_full.communicate(timeout=300)
    assert p_full.returncode == 0, err

    res = subprocess.run(_dmdl("--resume", str(killed), "--deterministic"), env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resumed from {killed / CHECKPOINT_NAME}: stage {at_kill['stage']} epoch {at_kill['epoch']} done" \
        in res.stdout

    a = json.loads((full / RESULTS_NAME).read_text())["results"]["trained"]
    b = json.loads((killed / RESULTS_NAME).read_text())["results"]["trained"]
    print(f"killed {delay:.2f} s after the first checkpoint (epochs take ~{epoch_seconds} s) (last checkpoint: stage {at_kill['stage']} epoch "
          f"{at_kill['epoch']})\nuninterrupted: {a}\nresumed:       {b}")
    assert a == b
    wa = torch.load(full / CHECKPOINT_NAME, weights_only=False)
    wb = torch.load(killed / CHECKPOINT_NAME, weights_only=False)
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
    for m in ("visible", "infrared"):
        assert (wa["pseudo_labels"][m] == wb["pseudo_labels"][m]).all()
    assert _log_rows(full) == _log_rows(killed)  # one row per epoch, none doubled by the resume
