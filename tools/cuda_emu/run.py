"""Runs the CUDA kernels of csrc/cuda/*.cu on the CPU, under a small fiber-based emulator of the
CUDA execution model (emu_cuda.h), and compares them with the CPU kernels. For machines without a
GPU: it checks the kernels' logic (indexing, warp-uniform control flow, shuffles, ballots, block
barriers, ordering of the output), not the memory model or the speed.

How: the .cu sources are copied with a few textual rewrites (`k<<<cfg>>>(args)` becomes
`emu::launch(emu::cfg(cfg), k, args)`, CUDA includes become emu_cuda.h, the ops register as
`dmdl_emu::*` CPU kernels), compiled with torch.utils.cpp_extension.load, and each block's threads
run as fibers on one OS thread, switching at every warp intrinsic and barrier (deadlocks abort).

    python tools/cuda_emu/run.py              # quick sweep (~1 min)
    python tools/cuda_emu/run.py --full       # + larger k1/k2 (~15 min)
    python tools/cuda_emu/run.py --stress     # tiny tiles / grids / scratch: every fallback path
    EMU_REVERSE=1 python tools/cuda_emu/run.py   # fibers scheduled in reverse order

Needs the extension built in place (dmdl._C, CPU kernels) and a C++20 compiler.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent

# Constants shrunk by --stress so that every multi-tile / multi-launch / fallback path runs.
STRESS = {
    "jaccard_cuda.cu": [("kSharedBitmapWords = 10240;", "kSharedBitmapWords = 2;"),
                        ("kAccFloats = int64_t{1} << 28;", "kAccFloats = 700;")],
    "knn_cuda.cu": [("kTileFloats = int64_t{1} << 27;", "kTileFloats = 5000;"),
                    ("kScanScratchBytes = int64_t{1} << 28;", "kScanScratchBytes = 1;")],
    "propagation_cuda.cu": [("kBlocksPerSM = 8;", "kBlocksPerSM = 1;")],
}


def generate(out: pathlib.Path, lib: str, stress: bool) -> list[str]:
    src = ROOT / "csrc"
    (out / "dmdl").mkdir(parents=True, exist_ok=True)
    for h in ("host_device.h", "jaccard.h", "knn.h", "knn_host.h", "jaccard_host.h", "propagation.h",
              "propagation_host.h"):
        (out / "dmdl" / h).write_text((src / "include/dmdl" / h).read_text())
    gpu = (src / "include/dmdl/gpu.cuh").read_text().replace("#include <cuda_runtime.h>", '#include "emu_cuda.h"')
    (out / "dmdl" / "gpu.cuh").write_text(gpu)
    sources = []
    for f in ("knn_cuda.cu", "jaccard_cuda.cu", "propagation_cuda.cu"):
        s = (src / "cuda" / f).read_text()
        s = re.sub(r"#include <c10/cuda/[^>]+>\n", "", s)
        s = s.replace("#include <cuda_runtime.h>\n", '#include "emu_cuda.h"\n')
        s = s.replace("extern __shared__ uint32_t bm_shared[];", "uint32_t* bm_shared = emu::dyn_smem<uint32_t>();")
        s = re.sub(r"(\w+)<<<(.*?)>>>\(", r"emu::launch(emu::cfg(\2), \1, ", s, flags=re.S)
        s = s.replace("c10::DeviceType::CUDA", "c10::DeviceType::CPU")
        s = s.replace("TORCH_LIBRARY_IMPL(dmdl, CUDA, m)", f"TORCH_LIBRARY_IMPL({lib}, CPU, m)")
        if stress:
            for old, new in STRESS[f]:
                if old not in s:
                    raise SystemExit(f"--stress: `{old}` not found in {f}; update tools/cuda_emu/run.py")
                s = s.replace(old, new)
        for bad in ("<<<", "__shared__ uint32_t", "DeviceType::CUDA"):
            if bad in s:
                raise SystemExit(f"{f}: `{bad}` left after the rewrite; update tools/cuda_emu/run.py")
        path = out / f.replace(".cu", ".cpp")
        path.write_text('#include "emu_cuda.h"\n' + s)
        sources.append(str(path))
    defs = out / "defs.cpp"
    defs.write_text("#include <torch/library.h>\n"
                    f"TORCH_LIBRARY({lib}, m) {{\n"
                    '  m.def("knn(Tensor features, int k, str precision, int margin) -> (Tensor, Tensor)");\n'
                    '  m.def("jaccard_sparse(Tensor features, Tensor rank, int k2) -> (Tensor, Tensor, Tensor)");\n'
                    '  m.def("propagate(Tensor crow, Tensor col, Tensor val, Tensor x, Tensor z, float a, float b) '
                    '-> Tensor");\n'
                    "}\n")
    return [str(defs)] + sources


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="also the slow cases (large k1 and k2)")
    ap.add_argument("--stress", action="store_true", help="tiny tiles, grids and scratch buffers")
    ap.add_argument("--build-dir", default="/tmp/dmdl_cuda_emu")
    args = ap.parse_args()

    import torch
    from torch.utils.cpp_extension import load

    sys.path.insert(0, str(ROOT))
    from dmdl import _C  # noqa: F401  (the real CPU kernels: torch.ops.dmdl.*)
    from dmdl.testing import clustered_features, identical_rows_features, near_tie_features

    lib = "dmdl_emu_stress" if args.stress else "dmdl_emu"
    out = pathlib.Path(args.build_dir) / lib
    sources = generate(out / "src", lib, args.stress)
    (out / "build").mkdir(parents=True, exist_ok=True)
    t = time.time()
    load(name=lib, sources=sources, extra_include_paths=[str(out / "src"), str(HERE)],
         extra_cflags=["-O2", "-g0", "-std=c++20"], build_directory=str(out / "build"), is_python_module=False)
    print(f"emulated kernels built ({time.time() - t:.0f} s); EMU_REVERSE={os.environ.get('EMU_REVERSE', '')!r}")
    ops = getattr(torch.ops, lib)

    failures = 0

    def check(x, name, knn_cases, jaccard_cases):
        nonlocal failures
        for k, prec, margin in knn_cases:
            want = torch.ops.dmdl.knn(x, k, "fp32", 8)[0]
            got, stats = ops.knn(x, k, prec, margin)
            ok = torch.equal(got, want)
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} knn {name} k={k} {prec} margin={margin} stats={stats.tolist()}", flush=True)
        for k1, k2 in jaccard_cases:
            rank = torch.ops.dmdl.knn(x, k1, "fp32", 8)[0]
            want = torch.ops.dmdl.jaccard_sparse(x, rank, k2)
            got = ops.jaccard_sparse(x, rank, k2)
            same = torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
            err = (got[2] - want[2]).abs().max().item() if same and want[2].numel() else 0.0
            ok = same and err <= 1e-5
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} jaccard_sparse {name} k1={k1} k2={k2}: structure equal={same}, "
                  f"max |diff| {err:.1e}, nnz {want[1].numel()}", flush=True)

    def random_csr(n_out, n_in, per_row, seed):
        """(crow int64, col int32, val float32): about per_row entries per row, every third row empty."""
        g = torch.Generator().manual_seed(seed)
        counts = torch.randint(0, 2 * per_row + 1, (n_out,), generator=g)
        counts[2::3] = 0
        crow = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
        col = torch.randint(0, max(n_in, 1), (int(crow[-1]),), generator=g, dtype=torch.int32)
        return crow, col, torch.rand(int(crow[-1]), generator=g)

    def check_propagate(name, n_out, n_in, k, per_row, seed, corrupt=None):
        """The emulated CUDA kernel against the CPU kernel (the same bits) and the float64 formula.
        corrupt = "col" / "crow": row 1 gets a column >= N_in / pointers past nnz, and must come out NaN."""
        nonlocal failures
        crow, col, val = random_csr(n_out, n_in, per_row, seed)
        g = torch.Generator().manual_seed(seed + 1)
        x, z = torch.randn(n_in, k, generator=g), torch.randn(n_out, k, generator=g)
        if corrupt is None:
            got = ops.propagate(crow, col, val, x, z, 0.8, -0.3)
            want = torch.ops.dmdl.propagate(crow, col, val, x, z, 0.8, -0.3)
            rows = torch.repeat_interleave(torch.arange(n_out), crow.diff())
            dense = torch.zeros(n_out, n_in, dtype=torch.float64).index_put_((rows, col.long()), val.double(),
                                                                              accumulate=True)
            ref = 0.8 * dense @ x.double() - 0.3 * z.double()
            scale = 0.8 * dense.abs() @ x.double().abs() + 0.3 * z.double().abs()
            ok = torch.equal(got, want) and bool(((got.double() - ref).abs() <= 1e-5 * scale).all())
            detail = f"equal to CPU={torch.equal(got, want)}, nnz {col.numel()}"
        else:
            crow = torch.arange(n_out + 1) * 3  # 3 entries per row
            col = torch.randint(0, n_in, (3 * n_out,), generator=g, dtype=torch.int32)
            val = torch.rand(3 * n_out, generator=g)
            bad = torch.zeros(n_out, dtype=torch.bool)
            if corrupt == "col":
                col[4] = n_in  # an entry of row 1
                bad[1] = True
            else:
                crow[2:] = 3 * n_out + 5  # row 1 ends past nnz, the rows after it start there
                bad[1:] = True
            got = ops.propagate(crow, col, val, x, z, 0.8, -0.3)
            ok = bool(torch.isnan(got[bad]).all()) and not bool(torch.isnan(got[~bad]).any())
            detail = f"invalid {corrupt}: NaN rows only where invalid={ok}"
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} propagate {name} N_out={n_out} N_in={n_in} K={k}: {detail}", flush=True)

    check_propagate("grid-stride", 300, 200, 37, 12, 0)
    check_propagate("K=400", 40, 500, 400, 20, 1)
    check_propagate("K=1", 130, 90, 1, 6, 2)
    check_propagate("K=64", 70, 70, 64, 9, 3)
    check_propagate("nnz=0", 30, 40, 33, 0, 4)
    check_propagate("no rows", 0, 40, 5, 3, 5)
    check_propagate("K=0", 20, 30, 0, 3, 6)
    check_propagate("bad col", 12, 10, 40, 3, 7, corrupt="col")
    check_propagate("bad crow", 12, 10, 40, 3, 8, corrupt="crow")

    check(clustered_features(200, 32, 0), "clustered 200x32",
          [(30, "fp32", 8), (30, "tf32", 8), (30, "bf16", 32), (30, "bf16", 0), (1, "fp32", 0), (5, "bf16", 2)],
          [(20, 6), (7, 1), (25, 3)])
    check(near_tie_features(230, 40, 4), "near-ties 230x40", [(30, "fp32", 0), (40, "tf32", 1)], [(20, 6), (36, 3)])
    # closely spaced distances: the bf16 certificate (rows' rounding residuals) holds for some rows only
    check(clustered_features(300, 512, 5, noise=0.8, cluster_size=20), "wide clustered 300x512",
          [(30, "bf16", 4), (30, "bf16", 40)], [])
    check(identical_rows_features(80, 8, 12), "identical-block 80x8",
          [(10, "fp32", 8), (10, "bf16", 0), (80, "fp32", 3)], [(10, 4), (10, 1), (80, 6)])
    if args.full:
        check(near_tie_features(230, 24, 4), "near-ties 230x24", [(30, "bf16", 32)], [(30, 6), (40, 40), (64, 35)])
        check(clustered_features(333, 100, 5), "clustered 333x100", [(64, "fp32", 8), (70, "bf16", 0)],
              [(64, 6), (50, 33)])
    print("all equal" if failures == 0 else f"{failures} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
