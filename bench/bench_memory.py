"""Benchmark: one cluster-memory step (forward + backward + momentum update) on the CPU.

Same process, same inputs, per (B, K, D, threads) group (docs/benchmarks.md#memory-step, #targets):

* ``loop``       — what the reference repositories run (Cluster-Contrast ``cm.py``, re-implemented
  here): ``F.normalize``, an ``autograd.Function`` whose forward is ``x @ M.T`` and whose backward
  returns ``grad @ M`` and then updates the memory with a Python loop over the batch
  (``for x, y in zip(inputs, targets)``: two row writes per sample), ``F.cross_entropy`` at T = 0.05.
* ``vectorised`` — plain PyTorch without the loop: ``F.normalize``, ``mm``, ``F.cross_entropy``,
  ``backward()``, then an index-based update in rounds: round r updates, with one vectorised
  ``index_copy_``, every label's r-th sample in batch order. This is exactly the sequential
  update (each label's samples are applied one after the other, distinct labels are independent)
  for any labels; it needs max-multiplicity rounds (16 for a 16 ids x 16 instances batch). A single
  ``index_add_``-style round would be exact only when the labels of a batch are unique.
* ``compiled``   — ``torch.compile`` of the vectorised loss (forward + backward), then the same
  update; skipped, with the reason, when compilation fails on the machine.
* ``ours``       — ``dmdl.ops.memory_loss`` + ``backward()`` + ``dmdl.ops.momentum_update_``
  (the C++ op: GEMMs in ATen, fused normalisation + softmax-CE + gradient pass, parallel update).
* ``gemms``      — the limit: the two bare GEMMs of the step, ``x @ M.T`` and ``G @ M``.

Labels are drawn like a PK sampler (16 ids x 16 instances for B = 256), momentum 0.2.

    python -m pytest bench/bench_memory.py                       # 1 thread and all cores
    python -m pytest bench/bench_memory.py --benchmark-disable   # CI: each body once

No time is asserted; ``ours`` is checked to agree with ``loop`` (loss, gradient, memory).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from dmdl.ops import memory_loss, momentum_update_

T = 0.05
MOMENTUM = 0.2
B = 256
SHAPES = [(B, 500, 2048), (B, 1000, 2048), (B, 500, 1280), (B, 1000, 1280)]
VARIANTS = ["loop", "vectorised", "compiled", "ours", "gemms"]
ROUNDS = 15


# ------------------------------------------------------------------------------ the reference loop
class _CM(torch.autograd.Function):
    """Cluster-Contrast's ``CM`` (clustercontrast/models/cm.py), as DMDL/PGM/ADCA use it."""

    @staticmethod
    def forward(ctx, inputs, targets, features, momentum):
        ctx.features = features
        ctx.momentum = momentum
        ctx.save_for_backward(inputs, targets)
        return inputs.mm(ctx.features.t())

    @staticmethod
    def backward(ctx, grad_outputs):
        inputs, targets = ctx.saved_tensors
        grad_inputs = None
        if ctx.needs_input_grad[0]:
            grad_inputs = grad_outputs.mm(ctx.features)
        # momentum update
        for x, y in zip(inputs, targets):
            ctx.features[y] = ctx.momentum * ctx.features[y] + (1.0 - ctx.momentum) * x
            ctx.features[y] /= ctx.features[y].norm()
        return grad_inputs, None, None, None


def loop_step(x: torch.Tensor, y: torch.Tensor, mem: torch.Tensor):
    xr = x.detach().requires_grad_(True)
    inputs = F.normalize(xr, dim=1)
    loss = F.cross_entropy(_CM.apply(inputs, y, mem, MOMENTUM) / T, y)
    loss.backward()
    return loss.detach(), xr.grad


# ------------------------------------------------------------------------------ vectorised PyTorch
def vectorised_loss(x: torch.Tensor, mem: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.normalize(x, dim=1) @ mem.t() / T, y)


def update_rounds(y: torch.Tensor):
    """Sample indices of round r = every label's r-th sample (batch order inside a label)."""
    sorted_y, order = torch.sort(y, stable=True)
    rank_sorted = torch.arange(len(y)) - torch.searchsorted(sorted_y, sorted_y)
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return [torch.nonzero(rank == r).flatten() for r in range(int(rank.max()) + 1)]


@torch.no_grad()
def vectorised_update(mem: torch.Tensor, x: torch.Tensor, y: torch.Tensor, rounds) -> None:
    xh = F.normalize(x, dim=1)
    for idx in rounds:  # one vectorised step per round; labels within a round are distinct
        rows = y[idx]
        new = MOMENTUM * mem.index_select(0, rows) + (1.0 - MOMENTUM) * xh.index_select(0, idx)
        mem.index_copy_(0, rows, F.normalize(new, dim=1))


def vectorised_step(x, y, mem, rounds, loss_fn=vectorised_loss):
    xr = x.detach().requires_grad_(True)
    loss = loss_fn(xr, mem, y)
    loss.backward()
    vectorised_update(mem, x, y, rounds)
    return loss.detach(), xr.grad


# ------------------------------------------------------------------------------------------- ours
def ours_step(x, y, mem):
    xr = x.detach().requires_grad_(True)
    loss = memory_loss(xr, mem, y, T)
    loss.backward()
    momentum_update_(mem, x, y, MOMENTUM)
    return loss.detach(), xr.grad


def gemms(x, mem, g):
    return torch.mm(x, mem.t()), torch.mm(g, mem)


# ---------------------------------------------------------------------------------------- inputs
def make_inputs(b: int, k: int, d: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    mem = F.normalize(torch.randn(k, d, generator=gen), dim=1)
    ids = torch.randperm(k, generator=gen)[:16]
    y = ids.repeat_interleave(b // 16)  # PK batch: 16 ids x (B / 16) instances, grouped like the sampler
    centres = mem[y]
    x = centres * 8.0 + torch.randn(b, d, generator=gen)  # BN-neck-like: near its cluster, not unit norm
    return x, y, mem


_COMPILED: dict = {}


def compiled_loss():
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(vectorised_loss, dynamic=False)
    return _COMPILED["fn"]


@pytest.fixture(params=["threads1", "threadsN"])
def threads(request):
    """1 thread, and all cores: on a shared machine OpenMP regions can stall behind other
    processes, so the single-thread number is the steadier one."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1 if request.param == "threads1" else (os.cpu_count() or 1))
    yield torch.get_num_threads()
    torch.set_num_threads(prev)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-K{s[1]}-D{s[2]}")
def test_memory_step(benchmark, shape, variant, threads):
    b, k, d = shape
    x, y, mem0 = make_inputs(b, k, d)
    mem = mem0.clone()
    benchmark.group = f"memory step B={b} K={k} D={d} threads={threads}"
    benchmark.extra_info.update(b=b, k=k, d=d, threads=threads, variant=variant)
    if variant == "loop":
        fn, args = loop_step, (x, y, mem)
    elif variant == "vectorised":
        fn, args = vectorised_step, (x, y, mem, update_rounds(y))
    elif variant == "compiled":
        try:
            loss_fn = compiled_loss()
            vectorised_step(x, y, mem.clone(), update_rounds(y), loss_fn)  # compile outside the timing
        except Exception as exc:  # noqa: BLE001 - any compiler failure: skip and say why
            pytest.skip(f"torch.compile failed on this machine: {type(exc).__name__}: {str(exc)[:200]}")
        fn, args = (lambda *a: vectorised_step(*a, loss_fn=loss_fn)), (x, y, mem, update_rounds(y))
    elif variant == "ours":
        fn, args = ours_step, (x, y, mem)
    else:
        g = torch.randn(b, k, generator=torch.Generator().manual_seed(1))
        fn, args = gemms, (x, mem, g)
    benchmark.pedantic(fn, args=args, rounds=ROUNDS, iterations=1, warmup_rounds=1)

    if variant in ("ours", "vectorised"):  # one step from the same memory agrees with the loop
        m_ref, m_got = mem0.clone(), mem0.clone()
        l_ref, g_ref = loop_step(x, y, m_ref)
        step = ours_step if variant == "ours" else (lambda a, b_, c: vectorised_step(a, b_, c, update_rounds(b_)))
        l_got, g_got = step(x, y, m_got)
        assert abs(l_ref.item() - l_got.item()) <= 1e-5
        assert (g_ref - g_got).abs().max().item() <= 1e-5
        assert (m_ref - m_got).abs().max().item() <= 1e-5
