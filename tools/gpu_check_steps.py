"""The steps of ``tools/gpu_check.py``; each runs in its own process (see that file's docstring).

Every step function takes ``(out, ctx)``: ``out`` a dict whose every assignment is written to the
step's payload file at once (so a step killed half-way still reports what it measured), ``ctx``
``{"mode": "gpu" | "dry-run", "workdir": Path, "root": Path, "sizes": dict, "build": str}``. A step
fails by raising; what it stored in ``out`` before is kept.

Timings: ``{"median_ms", "min_ms", "max_ms", "runs", "warmup", "timer"}``, with CUDA events on a
GPU and ``time.perf_counter`` on the CPU (dry run, and the baselines that run on the host).
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

K1, K2 = 30, 6  # Jaccard parameters of every reference repository (docs/benchmarks.md#jaccard)
TEMPERATURE, MOMENTUM = 0.05, 0.2  # memory step (docs/benchmarks.md#memory-step)
CUDA_TEST_PATTERN = re.compile(r"\.cuda\(\)|cuda_compiled\(\)|device=[\"']cuda|DEV = [\"']cuda")


# =============================================================================== helpers
def _device(ctx):
    import torch

    if ctx["mode"] == "dry-run":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, "
                           f"CUDA {torch.version.cuda})")
    return torch.device("cuda")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, warmup: int, repeat: int) -> dict:
    """Runs ``fn`` ``warmup`` times, then times ``repeat`` runs one by one (CUDA events on a CUDA
    device, perf_counter on the CPU). Returns the timing dict of the module docstring."""
    import torch

    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": repeat,
            "warmup": warmup, "timer": "cuda-events" if device.type == "cuda" else "perf_counter"}


def _host_time_ms(fn, device) -> tuple[dict, object]:
    """One run of a host-bound baseline, timed with perf_counter (device synchronised)."""
    _sync(device)
    t = time.perf_counter()
    result = fn()
    _sync(device)
    ms = (time.perf_counter() - t) * 1e3
    return {"median_ms": ms, "min_ms": ms, "max_ms": ms, "runs": 1, "warmup": 0, "timer": "perf_counter"}, result


def _speedup(baseline: dict, ours: dict) -> float | None:
    if baseline and ours and ours.get("median_ms"):
        return round(baseline["median_ms"] / ours["median_ms"], 2)
    return None


def load_bench(name: str, root: Path):
    """A module of ``bench/`` by path (``bench`` is not a package): its baselines and inputs."""
    path = root / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_gpu_check_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(cmd, ctx, env=None, what="command") -> subprocess.CompletedProcess:
    """Runs ``cmd`` in the repository root, echoes its output to this step's log, and raises with
    the last lines of its output when it fails."""
    proc = subprocess.run(cmd, cwd=ctx["root"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(f"$ {' '.join(str(c) for c in cmd)}\n{proc.stdout}", flush=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()] or ["(no output)"]
        # the headline: dmdl's one-line error ("dmdl train: error: ..."), else the last line naming an error
        key = (next((ln for ln in reversed(lines) if re.match(r"dmdl \S+: error:", ln)), None)
               or next((ln for ln in reversed(lines) if re.search(r"error", ln, re.I)), lines[-1]))
        raise RuntimeError(f"{what} exited with code {proc.returncode}: {key}\n" + "\n".join(lines[-12:]))
    return proc


# =============================================================================== environment
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _nvidia_smi() -> str | None:
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None


def step_environment(out, ctx) -> None:
    import torch

    out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version() if torch.version.cuda else None,
                    "git_version": getattr(torch.version, "git_version", None)}
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count()
    out["cpu"] = {"cpu_model": _cpu_model(), "cores_available": cores,
                  "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                  "torch_threads": torch.get_num_threads()}
    from torch.utils import cpp_extension

    nvcc = Path(cpp_extension.CUDA_HOME or "/nonexistent") / "bin" / "nvcc"
    nvcc_version = None
    if nvcc.is_file():
        proc = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True)
        nvcc_version = (proc.stdout.strip().splitlines() or [None])[-1]
    dev = {"cuda_available": torch.cuda.is_available(), "count": torch.cuda.device_count() if torch.version.cuda else 0,
           "cuda_home": cpp_extension.CUDA_HOME, "nvcc": nvcc_version, "nvidia_smi": _nvidia_smi()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        dev.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                   multiprocessors=p.multi_processor_count)
    else:
        dev.update(name="cpu (dry run)" if ctx["mode"] == "dry-run" else None, capability=None)
    out["device"] = dev
    _device(ctx)  # a GPU check without a GPU fails here (the rest still runs and reports)


# =============================================================================== build
_VERIFY = r"""
import json, torch
from pathlib import Path
from dmdl import _C
from dmdl.doctor import fatbin_architectures
info = dict(_C.build_info())
archs = fatbin_architectures(Path(_C.__file__).read_bytes()) if info.get("cuda_compiled") else {}
print("BUILD_INFO=" + json.dumps({"build_info": info, "file": _C.__file__,
      "archs": {str(k): sorted(v) for k, v in sorted(archs.items())}}, default=str))
"""


def _verify_extension(ctx) -> dict:
    """build_info, file and compiled GPU architectures of dmdl._C, loaded in a fresh process."""
    proc = _run([sys.executable, "-c", _VERIFY], ctx, what="loading dmdl._C")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BUILD_INFO=")][-1]
    return json.loads(line[len("BUILD_INFO="):])


def _cuda_home_for(cuda_version: str | None) -> tuple[str | None, str]:
    """(CUDA_HOME to set or None, how it was found) when neither CUDA_HOME nor nvcc on PATH is set:
    the /usr/local/cuda-X.Y toolkit of torch's CUDA major version, else /usr/local/cuda."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return None, "CUDA_HOME from the environment"
    if shutil.which("nvcc"):
        return None, "nvcc on PATH (setup.py resolves its root)"
    homes = [str(Path(p).parents[1]) for p in sorted(glob.glob("/usr/local/cuda*/bin/nvcc"))]
    major = (cuda_version or "").split(".")[0]
    ranked = ([h for h in homes if Path(h).name.startswith(f"cuda-{major}.")]
              + [h for h in homes if Path(h).name == "cuda"] + homes)
    if ranked:
        return ranked[0], "found under /usr/local (neither CUDA_HOME nor nvcc on PATH was set)"
    raise RuntimeError(f"no CUDA compiler: CUDA_HOME is unset, nvcc is not on PATH and /usr/local/cuda*/bin/nvcc "
                       f"does not exist; the CUDA kernels need the nvcc of CUDA {cuda_version}")


def _in_checkout(path: str, ctx) -> bool:
    return Path(path).resolve().parent == (ctx["root"] / "dmdl").resolve()


def _build_command(ctx) -> list[str]:
    if ctx["build"] == "pip":
        return [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-e", "."]
    return [sys.executable, "setup.py", "build_ext", "--inplace"]


def step_build(out, ctx) -> None:
    import torch

    env = dict(os.environ)
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    if ctx["mode"] == "dry-run":
        from dmdl.ops import _library

        try:
            lib = _library.load()
        except ImportError as exc:
            lib = None
            out["reuse_failed"] = str(exc).splitlines()[0]
        if lib is not None and not _in_checkout(lib.__file__, ctx):
            out["reuse_failed"] = f"dmdl._C loads from {lib.__file__}, not from this checkout"
            lib = None
        if lib is not None and lib.build_info().get("torch_version") == torch.__version__.split("+")[0]:
            out.update(action="reused the extension already built (dry run)", build_info=dict(lib.build_info()),
                       file=lib.__file__)
            return
        env["DMDL_CPU_ONLY"] = "1"
        out["action"] = "built the CPU kernels (DMDL_CPU_ONLY=1, dry run)"
    else:
        dev = _device(ctx)
        major, minor = torch.cuda.get_device_capability(dev)
        env.update(DMDL_FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=f"{major}.{minor}")
        env.pop("DMDL_CPU_ONLY", None)
        home, how = _cuda_home_for(torch.version.cuda)
        if home:
            env["CUDA_HOME"] = home
        out["cuda_home"] = {"value": env.get("CUDA_HOME"), "how": how}
        out["action"] = f"built CPU + CUDA kernels for TORCH_CUDA_ARCH_LIST={major}.{minor} (DMDL_FORCE_CUDA=1)"
    cmd = _build_command(ctx)
    out["command"] = " ".join(cmd)
    out["env"] = {k: env[k] for k in ("DMDL_CPU_ONLY", "DMDL_FORCE_CUDA", "TORCH_CUDA_ARCH_LIST", "MAX_JOBS",
                                      "CUDA_HOME") if k in env}
    t = time.perf_counter()
    _run(cmd, ctx, env=env, what="the build")
    out["build_seconds"] = round(time.perf_counter() - t, 1)
    found = _verify_extension(ctx)
    out.update(found)
    if not _in_checkout(found["file"], ctx):
        raise RuntimeError(f"after the build dmdl._C loads from {found['file']}, not from this checkout's dmdl/ "
                           "(another dmdl installed in this Python?)")
    if ctx["mode"] == "gpu":
        from dmdl.doctor import kernels_run_on

        if not found["build_info"].get("cuda_compiled"):
            raise RuntimeError("the build finished but dmdl._C has no CUDA kernels")
        archs = {int(a): set(kinds) for a, kinds in found["archs"].items()}
        via = kernels_run_on(archs, (major, minor))
        out["kernels_run_via"] = via
        if via is None:
            raise RuntimeError(f"dmdl._C has no code for compute capability {major}.{minor}: {found['archs']}")


# =============================================================================== doctor
def step_doctor(out, ctx) -> None:
    from dmdl.doctor import as_dicts, run_checks

    checks = as_dicts(run_checks())
    out["checks"] = checks
    out["counts"] = {s: sum(c["status"] == s for c in checks) for s in ("ok", "warn", "FAIL", "info")}
    failed = [f"{c['name']}: {c['detail']}" for c in checks if c["status"] == "FAIL"]
    if ctx["mode"] == "gpu" and not any(c["name"] == "GPU" and c["status"] == "ok" for c in checks):
        failed.append("no GPU on which the dmdl kernels run")
    if failed:
        raise RuntimeError("dmdl doctor: " + "; ".join(failed))


# =============================================================================== CUDA tests
def cuda_test_files(root: Path) -> list[str]:
    """Test files with CUDA tests: those that move tensors to a GPU or ask whether the CUDA kernels
    were compiled (they skip without a GPU), ``tests/test_*cuda*.py`` always."""
    files = []
    for path in sorted((root / "tests").glob("test_*.py")):
        if "cuda" in path.name or CUDA_TEST_PATTERN.search(path.read_text(encoding="utf-8")):
            files.append(str(path.relative_to(root)))
    return files


def parse_junit(path: Path) -> dict:
    """Counts, failures and skip reasons from a pytest JUnit XML file."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, reasons = [], {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag: child for child in case}
        if "failure" in kinds or "error" in kinds:
            kind = "failed" if "failure" in kinds else "errors"
            counts[kind] += 1
            node = kinds.get("failure", kinds.get("error"))
            failures.append({"test": test, "kind": kind, "message": (node.get("message") or "")[:500]})
        elif "skipped" in kinds:
            counts["skipped"] += 1
            reason = (kinds["skipped"].get("message") or "").strip()[:300]
            reasons[reason] = reasons.get(reason, 0) + 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures, "skip_reasons": reasons}


def step_cuda_tests(out, ctx) -> None:
    files = cuda_test_files(ctx["root"])
    out["files"] = files
    junit = ctx["workdir"] / "cuda_tests.xml"
    junit.unlink(missing_ok=True)
    # a dry run: only the tests named for CUDA (they skip on the CPU; the files' other tests are in the suite)
    select = ["-k", "cuda"] if ctx["mode"] == "dry-run" else []
    cmd = [sys.executable, "-X", "faulthandler", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={junit}", *select, *files]
    out["command"] = " ".join(cmd)
    out["selection"] = "tests named for CUDA (-k cuda)" if select else "every test of the files"
    out["triton_interpret"] = os.environ.get("TRITON_INTERPRET")
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ctx["root"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(proc.stdout, flush=True)
    out["pytest_seconds"] = round(time.perf_counter() - t, 1)
    out["pytest_exit_code"] = proc.returncode
    if not junit.is_file():
        raise RuntimeError(f"pytest wrote no report (exit code {proc.returncode}): "
                           + " | ".join(proc.stdout.strip().splitlines()[-5:]))
    out.update(parse_junit(junit))
    if out["failed"] or out["errors"]:
        names = ", ".join(f["test"] for f in out["failures"][:5])
        raise RuntimeError(f"{out['failed']} failed, {out['errors']} errors: {names}")
    if proc.returncode < 0:  # the JUnit file is written when the session ends: the crash came after it
        out["warnings"] = [f"pytest was killed by signal {-proc.returncode} after its session had finished "
                           "(JUnit report complete, no test failed); faulthandler's traceback is in the log"]
    elif proc.returncode != 0:
        raise RuntimeError(f"pytest exited with code {proc.returncode}")
    if ctx["mode"] == "gpu":
        gpu_skips = {r: n for r, n in out["skip_reasons"].items() if re.search(r"cuda|gpu|triton", r, re.I)}
        if gpu_skips:
            raise RuntimeError(f"{sum(gpu_skips.values())} CUDA tests skipped on a GPU machine: {gpu_skips}")


# =============================================================================== op timings
def step_time_memory(out, ctx) -> None:
    """One memory-bank step: loss + backward + momentum update (docs/benchmarks.md#memory-step)."""
    from dmdl.ops.memory import memory_loss, memory_loss_reference, momentum_update_, momentum_update_reference

    dev, s = _device(ctx), ctx["sizes"]
    bm = load_bench("bench_memory", ctx["root"])
    x, y, mem0 = (t.to(dev) for t in bm.make_inputs(s["mem_b"], s["mem_k"], s["mem_d"]))
    out.update(b=s["mem_b"], k=s["mem_k"], d=s["mem_d"], device=str(dev))

    def step(loss_fn, update_fn):
        def run(mem):
            xr = x.detach().requires_grad_(True)
            loss = loss_fn(xr, mem, y, TEMPERATURE)
            loss.backward()
            update_fn(mem, x, y, MOMENTUM)
            return loss.detach(), xr.grad

        return run

    ours, reference = step(memory_loss, momentum_update_), step(memory_loss_reference, momentum_update_reference)

    agree = {}
    ref_mem = mem0.clone()
    ref = reference(ref_mem)
    for name, fn in (("ours", ours), ("released_loop", bm.loop_step)):
        mem = mem0.clone()
        loss, grad = fn(x, y, mem) if name == "released_loop" else fn(mem)
        agree[name] = {"loss": abs(loss.item() - ref[0].item()), "grad": (grad - ref[1]).abs().max().item(),
                       "memory": (mem - ref_mem).abs().max().item()}
    out["max_abs_diff_vs_reference"] = agree
    w, r = s["warmup"], 2 * s["repeat"]
    mem = mem0.clone()
    out["ours"] = dict(time_ms(lambda: ours(mem), dev, w, r), what="dmdl.ops memory_loss + backward + momentum_update_")
    mem = mem0.clone()
    out["baseline"] = dict(time_ms(lambda: reference(mem), dev, w, r),
                           what="memory_loss_reference + backward + momentum_update_reference (per-sample loop)")
    mem = mem0.clone()
    out["released_loop"] = dict(time_ms(lambda: bm.loop_step(x, y, mem), dev, w, r),
                                what="Cluster-Contrast CM autograd.Function, loop in backward (bench_memory.py)")
    out["speedup"] = _speedup(out["baseline"], out["ours"])
    out["speedup_vs_released_loop"] = _speedup(out["released_loop"], out["ours"])
    bad = {k: v for k, v in agree.items() if max(v.values()) > 1e-5 * max(1.0, abs(ref[0].item()))}
    if bad:
        raise RuntimeError(f"memory step disagrees with the per-sample reference beyond 1e-5: {bad}")


def step_time_propagation(out, ctx) -> None:
    """One step ``Y <- a A Y + b Z`` on MULT's 1 - Jaccard affinity (docs/benchmarks.md#propagation)."""
    import torch

    from dmdl.ops import propagate
    from dmdl.ops.propagation import propagate_reference
    from dmdl.testing import clustered_features, jaccard_affinity

    dev, s = _device(ctx), ctx["sizes"]
    n, k = s["prop_n"], s["prop_k"]
    feats = clustered_features(n, s["prop_d"], 0, noise=0.8, cluster_size=20, device=dev)
    aff = jaccard_affinity(feats, K1, K2)
    g = torch.Generator(device=dev).manual_seed(1)
    y = torch.softmax(5.0 * torch.randn(n, k, generator=g, device=dev), dim=1)
    nnz = aff.values().numel()
    out.update(n=n, k=k, d=s["prop_d"], nnz=nnz, nnz_per_row=round(nnz / n, 1), device=str(dev))
    want = propagate_reference(aff, y, y, 0.5, 0.5)
    out["max_abs_diff_vs_reference"] = (propagate(aff, y, y, 0.5, 0.5) - want).abs().max().item()
    w, r = s["warmup"], s["repeat"]
    out["ours"] = dict(time_ms(lambda: propagate(aff, y, y, 0.5, 0.5), dev, w, r),
                       what="dmdl.ops.propagate on the CSR affinity")
    dense = aff.to_dense()
    out["baseline"] = dict(time_ms(lambda: torch.addmm(y, dense, y, beta=0.5, alpha=0.5), dev, w, r),
                           what="torch.addmm with the dense N x N affinity (MULT's code)")
    out["speedup"] = _speedup(out["baseline"], out["ours"])
    try:
        out["torch_sparse"] = dict(time_ms(lambda: torch.addmm(y, aff, y, beta=0.5, alpha=0.5), dev, w, r),
                                   what="torch.addmm with the torch.sparse_csr affinity")
    except RuntimeError as exc:  # not every torch build has CSR addmm on every device
        out["torch_sparse"] = {"error": str(exc).splitlines()[0]}
    if out["max_abs_diff_vs_reference"] > 1e-5:
        raise RuntimeError(f"propagate differs from the dense float64 reference by {out['max_abs_diff_vs_reference']}")


def _label_transfer_inputs(ctx, dev):
    from dmdl.ops import jaccard_distance
    from dmdl.pseudo_labels import dbscan_labels
    from dmdl.pseudo_labels.mult import dbscan_centers
    from dmdl.testing import two_modality_features

    s = ctx["sizes"]
    fr, fi, _, _ = two_modality_features(0, n_visible=s["lt_rgb"], n_infrared=s["lt_ir"], ids=s["lt_rgb"] // 20,
                                         d=s["lt_d"], shift=0.1, noise=0.6, gap_first=True)
    data = {}
    for name, f in (("rgb", fr.to(dev)), ("ir", fi.to(dev))):
        sparse = jaccard_distance(f, K1, K2, output="sparse")
        labels = dbscan_labels(sparse, 0.6, 4)
        data[name] = (f, sparse, jaccard_distance(f, K1, K2, output="dense"), dbscan_centers(f, labels))
    return data


def step_time_label_transfer(out, ctx) -> None:
    """MULT's label transfer, sparse Jaccard graph against the dense reference (docs/benchmarks.md#propagation)."""
    from dmdl.pseudo_labels.mult import mult_label_transfer

    dev, s = _device(ctx), ctx["sizes"]
    data = _label_transfer_inputs(ctx, dev)
    (fr, sr, dr, cr), (fi, si, di, ci) = data["rgb"], data["ir"]
    out.update(n_rgb=fr.shape[0], n_ir=fi.shape[0], k_rgb=cr.shape[0], k_ir=ci.shape[0], d=fr.shape[1],
               device=str(dev))
    ours = mult_label_transfer(fr, fi, cr, ci, sr, si)
    ref = mult_label_transfer(fr, fi, cr, ci, dr, di)
    keys = ("y_rgb", "y_ir", "y_rgb_cm", "y_ir_cm")
    out["max_abs_diff_vs_reference"] = max((ours[k] - ref[k]).abs().max().item() for k in keys)
    out["iterations"], out["sinkhorn_steps"] = ours["iterations"], ours["sinkhorn_steps"]
    w, r = 1, max(2, s["repeat"] // 3)
    out["ours"] = dict(time_ms(lambda: mult_label_transfer(fr, fi, cr, ci, sr, si), dev, w, r),
                       what="mult_label_transfer on the sparse Jaccard output (CSR propagation)")
    out["baseline"] = dict(time_ms(lambda: mult_label_transfer(fr, fi, cr, ci, dr, di), dev, w, r),
                           what="mult_label_transfer on dense Jaccard distances (dense products, MULT's code)")
    out["speedup"] = _speedup(out["baseline"], out["ours"])
    if out["max_abs_diff_vs_reference"] > 1e-4:
        raise RuntimeError(f"label transfer differs from the dense reference by {out['max_abs_diff_vs_reference']}")


def _baseline_knn(dev):
    """(knn(features_numpy, k) -> int64 [N, k] numpy, description): what a user of the reference
    code runs on this machine: faiss-gpu brute force when faiss has GPUs, else faiss-cpu, else torch."""
    import numpy as np
    import torch

    try:
        import faiss  # type: ignore
    except ImportError:
        faiss = None
    if faiss is not None and dev.type == "cuda" and getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        res = faiss.StandardGpuResources()

        def knn(f, k):
            index = faiss.GpuIndexFlatL2(res, f.shape[1])
            index.add(f)
            return index.search(f, k)[1]

        return knn, f"faiss-gpu {faiss.__version__} GpuIndexFlatL2"
    if faiss is not None:
        def knn(f, k):
            index = faiss.IndexFlatL2(f.shape[1])
            index.add(f)
            return index.search(f, k)[1]

        note = " (faiss has no GPU here)" if dev.type == "cuda" else ""
        return knn, f"faiss-cpu {faiss.__version__} IndexFlatL2{note}"

    def knn(f, k):  # exact squared L2, blocks of rows: mm + topk on the device
        x = torch.from_numpy(f).to(dev)
        sq = (x * x).sum(1)
        parts = [torch.topk(sq[s:s + 4096, None] + sq[None, :] - 2.0 * (x[s:s + 4096] @ x.t()), k, dim=1,
                            largest=False).indices for s in range(0, x.shape[0], 4096)]
        return np.ascontiguousarray(torch.cat(parts).cpu().numpy())

    return knn, f"torch mm + topk on {dev.type} (faiss is not installed)"


def step_time_jaccard(out, ctx) -> None:
    """k-reciprocal Jaccard distance (docs/benchmarks.md#jaccard): ours against kNN + the reference row loops."""
    import torch

    from dmdl.ops import jaccard_distance
    from dmdl.testing import clustered_features

    dev, s = _device(ctx), ctx["sizes"]
    n, d = s["jaccard_n"], s["jaccard_d"]
    x = clustered_features(n, d, 0, noise=0.8, cluster_size=20, device=dev, chunk_rows=4096)
    out.update(n=n, d=d, k1=K1, k2=K2, device=str(dev))
    out["ours"] = dict(time_ms(lambda: jaccard_distance(x, K1, K2), dev, 2, s["repeat"] // 2 + 1),
                       what="jaccard_distance(output='sparse', precision='fp32')")
    if dev.type == "cuda":
        for prec in ("tf32", "bf16"):
            out[f"ours_{prec}"] = dict(time_ms(lambda p=prec: jaccard_distance(x, K1, K2, precision=p), dev, 2,
                                               s["repeat"] // 2 + 1), what=f"jaccard_distance(precision='{prec}')")
    bj = load_bench("bench_jaccard", ctx["root"])
    knn, knn_what = _baseline_knn(dev)
    knn_ms = {}

    def timed_knn(f, k):
        t = time.perf_counter()
        rank = knn(f, k)
        knn_ms["ms"] = (time.perf_counter() - t) * 1e3
        return rank

    bj.reference_knn = timed_knn  # reference_jaccard looks its kNN up in its module at call time
    x_host = x.cpu()
    timing, ref = _host_time_ms(lambda: bj.reference_jaccard(x_host, K1, K2), dev)
    out["baseline"] = dict(timing, knn_ms=knn_ms.get("ms"), loops_ms=timing["median_ms"] - knn_ms.get("ms", 0.0),
                           what=f"{knn_what} + the reference row loops (NumPy, dense N x N; bench_jaccard.py)")
    out["speedup"] = _speedup(out["baseline"], out["ours"])
    ours_dense = jaccard_distance(x, K1, K2, output="dense")
    close = (torch.from_numpy(ref).to(dev) - ours_dense).abs() < 1e-4
    out["share_within_1e-4_of_reference"] = close.float().mean().item()
    if out["share_within_1e-4_of_reference"] < 0.99:  # bench_jaccard.py's criterion (faiss near-ties)
        raise RuntimeError(f"only {out['share_within_1e-4_of_reference']:.4f} of the distances agree with "
                           "the reference within 1e-4")


# =============================================================================== training
def _toy_dataset(ctx) -> Path:
    """The toy RegDB of this check (``dmdl make-toy-dataset --layout regdb``), made once."""
    root = ctx["workdir"] / "RegDB-toy"
    if not (root / ".dmdl_toy.json").is_file():
        cmd = [sys.executable, "-m", "dmdl.cli", "make-toy-dataset", "--layout", "regdb", str(root)]
        if ctx["mode"] == "dry-run":
            cmd[-1:-1] = ["--num-ids", "12"]
        _run(cmd, ctx, what="dmdl make-toy-dataset")
    return root


def _train_args(ctx, data_root: Path, run_dir: Path) -> tuple[list[str], str]:
    common = ["--config", "regdb", "--data-root", str(data_root), "--output-dir", str(run_dir),
              "--pretrained", "none", "--amp", "true", "--stage1-epochs", "1", "--stage2-epochs", "1",
              "--eval-untrained", "false", "--seed", "1"]
    if ctx["mode"] == "gpu":
        workers = _loader_workers()
        return common + ["--device", "cuda", "--iters", "10", "--workers", str(workers)], \
            f"resnet50 (AGW, non-local), 288 x 144, batch 128, 10 iterations per epoch, {workers} loader workers"
    # not mobilenet_v2: without pretrained weights its features are all equal (DBSCAN: one cluster)
    return common + ["--device", "cpu", "--arch", "resnet18", "--non-local", "false", "--height", "64",
                     "--width", "32", "--iters", "2", "--batch-size", "16", "--num-instances", "4", "--k1", "6",
                     "--k2", "2", "--eps", "0.5", "--workers", "0"], \
        "resnet18 (AGW, no non-local; dry run), 64 x 32, batch 16, 2 iterations per epoch"


def _loader_workers() -> int:
    """DataLoader workers: up to 8, none when /dev/shm is small (containers often give 64 MB, and
    worker batches travel through it: a bus error)."""
    try:
        shm = shutil.disk_usage("/dev/shm").total
    except OSError:
        shm = 0
    return min(8, os.cpu_count() or 1) if shm >= 2 * 2**30 else 0


def _launcher(kind: str, ctx) -> tuple[list[str], str]:
    if kind == "plain":
        return [sys.executable, "-m", "dmdl.cli"], "python -m dmdl.cli"
    torchrun = Path(sys.executable).parent / "torchrun"  # the one of this interpreter, not any on PATH
    base = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    what = "torchrun" if torchrun.is_file() else "python -m torch.distributed.run"
    return base + ["--standalone", "--nproc-per-node", "1", "-m", "dmdl.cli"], what + " --nproc-per-node 1"


def _read_run(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    with open(run_dir / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = ("stage", "epoch", "clusters_visible", "clusters_infrared", "loss", "seconds_features",
            "seconds_clustering", "seconds_training", "seconds")
    config = json.loads((run_dir / "config.json").read_text())
    dist = {k: v for k, v in config.items() if re.search(r"nproc|world|distributed|ddp|rank", k, re.I)}
    used = {k: config.get(k) for k in ("arch", "pretrained", "non_local", "device", "amp", "height", "width", "workers",
                                       "batch_size", "num_instances", "iters", "stage1_epochs", "stage2_epochs",
                                       "ghost_bn_groups")}
    return {"metrics": {"trained": results["results"].get("trained")},
            "train_seconds": results["results"].get("train_seconds"), "config": used,
            "epochs": [{k: r.get(k) for k in keep} for r in rows], "distributed_config": dist}


def _train(out, ctx, kind: str) -> None:
    data_root = _toy_dataset(ctx)
    run_dir = ctx["workdir"] / f"run_{kind}"
    args, arch = _train_args(ctx, data_root, run_dir)
    help_text = subprocess.run([sys.executable, "-m", "dmdl.cli", "train", "--help"], cwd=ctx["root"],
                               capture_output=True, text=True).stdout
    nproc_flag = kind == "torchrun" and "--nproc" in help_text
    if nproc_flag:  # the distributed training's own flag: `dmdl train --nproc 1` starts torchrun itself
        launcher, launcher_what = _launcher("plain", ctx)
        launcher_what += " --nproc 1 (torchrun --standalone --nproc-per-node 1)"
        args += ["--nproc", "1"]
    else:
        launcher, launcher_what = _launcher(kind, ctx)
    out.update(arch=arch, launcher=launcher_what, nproc_flag=nproc_flag, run_dir=str(run_dir))
    cmd = launcher + ["train", *args]
    out["command"] = " ".join(cmd)
    t = time.perf_counter()
    _run(cmd, ctx, what=f"dmdl train ({launcher_what})")
    out["seconds"] = round(time.perf_counter() - t, 1)
    out.update(_read_run(run_dir))
    plain = ctx["workdir"] / "run_plain" / "results.json"
    if kind == "torchrun" and plain.is_file():  # one process under torchrun: the plain run's numbers?
        same = json.loads(plain.read_text())["results"].get("trained") == out["metrics"]["trained"]
        out["same_metrics_as_plain"] = same


def step_train_plain(out, ctx) -> None:
    _train(out, ctx, "plain")


def step_train_torchrun(out, ctx) -> None:
    _train(out, ctx, "torchrun")


STEP_FUNCTIONS = {
    "environment": step_environment, "build": step_build, "doctor": step_doctor, "cuda_tests": step_cuda_tests,
    "time_memory": step_time_memory, "time_propagation": step_time_propagation,
    "time_label_transfer": step_time_label_transfer, "train_plain": step_train_plain,
    "train_torchrun": step_train_torchrun, "time_jaccard": step_time_jaccard,
}
