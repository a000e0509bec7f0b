"""tools/gpu_check.sh: the GPU check, run end to end on the CPU (``--dry-run``), so that it cannot rot.

The full dry run (every step: environment, build, doctor, CUDA tests, four op timings, two short
trainings) takes about a minute on two cores; the other tests run one or two steps to check that a
failing, hanging or interrupted step still leaves a complete, partial report.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
STEPS = ["environment", "build", "doctor", "cuda_tests", "time_memory", "time_propagation", "time_label_transfer",
         "train_plain", "train_torchrun", "time_jaccard"]  # the list, in the script's order
OPS = {"jaccard", "memory", "propagation", "label_transfer"}
METRICS = {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}


def _cmd(tmp_path, *args):
    return ["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "report.json"),
            "--workdir", str(tmp_path / "work"), *args]


def _env():
    return dict(os.environ, PYTHON=sys.executable)


def _check(tmp_path, *args, timeout=60):
    proc = subprocess.run(_cmd(tmp_path, *args), env=_env(), capture_output=True, text=True, timeout=timeout)
    return proc, json.loads((tmp_path / "report.json").read_text())


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (the per-test work directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _assert_timing(t: dict) -> None:
    assert t["timer"] == "perf_counter" and t["runs"] >= 1
    assert 0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"]


def test_dry_run_end_to_end(tmp_path):
    proc, rep = _check(tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rep["schema"] == "dmdl-gpu-check/1" and rep["mode"] == "dry-run" and rep["status"] == "ok"
    assert list(rep["steps"]) == STEPS
    for name, step in rep["steps"].items():
        assert step["status"] == "ok" and step["seconds"] > 0 and "error" not in step, name
        assert Path(step["log"]).is_file() and Path(step["log"]).parent == tmp_path / "report_logs"
    assert rep["torch"]["version"] == torch.__version__ and rep["device"]["cuda_available"] is False
    assert rep["build_info"]["torch_version"] == torch.__version__.split("+")[0]
    assert rep["packages"]["missing_required"] == []
    assert {"torch", "dmdl._C"} <= {c["name"] for c in rep["doctor"]}

    tests = rep["cuda_tests"]
    assert "tests/test_jaccard_cuda.py" in tests["files"] and tests["failed"] == tests["errors"] == 0
    # counts from the JUnit file against pytest's own terminal summary in the step's log
    log = Path(rep["steps"]["cuda_tests"]["log"]).read_text()
    summary = re.search(r"(\d+) passed, (\d+) skipped", log)
    assert summary and (tests["passed"], tests["skipped"]) == (int(summary[1]), int(summary[2]))
    assert tests["skipped"] > 0 and all(re.search("CUDA", r) for r in tests["skip_reasons"])

    assert set(rep["ops"]) == OPS
    for name, op in rep["ops"].items():
        _assert_timing(op["ours"])
        _assert_timing(op["baseline"])
        assert op["speedup"] == pytest.approx(op["baseline"]["median_ms"] / op["ours"]["median_ms"], rel=0.01), name
    assert rep["ops"]["jaccard"]["share_within_1e-4_of_reference"] >= 0.99
    assert max(rep["ops"]["memory"]["max_abs_diff_vs_reference"]["ours"].values()) <= 1e-5
    assert rep["ops"]["propagation"]["max_abs_diff_vs_reference"] <= 1e-5
    assert rep["ops"]["label_transfer"]["max_abs_diff_vs_reference"] <= 1e-4

    assert set(rep["training"]) == {"plain", "torchrun"}
    for name, run in rep["training"].items():
        assert run["config"]["arch"] == "resnet18" and run["config"]["device"] == "cpu" and run["config"]["amp"]
        assert [(r["stage"], r["epoch"]) for r in run["epochs"]] == [("1", "0"), ("2", "0")], name
        for direction in ("v2t", "t2v"):
            values = run["metrics"]["trained"][direction]
            assert set(values) == METRICS and all(0 <= v <= 100 for v in values.values())
    assert "torchrun" in rep["training"]["torchrun"]["command"]
    assert rep["summary"][0].startswith("dmdl gpu check (dry-run): ok")


def test_failed_step_leaves_partial_report_and_the_next_step_runs(tmp_path):
    proc, rep = _check(tmp_path, "--steps", "environment,time_memory", "--inject", "fail:environment")
    assert proc.returncode == 1 and rep["status"] == "failed"
    env = rep["steps"]["environment"]
    assert env["status"] == "failed" and "injected failure" in env["error"] and "injected failure" in env["log_tail"]
    assert rep["steps"]["time_memory"]["status"] == "ok" and rep["ops"]["memory"]["speedup"] > 0
    for name in set(STEPS) - {"environment", "time_memory"}:
        assert rep["steps"][name] == {"status": "skipped", "seconds": 0.0, "error": "not selected (--steps)"}
    assert "environment" in proc.stdout and "failed" in proc.stdout  # the printed summary


def test_hanging_step_is_killed_at_its_time_limit(tmp_path):
    proc, rep = _check(tmp_path, "--steps", "environment", "--inject", "hang:environment", "--max-step-seconds", "2")
    assert proc.returncode == 1 and rep["status"] == "failed"
    assert rep["steps"]["environment"]["error"] == "timed out after 2 s (the step's limit)"
    assert _processes_mentioning(str(tmp_path / "work")) == []


def test_sigterm_writes_the_report_and_stops_the_step(tmp_path):
    child = subprocess.Popen(_cmd(tmp_path, "--steps", "environment,time_memory", "--inject", "hang:environment"),
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    report = tmp_path / "report.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if report.is_file() and json.loads(report.read_text())["steps"]["environment"]["status"] == "running":
            break
        time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=30)
    rep = json.loads(report.read_text())
    assert child.returncode == 128 + signal.SIGTERM and rep["status"] == "interrupted (SIGTERM)"
    assert rep["steps"]["environment"]["status"] == "failed"
    assert rep["steps"]["environment"]["error"] == "interrupted by SIGTERM"
    assert rep["steps"]["time_memory"]["status"] == "not run" and "SIGTERM" in rep["steps"]["time_memory"]["error"]
    assert rep["finished_at"] and rep["summary"]
    assert _processes_mentioning(str(tmp_path / "work")) == []


def test_unknown_step_is_a_usage_error(tmp_path):
    proc = subprocess.run(_cmd(tmp_path, "--steps", "build,nonsense"), env=_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "unknown step(s) nonsense" in proc.stderr
    assert not (tmp_path / "report.json").exists()
