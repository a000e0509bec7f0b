"""dmdl.ops.memory_loss / momentum_update_ (C++ CPU op, Triton kernels, PyTorch references)
against independent re-derivations: the sequential update written plainly in NumPy (float64),
F.cross_entropy on explicit logits with autograd, and hand-computed cases."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmdl.ops import (ClusterMemory, _library, memory_loss, memory_loss_reference, momentum_update_,
                      momentum_update_reference)

pytestmark = pytest.mark.skipif(not _library.is_available(), reason="dmdl._C is not built")

T = 0.05


# ----------------------------------------------------------------------------- independent refs
def np_normalize(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def np_sequential_update(mem, x, labels, mu, row_ids=None, hard=False):
    """The reference loop, written plainly: per sample in batch order (or, hard, one update
    per row with its least similar sample, first on ties)."""
    mem = np.array(mem, dtype=np.float64)
    xh = np_normalize(x)
    b = len(labels)
    mu = np.broadcast_to(np.asarray(mu, dtype=np.float64), (b,))
    if row_ids is None:
        rows = [int(y) for y in labels]
    else:
        where = {int(v): r for r, v in enumerate(row_ids)}
        rows = [where.get(int(y), -1) for y in labels]
    if hard:
        chosen = []
        for r in sorted({r for r in rows if r >= 0}):
            members = [i for i in range(b) if rows[i] == r]
            sims = [float(xh[i] @ mem[r]) for i in members]
            chosen.append(members[int(np.argmin(sims))])
        order = chosen
    else:
        order = range(b)
    for i in order:
        r = rows[i]
        if r < 0 or mu[i] >= 1:
            continue
        mem[r] = np_normalize(mu[i] * mem[r] + (1 - mu[i]) * xh[i])
    return mem


def ce_reference(x, mem, targets, temperature=T):
    """Loss and d loss / d x by autograd through F.cross_entropy on explicit logits, in float64."""
    x64 = x.detach().double().requires_grad_(True)
    tg = targets.double() if targets.is_floating_point() else targets
    logits = F.normalize(x64, dim=1) @ mem.detach().double().t() / temperature
    loss = F.cross_entropy(logits, tg)
    loss.backward()
    return loss.item(), x64.grad


def pk_labels(num_ids, instances, num_rows, seed):
    """Labels like a PK sampler: num_ids distinct ids x instances, shuffled (duplicates in batch)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(num_rows, generator=g)[:num_ids]
    lab = ids.repeat_interleave(instances)
    return lab[torch.randperm(len(lab), generator=g)]


def make(b, k, d, seed=0, dtype=torch.float32, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    mem = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1).to(dtype)
    soft = torch.softmax(torch.randn(b, k, generator=g, dtype=torch.float64) * 2, dim=1).to(dtype)
    return x, mem, soft


# ------------------------------------------------------------------------------------ loss: CPU
@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("b,k,d", [(256, 1000, 2048), (37, 13, 70), (1, 1, 3)])
def test_loss_and_grad_match_cross_entropy(kind, b, k, d):
    x, mem, soft = make(b, k, d, seed=b + k)
    targets = pk_labels(min(16, k), -(-b // min(16, k)), k, 1)[:b] if kind == "hard" else soft
    want_loss, want_grad = ce_reference(x, mem, targets)
    xr = x.clone().requires_grad_(True)
    loss = memory_loss(xr, mem, targets, T)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert abs(loss.item() - want_loss) <= 1e-5 * max(1.0, abs(want_loss))
    np.testing.assert_allclose(xr.grad.double().numpy(), want_grad.numpy(), atol=1e-6, rtol=1e-4)
    # and against the fp32 PyTorch reference (autograd)
    xq = x.clone().requires_grad_(True)
    ref = memory_loss_reference(xq, mem, targets, T)
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-5
    assert (xr.grad - xq.grad).abs().max().item() <= 1e-5


def test_loss_hand_computed():
    # x = [3, 4] -> x_hat = [0.6, 0.8]; M = I; T = 0.5: z = [1.2, 1.6]; label 0
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    mem = torch.eye(2, dtype=torch.float64)
    loss = memory_loss(x, mem, torch.tensor([0]), 0.5)
    want = math.log(math.exp(1.2) + math.exp(1.6)) - 1.2
    assert loss.item() == pytest.approx(want, abs=1e-12)
    loss.backward()
    p = np.exp([1.2, 1.6]) / np.exp([1.2, 1.6]).sum()
    dz = p - np.array([1.0, 0.0])
    dxhat = dz @ np.eye(2) / 0.5
    xh = np.array([0.6, 0.8])
    dx = (dxhat - xh * (xh @ dxhat)) / 5.0
    np.testing.assert_allclose(x.grad.numpy()[0], dx, atol=1e-12)


def test_soft_targets_are_not_renormalised_and_hard_equals_one_hot():
    x, mem, soft = make(9, 6, 11, seed=3, dtype=torch.float64)
    t = soft * 1.7  # rows sum to 1.7: used as given, like F.cross_entropy
    want_loss, want_grad = ce_reference(x, mem, t)
    xr = x.clone().requires_grad_(True)
    loss = memory_loss(xr, mem, t, T)
    loss.backward()
    assert loss.item() == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(xr.grad.numpy(), want_grad.numpy(), atol=1e-12)
    y = torch.tensor([0, 5, 2, 2, 1, 0, 3, 4, 5])
    one_hot = F.one_hot(y, 6).double()
    assert memory_loss(x, mem, y, T).item() == pytest.approx(memory_loss(x, mem, one_hot, T).item(), rel=1e-12)


def test_gradient_flows_to_features_only_and_uses_memory_at_call_time():
    x, mem, _ = make(8, 5, 16, seed=4)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    mem = mem.clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    loss = memory_loss(xr, mem, y, T)
    want_loss, want_grad = ce_reference(x, mem, y)
    with torch.no_grad():  # an in-place update between the loss and backward() ...
        momentum_update_(mem, x, y, 0.2)
    loss.backward()  # ... does not change the gradient: it was computed with the old memory
    assert mem.grad is None
    np.testing.assert_allclose(xr.grad.double().numpy(), want_grad.numpy(), atol=1e-6, rtol=1e-4)


def test_backward_with_retain_graph_and_summed_losses():
    x, mem, _ = make(6, 5, 8, seed=27)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    _, want = ce_reference(x, mem, y)
    xr = x.clone().requires_grad_(True)
    loss = memory_loss(xr, mem, y, T)
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)  # the saved gradient is not consumed by the first call
    loss.backward()
    np.testing.assert_allclose(xr.grad.double().numpy(), 3 * want.numpy(), atol=1e-6, rtol=1e-4)
    xr.grad = None
    other = memory_loss(xr, mem, y.flip(0), T)
    (memory_loss(xr, mem, y, T) + other).backward()
    _, want_other = ce_reference(x, mem, y.flip(0))
    np.testing.assert_allclose(xr.grad.double().numpy(), (want + want_other).numpy(), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_gradcheck_float64(kind):
    x, mem, soft = make(5, 4, 6, seed=5, dtype=torch.float64, scale=1.0)
    targets = torch.tensor([0, 3, 3, 1, 2]) if kind == "hard" else soft
    xr = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: memory_loss(a, mem, targets, 0.5), (xr,))
    # the loss scaled by an upstream gradient (grad_output != 1)
    assert torch.autograd.gradcheck(lambda a: 3.0 * memory_loss(a, mem, targets, 0.5), (xr,))


def test_opcheck_registered_ops():
    x, mem, soft = make(6, 5, 8, seed=6, dtype=torch.float64)
    y = torch.tensor([0, 4, 4, 1, 2, 0])
    x.requires_grad_(True)
    for args in [(x, mem, y, 0.05), (x, mem, soft, 0.1), (x.detach().float(), mem.float(), y, 0.05)]:
        torch.library.opcheck(torch.ops.dmdl.memory_loss_forward.default, args)
    xf, memf = x.detach().float(), mem.float()
    mu64 = torch.tensor(0.2, dtype=torch.float64)
    for args in [(memf.clone(), xf, y, mu64, None, False),
                 (memf.clone(), xf, y * 2, torch.rand(6, dtype=torch.float64), torch.arange(5) * 2, False),
                 (memf.clone(), xf, y, torch.rand(6), None, True)]:
        torch.library.opcheck(torch.ops.dmdl.momentum_update_.default, args)


# ---------------------------------------------------------------------------------- update: CPU
def test_update_realistic_pk_batch_matches_numpy():
    b, k, d = 256, 1000, 2048
    x, mem, _ = make(b, k, d, seed=7)
    y = pk_labels(16, 16, k, seed=8)
    want = np_sequential_update(mem.numpy(), x.numpy(), y.numpy(), 0.2)
    got = momentum_update_(mem.clone(), x, y, 0.2)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    assert np.abs(got.numpy() - want).max() < 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_duplicate_labels_in_any_order(seed):
    x, mem, _ = make(12, 4, 9, seed=10 + seed)
    y = torch.tensor([2, 0, 2, 2, 1, 0, 2, 3, 1, 2, 0, 2])
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(seed))
    xp, yp = x[perm], y[perm]
    want = np_sequential_update(mem.numpy(), xp.numpy(), yp.numpy(), 0.3)
    got = momentum_update_(mem.clone(), xp, yp, 0.3)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    other = np_sequential_update(mem.numpy(), x.numpy(), y.numpy(), 0.3)
    assert np.abs(other[2] - want[2]).max() > 1e-4  # the order of a shared row's samples matters


def test_hand_computed_two_updates_of_one_row():
    mem = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    momentum_update_(mem, x, torch.tensor([0, 0]), 0.2)
    r1 = np.array([0.2, 0.8]) / math.sqrt(0.68)
    r2 = 0.2 * r1 + np.array([0.8, 0.0])
    np.testing.assert_allclose(mem[0].numpy(), r2 / np.linalg.norm(r2), atol=1e-7)
    np.testing.assert_array_equal(mem[1].numpy(), [0.0, 1.0])


def test_row_ids_skip_missing_labels():
    x, mem, _ = make(10, 4, 7, seed=20)
    row_ids = torch.tensor([7, 2, 11, 5])  # row r holds label row_ids[r]
    y = torch.tensor([2, 3, 7, 2, 0, 11, 9, 7, 2, 100])  # 3, 0, 9, 100: no row -> skipped
    want = np_sequential_update(mem.numpy(), x.numpy(), y.numpy(), 0.2, row_ids=row_ids.numpy())
    got = momentum_update_(mem.clone(), x, y, 0.2, row_ids=row_ids)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    np.testing.assert_array_equal(got[3].numpy(), mem[3].numpy())  # label 5: no sample
    ref = momentum_update_reference(mem.clone(), x, y, 0.2, row_ids=row_ids)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-6)
    only_missing = momentum_update_(mem.clone(), x[:2], torch.tensor([0, 3]), 0.2, row_ids=row_ids)
    np.testing.assert_array_equal(only_missing.numpy(), mem.numpy())


def test_adaptive_per_sample_momentum():
    x, mem, _ = make(8, 3, 5, seed=21)
    y = torch.tensor([1, 1, 2, 0, 1, 2, 0, 1])
    q = torch.tensor([1.0, 0.4, 0.1, 0.2, 0.9, 0.6, 0.25, 0.05])
    mu = 0.2 / q.clamp_min(0.2)  # DMDL's eta_x: q <= 0.2 -> mu = 1 -> no update
    want = np_sequential_update(mem.numpy(), x.numpy(), y.numpy(), mu.numpy())
    got = momentum_update_(mem.clone(), x, y, mu)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    frozen = momentum_update_(mem.clone(), x, y, torch.ones(8))
    np.testing.assert_array_equal(frozen.numpy(), mem.numpy())  # mu = 1 everywhere: unchanged
    np.testing.assert_allclose(momentum_update_(mem.clone(), x, y, mu.double().to(torch.float32)).numpy(), want,
                               atol=1e-6)


def test_hard_variant():
    x, mem, _ = make(14, 5, 8, seed=22)
    y = torch.tensor([4, 1, 4, 0, 1, 4, 3, 3, 1, 4, 0, 1, 3, 4])
    mu = torch.rand(14, generator=torch.Generator().manual_seed(0))
    for m in (0.2, mu):
        m_np = m.numpy() if isinstance(m, torch.Tensor) else m
        want = np_sequential_update(mem.numpy(), x.numpy(), y.numpy(), m_np, hard=True)
        got = momentum_update_(mem.clone(), x, y, m, hard=True)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
        ref = momentum_update_reference(mem.clone(), x, y, m, hard=True)
        np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-6)
    np.testing.assert_array_equal(got[2].numpy(), mem[2].numpy())  # label 2: no sample
    # with row_ids
    row_ids = torch.tensor([10, 4, 1, 3, 8])
    want = np_sequential_update(mem.numpy(), x.numpy(), y.numpy(), 0.2, row_ids=row_ids.numpy(), hard=True)
    got = momentum_update_(mem.clone(), x, y, 0.2, row_ids=row_ids, hard=True)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_hard_variant_hand_computed_argmin_and_tie():
    mem = torch.tensor([[1.0, 0.0, 0.0]])
    x = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    # cosines to the row: 0.707, 0, 0, 1 -> samples 1 and 2 tie at 0: the first (1) is used
    got = momentum_update_(mem.clone(), x, torch.zeros(4, dtype=torch.long), 0.5, hard=True)
    np.testing.assert_allclose(got[0].numpy(), np_normalize([0.5, 0.5, 0.0]), atol=1e-7)


def test_threads_and_noncontiguous_memory_give_the_same_result():
    x, mem, _ = make(64, 20, 33, seed=23)
    y = pk_labels(8, 8, 20, seed=2)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = momentum_update_(mem.clone(), x, y, 0.2)
        torch.set_num_threads(2)
        two = momentum_update_(mem.clone(), x, y, 0.2)
    finally:
        torch.set_num_threads(prev)
    np.testing.assert_array_equal(one.numpy(), two.numpy())
    mem_t = mem.t().contiguous().t()  # same values, column-major storage
    assert not mem_t.is_contiguous()
    momentum_update_(mem_t, x, y, 0.2)
    np.testing.assert_array_equal(mem_t.numpy(), one.numpy())


def test_cluster_memory_uses_the_ops():
    x, mem, soft = make(10, 6, 12, seed=24)
    y = torch.tensor([0, 1, 1, 5, 2, 3, 4, 5, 5, 0])
    cm = ClusterMemory.from_centroids(mem, temperature=T, momentum=0.2)
    assert cm(x, y).item() == pytest.approx(ce_reference(x, mem, y)[0], abs=1e-5)
    assert cm(x, soft).item() == pytest.approx(ce_reference(x, mem, soft)[0], abs=1e-5)
    cm.update(x, y)
    want = np_sequential_update(mem.numpy(), x.numpy(), y.numpy(), 0.2)
    np.testing.assert_allclose(cm.features.numpy(), want, atol=1e-6)


# -------------------------------------------------------------------------------------- errors
def test_errors_name_the_argument():
    x, mem, soft = make(4, 3, 5, seed=25)
    y = torch.tensor([0, 1, 2, 0])
    cases = [
        (lambda: memory_loss(x.half(), mem, y), "dtype"),
        (lambda: memory_loss(x.double(), mem, y), "features must have the dtype of memory"),
        (lambda: memory_loss(x, mem.int(), y), "memory must be float32 or float64"),
        (lambda: memory_loss(x, mem.to("meta"), y), "device"),
        (lambda: memory_loss(x[0], mem, y), "features must be a 2-D"),
        (lambda: memory_loss(x[:, :4], mem, y), "D = 5"),
        (lambda: memory_loss(x, mem, y[:3]), r"targets.*\[B\] = \[4\]"),
        (lambda: memory_loss(x, mem, soft[:, :2]), r"soft targets must have shape \[B, K\] = \[4, 3\]"),
        (lambda: memory_loss(x, mem, soft.double()), "soft targets must have the dtype"),
        (lambda: memory_loss(x, mem, torch.tensor([0, 1, 3, 0])), r"targets must lie in \[0, 3\)"),
        (lambda: memory_loss(x, mem, torch.tensor([0, -1, 2, 0])), r"targets must lie in \[0, 3\)"),
        (lambda: memory_loss(x, mem, y, 0.0), "temperature"),
        (lambda: memory_loss(x[:0], mem, y[:0]), "at least one row"),
        (lambda: momentum_update_(mem.clone(), x, torch.tensor([0, 1, 3, 0]), 0.2), r"labels must lie in \[0, 3\)"),
        (lambda: momentum_update_(mem.clone(), x, y.float(), 0.2), "labels must be a 1-D integer"),
        (lambda: momentum_update_(mem.clone(), x.double(), y, 0.2), "dtype"),
        (lambda: momentum_update_(mem.clone(), x, y, torch.ones(3)), "momentum"),
        (lambda: momentum_update_(mem.clone(), x, y, float("nan")), "momentum"),
        (lambda: momentum_update_(mem.clone(), x, y, 0.2, row_ids=torch.tensor([1, 1, 2])), "row_ids must be distinct"),
        (lambda: momentum_update_(mem.clone(), x, y, 0.2, row_ids=torch.tensor([1, 2])), r"row_ids .*\[K\] = \[3\]"),
        (lambda: momentum_update_(mem.clone(), x, y, 0.2, row_ids=torch.tensor([-1, 2, 3])), "row_ids must be >= 0"),
        (lambda: momentum_update_(mem.clone(), x, y - 1, 0.2, row_ids=torch.tensor([0, 1, 2])), "labels must be >= 0"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


def test_cpp_ops_check_their_arguments():
    x, mem, _ = make(4, 3, 5, seed=26)
    mu = torch.tensor(0.2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"targets must lie in \[0, K\)"):
        torch.ops.dmdl.memory_loss_forward(x, mem, torch.tensor([0, 1, 7, 0]), 0.05)
    with pytest.raises(RuntimeError, match="features must have the dtype of memory"):
        torch.ops.dmdl.memory_loss_forward(x.double(), mem, torch.tensor([0, 1, 2, 0]), 0.05)
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, K\)"):
        torch.ops.dmdl.momentum_update_(mem.clone(), x, torch.tensor([0, 1, 3, 0]), mu, None, False)
    with pytest.raises(RuntimeError, match="row_ids must be distinct"):
        torch.ops.dmdl.momentum_update_(mem.clone(), x, torch.tensor([0, 1, 2, 0]), mu, torch.tensor([4, 4, 1]), False)
    with pytest.raises(RuntimeError, match="momentum must be a scalar tensor or have shape"):
        torch.ops.dmdl.momentum_update_(mem.clone(), x, torch.tensor([0, 1, 2, 0]), torch.ones(2), None, False)


def test_cuda_without_triton_raises(monkeypatch):
    import sys

    from dmdl.ops import memory as memory_mod

    monkeypatch.setitem(sys.modules, "dmdl.kernels.memory", None)  # import fails
    with pytest.raises(RuntimeError, match="Triton"):
        memory_mod._triton_kernels()


# ------------------------------------------------------------------- Triton, under the interpreter
@pytest.fixture(scope="module")
def triton_kernels():
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
    pytest.importorskip("triton")
    import importlib.util
    import pathlib
    import sys

    import dmdl
    import dmdl.kernels

    source = pathlib.Path(dmdl.__file__).resolve().parents[1] / "kernels"
    if pathlib.Path(dmdl.kernels.__file__).resolve().parent != source and (source / "memory.py").is_file():
        # dmdl.kernels resolves to another checkout (e.g. its editable install shadows this source
        # tree on PYTHONPATH): test this tree's kernels/memory.py, the file dmdl.kernels.memory installs.
        spec = importlib.util.spec_from_file_location("dmdl.kernels.memory", source / "memory.py")
        km = importlib.util.module_from_spec(spec)
        sys.modules["dmdl.kernels.memory"] = km
        spec.loader.exec_module(km)
        return km
    from dmdl.kernels import memory as km

    return km


def _device():
    return "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_triton_loss_and_grad(triton_kernels, kind):
    dev = _device()
    x, mem, soft = make(12, 7, 40, seed=30)
    y = torch.tensor([3, 1, 3, 3, 0, 1, 6, 5, 3, 2, 1, 6])
    targets = y if kind == "hard" else soft
    want_loss, want_grad = ce_reference(x, mem, targets)
    loss, grad = triton_kernels.memory_loss_forward(x.to(dev), mem.to(dev), targets.to(dev), T)
    assert abs(loss.item() - want_loss) <= 1e-5 * max(1.0, abs(want_loss))
    np.testing.assert_allclose(grad.cpu().double().numpy(), want_grad.numpy(), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("with_row_ids", [False, True])
def test_triton_momentum_update(triton_kernels, hard, with_row_ids):
    dev = _device()
    x, mem, _ = make(16, 8, 64, seed=31)
    y = torch.tensor([3, 1, 3, 3, 0, 1, 6, 5, 3, 2, 1, 6, 9, 3, 12, 1])
    row_ids = torch.tensor([10, 3, 1, 0, 7, 2, 6, 12]) if with_row_ids else None
    if not with_row_ids:
        y = y % 8
    mu = torch.rand(16, generator=torch.Generator().manual_seed(1)) * 0.6
    mu[2] = 1.0  # no update from sample 2
    want = np_sequential_update(mem.numpy(), x.numpy(), y.numpy(), mu.numpy(),
                                row_ids=None if row_ids is None else row_ids.numpy(), hard=hard)
    got = mem.clone().to(dev)
    triton_kernels.momentum_update_(got, x.to(dev), y.to(dev), mu.to(dev),
                                    None if row_ids is None else row_ids.to(dev), hard)
    np.testing.assert_allclose(got.cpu().numpy(), want, atol=1e-6)
    assert np.abs(got.cpu().numpy() - mem.numpy()).max() > 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_ops_match_cpu():
    b, k, d = (16, 8, 64) if os.environ.get("TRITON_INTERPRET") == "1" else (256, 1000, 2048)
    x, mem, soft = make(b, k, d, seed=40)
    y = pk_labels(4, b // 4, k, seed=41)
    for targets in (y, soft):
        xc = x.clone().requires_grad_(True)
        xg = x.cuda().requires_grad_(True)
        lc = memory_loss(xc, mem, targets)
        lg = memory_loss(xg, mem.cuda(), targets.cuda())
        lc.backward()
        lg.backward()
        assert abs(lc.item() - lg.item()) <= 1e-5
        assert (xc.grad - xg.grad.cpu()).abs().max().item() <= 1e-5
    for hard in (False, True):
        a = momentum_update_(mem.clone(), x, y, 0.2, hard=hard)
        b = momentum_update_(mem.cuda(), x.cuda(), y.cuda(), 0.2, hard=hard)
        assert (a - b.cpu()).abs().max().item() <= 1e-5


def test_cross_modal_memory_soft_loss_equals_soft_cross_entropy_of_logits():
    from dmdl.losses import soft_cross_entropy
    from dmdl.memories import CrossModalMemory

    g = torch.Generator().manual_seed(50)
    feats = {"visible": torch.randn(12, 16, generator=g), "infrared": torch.randn(10, 16, generator=g)}
    labels = {"visible": np.array([0, 2, 2, 4, 0, 4, 2, 0, -1, 4, 2, 0]),
              "infrared": np.array([1, 3, 0, 0, 1, 3, 2, 4, 4, -1])}
    cm = CrossModalMemory.build(feats, labels, temperature=T, momentum=0.2, shared=True)
    np.testing.assert_array_equal(cm.row_ids("visible").numpy(), [0, 2, 4])
    x = torch.randn(6, 16, generator=g)
    t = torch.softmax(torch.randn(6, 3, generator=g), dim=1)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    got = cm.soft_loss("visible", xa, t)
    want = soft_cross_entropy(cm.logits("visible", xb), t)
    got.backward()
    want.backward()
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    assert (xa.grad - xb.grad).abs().max().item() <= 1e-6
    # update through row_ids: ids 1 and 3 have no visible row and are skipped
    before = cm.memories["visible"].features.clone()
    ids = torch.tensor([4, 1, 0, 4, 3, 2])
    cm.update("visible", x, ids)
    want_mem = np_sequential_update(before.numpy(), x.numpy(), ids.numpy(), 0.2, row_ids=np.array([0, 2, 4]))
    np.testing.assert_allclose(cm.memories["visible"].features.numpy(), want_mem, atol=1e-6)
