"""`dmdl doctor`: the fat-binary reader, the GPU match rule, the CPU flags, the command."""

import json
import struct

import pytest
import torch

from dmdl.cli import main
from dmdl.doctor import cpu_flags, fatbin_architectures, kernels_run_on


def _container(entries):
    """A fat-binary container laid out as the CUDA toolkit writes it: a 16-byte header (magic
    0xBA55ED50, version 1, header size 16, payload size), then per entry a 64-byte header (kind,
    version, header size, payload size, ..., arch at +28) and its payload."""
    body = b""
    for kind, arch, payload in entries:
        head = struct.pack("<HHIQ", kind, 0x0101, 64, len(payload)) + b"\0" * 12 + struct.pack("<I", arch)
        body += head + b"\0" * (64 - len(head)) + payload
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body


def test_fatbin_architectures_reads_every_container():
    blob = (b"\x7fELF junk" + _container([(2, 80, b"x" * 40), (2, 90, b"y" * 24)]) + b"pad"
            + _container([(1, 90, b"ptx code"), (2, 86, b"z")]))
    assert fatbin_architectures(blob) == {80: {"sass"}, 86: {"sass"}, 90: {"sass", "ptx"}}
    assert fatbin_architectures(b"no cuda here") == {}
    assert fatbin_architectures(struct.pack("<I", 0xBA55ED50) + b"\x01\x00") == {}  # truncated header


@pytest.mark.parametrize("archs, capability, expected", [
    ({80: {"sass"}, 90: {"sass"}}, (8, 0), "sm_80 SASS"),   # A100
    ({80: {"sass"}, 90: {"sass"}}, (8, 9), "sm_80 SASS"),   # L4 / RTX 4090: same major, higher minor
    ({80: {"sass"}, 90: {"sass"}}, (9, 0), "sm_90 SASS"),   # H100 / H200
    ({80: {"sass"}, 90: {"sass"}}, (7, 5), None),           # T4: older than every build
    ({80: {"sass"}, 90: {"sass"}}, (12, 0), None),          # Blackwell: no SASS of its major, no PTX
    ({80: {"sass", "ptx"}}, (12, 0), "compute_80 PTX (JIT)"),
    ({86: {"sass"}}, (8, 0), None),                         # sm_86 code does not run on 8.0
])
def test_kernels_run_on(archs, capability, expected):
    assert kernels_run_on(archs, capability) == expected


def test_cpu_flags():
    text = ("processor\t: 0\nmodel name\t: Some CPU @ 3GHz\nflags\t\t: fpu sse2 avx2 avx512f amx_tile\n\n"
            "processor\t: 1\nmodel name\t: Some CPU @ 3GHz\nflags\t\t: fpu\n")
    name, flags = cpu_flags(text)
    assert name == "Some CPU @ 3GHz" and {"avx2", "avx512f", "amx_tile"} <= flags and "amx_bf16" not in flags


def test_doctor_command(capsys):
    assert main(["doctor"]) == 0  # nothing dmdl needs is broken in the test environment
    out = capsys.readouterr().out
    assert torch.__version__ in out and torch.backends.cpu.get_cpu_capability() in out
    assert f"torch uses {torch.get_num_threads()} of" in out and "dmdl._C" in out and "faiss" in out
    assert main(["doctor", "--json"]) == 0
    checks = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in checks]
    assert {"torch", "dmdl._C", "CPU", "threads", "Triton", "faiss"} <= set(names)
    assert all(c["status"] in ("ok", "warn", "FAIL", "info") for c in checks)
    assert all(c["advice"] for c in checks if c["status"] in ("warn", "FAIL"))
