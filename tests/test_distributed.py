"""Distributed training with real processes (gloo on the CPU, torchrun): the 2-process run is the
one-process run with two ghost-BatchNorm groups, to the bit; faults (a killed rank, SIGTERM) end
with the uninterrupted run's metrics; checkpoints move between world sizes; bad layouts and an
unreachable rendezvous are one-line errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--height", "64", "--width", "32", "--batch-size", "16", "--num-instances", "4", "--k1", "6", "--k2", "2",
        "--eps", "0.5", "--workers", "0", "--eval-untrained", "false", "--deterministic", "--ghost-bn-groups", "2"]
RUNS = {  # a few iterations of both stages; DMDL also through its refined and paired epochs
    "dmdl": ["--config", "regdb-cpu", "--iters", "2", "--stage1-epochs", "1", "--stage2-epochs", "3",
             "--refine-from-stage2", "1", "--inter-modality-from", "2"],
    "mult": ["--config", "regdb-cpu-mult", "--iters", "2", "--stage1-epochs", "1", "--stage2-epochs", "2"],
}


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(key, None)
    env.update(extra)
    return env


def _train(*args, timeout=600, **env):
    return subprocess.run([sys.executable, "-m", "dmdl", "train", *args], env=_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def _log(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in csv.DictReader(fh)]


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())["results"]["trained"]


@pytest.fixture(scope="module")
def one_process(toy_regdb, tmp_path_factory):
    """The one-process runs (two ghost-BN groups) the distributed runs must reproduce."""
    out = {}
    for name, args in RUNS.items():
        run = tmp_path_factory.mktemp("one") / name
        proc = _train(*args, *TINY, "--data-root", str(toy_regdb), "--output-dir", str(run))
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[name] = run
    return out


@pytest.mark.parametrize("name", sorted(RUNS))
def test_two_processes_are_the_one_process_run(name, one_process, toy_regdb, tmp_path):
    run = tmp_path / "two"
    proc = _train(*RUNS[name], *TINY, "--data-root", str(toy_regdb), "--output-dir", str(run), "--nproc", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed: 2 processes (gloo)" in proc.stdout
    assert "BatchNorm group: 1/2 of each step's batch (1 group(s) per process)" in proc.stdout
    want = _log(one_process[name])
    got = _log(run)
    assert [(r["stage"], r["epoch"]) for r in got] == [(r["stage"], r["epoch"]) for r in want]
    for g, w in zip(got, want):  # pseudo-labels (their counts and ARI) identical, losses too
        for key, value in w.items():
            if value and (key.startswith("loss") or key.startswith("certainty")):
                assert float(g[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-7), (g["stage"], g["epoch"], key)
            else:
                assert g[key] == value, (g["stage"], g["epoch"], key)
    for direction, metrics in _results(one_process[name]).items():
        for k, v in metrics.items():
            assert round(_results(run)[direction][k], 2) == round(v, 2), (direction, k)
    # the memories rank 0 saved (every rank's: the engine checks their digests each epoch) are the one process's
    a = torch.load(run / "checkpoint.pth", weights_only=False)["memories"]
    b = torch.load(one_process[name] / "checkpoint.pth", weights_only=False)["memories"]
    feats = (lambda m: m["features"]) if name == "dmdl" else (lambda m: m)
    for key, t in feats(b).items():
        torch.testing.assert_close(feats(a)[key], t, rtol=0, atol=1e-6, msg=key)


def test_a_two_process_checkpoint_resumes_in_one_process(one_process, toy_regdb, tmp_path):
    part = tmp_path / "part"
    proc = _train(*RUNS["dmdl"], *TINY, "--stage2-epochs", "0", "--data-root", str(toy_regdb), "--output-dir",
                  str(part), "--nproc", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _train("--resume", str(part), "--stage2-epochs", "3")  # one process now
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _log(part) == _log(one_process["dmdl"]) and _results(part) == _results(one_process["dmdl"])


def _workers(parent: int) -> list[int]:
    """The PIDs of the processes running dmdl below ``parent`` (torchrun's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().split(") ")[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if int(stat[1]) == parent and b"-m dmdl" in cmd:
            found.append(int(entry.name))
    return found


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    start = time.time()
    while not path.is_file():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() - start < timeout, f"{path} did not appear"
        time.sleep(0.05)


def test_a_killed_rank_restarts_and_the_run_ends_as_uninterrupted(one_process, toy_regdb, tmp_path):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=1",
           "-m", "dmdl", "train", *RUNS["dmdl"], *TINY, "--data-root", str(toy_regdb), "--output-dir", str(run)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(run / "checkpoint.pth", proc)  # stage 1 done: kill a rank in the middle of stage 2
    workers = _workers(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "resumed from" in out
    assert _log(run) == _log(one_process["dmdl"]) and _results(run) == _results(one_process["dmdl"])


def test_sigterm_stops_cleanly_and_the_run_resumes_to_the_same_metrics(one_process, toy_regdb, tmp_path):
    run = tmp_path / "term"
    cmd = [sys.executable, "-m", "dmdl", "train", *RUNS["dmdl"], *TINY, "--data-root", str(toy_regdb),
           "--output-dir", str(run), "--nproc", "2"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for(run / "checkpoint.pth", proc)
    os.killpg(proc.pid, signal.SIGTERM)  # what SLURM and Kubernetes send to the whole job
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert f"continue with: dmdl train --resume {run}" in err and "terminated (SIGTERM)" in err
    done = _train("--resume", str(run), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _log(run) == _log(one_process["dmdl"]) and _results(run) == _results(one_process["dmdl"])


@pytest.mark.parametrize("args,match", [
    (["--nproc", "4", "--ghost-bn-groups", "4", "--batch-size", "12"],
     r"4 processes \(x 1 ghost groups\) cannot split a modality's 24 rows .* into blocks of whole identities"),
    (["--nproc", "2", "--ghost-bn-groups", "3", "--batch-size", "24"], "ghost_bn_groups 3 does not fit 2 processes"),
    (["--nproc", "2", "--ghost-bn-groups", "1"], "BatchNorm would have to be synchronised across processes, which "
                                                 "needs CUDA"),
    (["--nproc", "2", "--dist-backend", "nccl"], "dist_backend nccl needs CUDA devices"),
])
def test_bad_layouts_are_one_line_errors(args, match, toy_regdb, tmp_path):
    proc = _train(*RUNS["dmdl"], *TINY, "--data-root", str(toy_regdb), "--output-dir", str(tmp_path), *args)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert errors and any(__import__("re").search(match, ln) for ln in errors), proc.stderr[-2000:]


def test_an_unreachable_rendezvous_names_the_address_and_the_timeout(toy_regdb, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _train(*RUNS["dmdl"], *TINY, "--data-root", str(toy_regdb), "--output-dir", str(tmp_path),
                  "--dist-timeout", "3", RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=str(port), timeout=120)
    assert proc.returncode == 2
    assert (f"dmdl train: error: [rank 1] rank 1 could not join the process group at 127.0.0.1:{port} within 3 s "
            "(dist_timeout)") in proc.stderr
