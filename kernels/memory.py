"""Triton kernels of the cluster-memory step (CUDA tensors), installed as ``dmdl.kernels.memory``.

Semantics are those of :func:`dmdl.ops.memory_loss` and :func:`dmdl.ops.momentum_update_`
(Cluster-Contrast, ACCV 2022; docs/dmdl.md#A4.1, #A5.5; docs/benchmarks.md#memory-step); the C++ CPU
kernels (csrc/cpu/memory_cpu.cpp, csrc/include/dmdl/memory.h) compute the same thing.

* :func:`memory_loss_forward` — loss and d loss / d features: the logits GEMM and the
  feature-gradient GEMM run in torch (cuBLAS, fp32); one Triton program per row does the
  feature norm, the softmax cross-entropy (hard labels or soft target rows), the logit
  gradient (written over the logits) and the normalisation term of the feature gradient.
* :func:`momentum_update_` — the sequential momentum update, in place, without a host sync:
  samples are sorted by memory row (stable, so batch order is kept inside a row); one program
  per sorted position, and the first position of each row walks that row's samples in batch
  order with the row held in registers (hard variant: picks the least similar sample first).

These functions take already validated arguments (the public wrappers in
:mod:`dmdl.ops.memory` check them) and float32 tensors. They run on CUDA tensors, and on CPU
tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set before this module is
imported), which is how the test suite checks them on machines without a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl
import torch
from torch import Tensor

__all__ = ["memory_loss_forward", "momentum_update_", "MAX_FEATURE_DIM"]

#: Largest D of the update kernel (one memory row is held in registers).
MAX_FEATURE_DIM = 16384
_NORM_EPS = 1e-12  # F.normalize's default


@triton.jit
def _ce_grad_kernel(S, X, T, Y, LOSS, XB, K, D, stride_s, stride_x, stride_t, stride_xb, inv_temp, inv_b, eps,
                    SOFT: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row i: S[i] (raw dots x_i . m_k) -> logit gradient; LOSS[i] = loss_i / B; XB[i] = b_i x_i."""
    i = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    s_row = S + i * stride_s
    x_row = X + i * stride_x

    sq = tl.zeros([BLOCK_D], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        xv = tl.load(x_row + d0 + offs_d, mask=d0 + offs_d < D, other=0.0).to(tl.float32)
        sq += xv * xv
    xn = tl.sqrt(tl.sum(sq, axis=0))
    inv = 1.0 / tl.maximum(xn, eps)
    c = inv * inv_temp  # z_k = s_k * c

    # pass 1: max of the logits
    mvec = tl.full([BLOCK_K], float("-inf"), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = k0 + offs_k < K
        sv = tl.load(s_row + k0 + offs_k, mask=kmask, other=0.0)
        mvec = tl.where(kmask, tl.maximum(mvec, sv * c), mvec)
    mx = tl.max(mvec, axis=0)

    # pass 2: sum of exp, sum of exp * s, and (soft) sums of t and t * s
    sum_v = tl.zeros([BLOCK_K], dtype=tl.float32)
    es_v = tl.zeros([BLOCK_K], dtype=tl.float32)
    t_v = tl.zeros([BLOCK_K], dtype=tl.float32)
    ts_v = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = k0 + offs_k < K
        sv = tl.load(s_row + k0 + offs_k, mask=kmask, other=0.0)
        e = tl.where(kmask, tl.exp(sv * c - mx), 0.0)
        sum_v += e
        es_v += e * sv
        if SOFT:
            tv = tl.load(T + i * stride_t + k0 + offs_k, mask=kmask, other=0.0)
            t_v += tv
            ts_v += tv * sv
    total = tl.sum(sum_v, axis=0)
    es = tl.sum(es_v, axis=0)
    if SOFT:
        tsum = tl.sum(t_v, axis=0)
        ts = tl.sum(ts_v, axis=0)
        label = -1
    else:
        label = tl.load(Y + i)
        tsum = 1.0
        ts = tl.load(s_row + label)
    lse = mx + tl.log(total)
    loss = tsum * lse - c * ts
    gscale = c * inv_b
    pscale = tsum * gscale / total

    # pass 3: logit gradient g_k = (p_k tsum - t_k) c / B, written over S
    for k0 in range(0, K, BLOCK_K):
        kmask = k0 + offs_k < K
        sv = tl.load(s_row + k0 + offs_k, mask=kmask, other=0.0)
        g = tl.exp(sv * c - mx) * pscale
        if SOFT:
            tv = tl.load(T + i * stride_t + k0 + offs_k, mask=kmask, other=0.0)
            g = g - tv * gscale
        else:
            g = tl.where(k0 + offs_k == label, g - gscale, g)
        tl.store(s_row + k0 + offs_k, g, mask=kmask)

    r = pscale * es - gscale * ts
    coef = tl.where(xn > eps, -inv * inv * r, 0.0)
    tl.store(LOSS + i, loss * inv_b)
    for d0 in range(0, D, BLOCK_D):
        dmask = d0 + offs_d < D
        xv = tl.load(x_row + d0 + offs_d, mask=dmask, other=0.0)
        tl.store(XB + i * stride_xb + d0 + offs_d, coef * xv, mask=dmask)


@triton.jit
def _momentum_update_kernel(M, X, ORDER, SROWS, GEND, MU, D, stride_m, stride_x, eps,
                            HARD: tl.constexpr, BLOCK_D: tl.constexpr):
    """Position p of the row-sorted samples; the first position of a row updates that row."""
    p = tl.program_id(0)
    row = tl.load(SROWS + p)
    prev = tl.load(SROWS + p - 1, mask=p > 0, other=-1)
    head = (row >= 0) & ((p == 0) | (prev != row))
    if head:
        end = tl.load(GEND + p).to(tl.int32)
        offs = tl.arange(0, BLOCK_D)
        dmask = offs < D
        m_ptr = M + row.to(tl.int64) * stride_m + offs
        m = tl.load(m_ptr, mask=dmask, other=0.0)
        if HARD:
            # the sample of lowest cosine similarity to the current row (first on ties)
            best_j = tl.load(ORDER + p)
            xb = tl.load(X + best_j * stride_x + offs, mask=dmask, other=0.0)
            best_sim = tl.sum((xb / tl.maximum(tl.sqrt(tl.sum(xb * xb, axis=0)), eps)) * m, axis=0)
            for q in range(p + 1, end):
                j = tl.load(ORDER + q)
                xv = tl.load(X + j * stride_x + offs, mask=dmask, other=0.0)
                sim = tl.sum((xv / tl.maximum(tl.sqrt(tl.sum(xv * xv, axis=0)), eps)) * m, axis=0)
                better = sim < best_sim
                best_sim = tl.where(better, sim, best_sim)
                best_j = tl.where(better, j, best_j)
            xv = tl.load(X + best_j * stride_x + offs, mask=dmask, other=0.0)
            mu = tl.load(MU + best_j)
            xh = xv / tl.maximum(tl.sqrt(tl.sum(xv * xv, axis=0)), eps)
            v = mu * m + (1.0 - mu) * xh
            nv = tl.maximum(tl.sqrt(tl.sum(v * v, axis=0)), eps)
            m = tl.where(mu < 1.0, v / nv, m)
        else:
            for q in range(p, end):
                j = tl.load(ORDER + q)
                xv = tl.load(X + j * stride_x + offs, mask=dmask, other=0.0)
                mu = tl.load(MU + j)
                xh = xv / tl.maximum(tl.sqrt(tl.sum(xv * xv, axis=0)), eps)
                v = mu * m + (1.0 - mu) * xh
                nv = tl.maximum(tl.sqrt(tl.sum(v * v, axis=0)), eps)
                m = tl.where(mu < 1.0, v / nv, m)
        tl.store(m_ptr, m, mask=dmask)


def memory_loss_forward(features: Tensor, memory: Tensor, targets: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Loss (0-dim) and gradient [B, D] of ``mean_i CE(normalize(x_i) M^T / T, target_i)``.

    Args:
        features: [B, D] float32.
        memory: [K, D] float32, same device.
        targets: int64 labels [B] in [0, K) or float32 soft targets [B, K], same device.
        temperature: > 0.
    """
    b, d = features.shape
    k = memory.shape[0]
    x = features.contiguous()
    m = memory.contiguous()
    s = torch.mm(x, m.t())  # [B, K], overwritten with the logit gradient
    xb = torch.empty_like(x)
    loss_rows = torch.empty(b, dtype=torch.float32, device=x.device)
    soft = targets.dim() == 2
    t = targets.contiguous() if soft else s  # placeholder pointer when hard
    y = targets.contiguous() if not soft else loss_rows  # placeholder pointer when soft
    block_k = min(1024, triton.next_power_of_2(k))
    block_d = min(1024, triton.next_power_of_2(d))
    _ce_grad_kernel[(b,)](s, x, t, y, loss_rows, xb, k, d, s.stride(0), x.stride(0), t.stride(0), xb.stride(0),
                          1.0 / float(temperature), 1.0 / b, _NORM_EPS, SOFT=soft, BLOCK_K=block_k,
                          BLOCK_D=block_d, num_warps=4)
    grad = torch.addmm(xb, s, m)
    return loss_rows.sum(), grad


def momentum_update_(memory: Tensor, features: Tensor, labels: Tensor, momentum: Tensor, row_ids: Tensor | None,
                     hard: bool) -> None:
    """In-place sequential momentum update (see :func:`dmdl.ops.momentum_update_`).

    Args:
        memory: [K, D] float32, contiguous, updated in place.
        features: [B, D] float32, same device.
        labels: [B] int64, same device (validated by the caller).
        momentum: 0-dim or [B] floating tensor, same device.
        row_ids: None (row = label) or [K] int64 distinct labels held by the rows.
        hard: one update per row with its least similar sample.
    """
    b, d = features.shape
    k = memory.shape[0]
    if b == 0:
        return
    if d > MAX_FEATURE_DIM:
        raise ValueError(f"momentum_update_ on CUDA supports D <= {MAX_FEATURE_DIM}, got D = {d}")
    labels = labels.to(torch.int64)
    if row_ids is None:
        rows = labels
    else:
        ids_sorted, perm = torch.sort(row_ids.to(torch.int64))
        pos = torch.searchsorted(ids_sorted, labels).clamp_(max=k - 1)
        rows = torch.where(ids_sorted[pos] == labels, perm[pos], torch.full_like(labels, -1))
    srows, order = torch.sort(rows, stable=True)  # -1 (skipped) first; batch order inside a row
    gend = torch.searchsorted(srows, srows, right=True)
    mu = momentum.to(device=features.device, dtype=torch.float32).expand(b).contiguous()
    x = features.contiguous()
    block_d = triton.next_power_of_2(d)
    _momentum_update_kernel[(b,)](memory, x, order, srows, gend, mu, d, memory.stride(0), x.stride(0), _NORM_EPS,
                                  HARD=bool(hard), BLOCK_D=block_d, num_warps=4 if block_d <= 2048 else 8)
