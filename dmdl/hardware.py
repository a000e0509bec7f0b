"""What this machine's processor can do fast (no other dmdl import here).

:func:`native_bf16_cpu` decides the CPU's bfloat16 paths: the exact kNN's bf16 candidates
(:func:`dmdl.ops.knn.auto_precision`) and bf16 autocast in training and feature extraction
(``amp: auto``, :func:`dmdl.training.context.amp_dtype`).
"""

from __future__ import annotations

import torch


def native_bf16_cpu() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16) and oneDNN,
    which runs bfloat16 matmuls and convolutions on the CPU, is available and enabled. On AVX2-only
    or AVX-512 CPUs without BF16, bfloat16 is emulated and slower than float32."""
    get_caps = getattr(torch.cpu, "get_capabilities", None)
    caps = get_caps() if get_caps is not None else {}
    native = bool(caps.get("avx512_bf16", False) or caps.get("amx_bf16", False))
    return native and torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled)


__all__ = ["native_bf16_cpu"]
