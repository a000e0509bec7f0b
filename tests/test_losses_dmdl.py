"""Tests of the DMDL-specific losses: mmd_loss (docs/dmdl.md#A7.3), cai_loss (docs/dmdl.md#A6), topk_prediction (docs/dmdl.md#A4.3),
refined_targets (docs/dmdl.md#A7.2), each against an independent NumPy float64 reference."""

import numpy as np
import pytest
import torch

from dmdl.losses import cai_loss, mmd_loss, refined_targets, soft_cross_entropy, topk_prediction
from _reference import np_bandwidth, np_cai, np_mmd, np_softmax, np_topk


# --------------------------------------------------------------------------- mmd_loss


@pytest.mark.parametrize("seed,n,d", [(0, 4, 3), (1, 6, 5), (2, 2, 7)])
def test_mmd_matches_numpy_loops(seed, n, d):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, d)) * 3 + 1
    t = rng.normal(size=(n, d)) * 2 - 0.5
    got = mmd_loss(torch.from_numpy(s), torch.from_numpy(t)).item()
    assert got == pytest.approx(np_mmd(s, t), rel=1e-10, abs=1e-12)
    got32 = mmd_loss(torch.from_numpy(s).float(), torch.from_numpy(t).float())
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(np_mmd(s, t), rel=1e-4, abs=1e-5)


def test_mmd_identical_batches_closed_form():
    # S == T: K_ST = K_SS (diagonal 5 included), so L = 2·offdiag(K_SS)/(n(n-1)) - 2·sum(K_SS)/n²,
    # with b computed on Z = [S; S]: Σ D²_Z = 4 Σ D²_S over (2n)² - 2n pairs.
    rng = np.random.default_rng(3)
    n = 5
    s = rng.normal(size=(n, 4))
    d2 = ((s[:, None, :] - s[None, :, :]) ** 2).sum(-1)
    b = 4 * d2.sum() / ((2 * n) ** 2 - 2 * n) / 4
    k = sum(np.exp(-d2 / (b * 2.0 ** q)) for q in range(5))
    offdiag = k.sum() - np.trace(k)
    expected = 2 * offdiag / (n * (n - 1)) - 2 * k.sum() / n ** 2
    assert np.trace(k) == pytest.approx(5 * n)
    got = mmd_loss(torch.from_numpy(s), torch.from_numpy(s.copy())).item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_mmd_translation_and_scale_invariant():
    rng = np.random.default_rng(4)
    s, t = (torch.from_numpy(rng.normal(size=(4, 3))) for _ in range(2))
    base = mmd_loss(s, t)
    assert mmd_loss(2.5 * s + 7, 2.5 * t + 7).item() == pytest.approx(base.item(), rel=1e-9)


def _fixed_bandwidth_wrapper(s: torch.Tensor, t: torch.Tensor, b0: float):
    """Rescale Z so that its bandwidth is b0: along this path b is constant, so the true derivative
    equals the derivative with b held fixed, and gradcheck applies to mmd_loss itself."""
    z = torch.cat([s, t])
    m = z.shape[0]
    sum_d2 = 2 * m * z.pow(2).sum() - 2 * z.sum(0).pow(2).sum()
    b = sum_d2 / (m * m - m) / 4
    scale = torch.sqrt(b0 / b)
    return mmd_loss(s * scale, t * scale)


def test_mmd_gradcheck_float64():
    rng = np.random.default_rng(5)
    s = torch.from_numpy(rng.normal(size=(3, 4))).requires_grad_()
    t = torch.from_numpy(rng.normal(size=(3, 4)) + 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, c: _fixed_bandwidth_wrapper(a, c, 1.7), (s, t), eps=1e-6, atol=1e-7)


def test_mmd_no_gradient_through_bandwidth():
    rng = np.random.default_rng(6)
    n, d = 3, 2
    s0, t0 = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.5
    s = torch.from_numpy(s0).requires_grad_()
    t = torch.from_numpy(t0).requires_grad_()
    mmd_loss(s, t).backward()
    auto = np.concatenate([s.grad.numpy(), t.grad.numpy()])

    b0 = np_bandwidth(np.concatenate([s0, t0]))
    z0 = np.concatenate([s0, t0])
    eps = 1e-6
    fd_fixed = np.zeros_like(z0)
    fd_full = np.zeros_like(z0)
    for idx in np.ndindex(*z0.shape):
        zp, zm = z0.copy(), z0.copy()
        zp[idx] += eps
        zm[idx] -= eps
        fd_fixed[idx] = (np_mmd(zp[:n], zp[n:], b0) - np_mmd(zm[:n], zm[n:], b0)) / (2 * eps)
        fd_full[idx] = (np_mmd(zp[:n], zp[n:]) - np_mmd(zm[:n], zm[n:])) / (2 * eps)
    np.testing.assert_allclose(auto, fd_fixed, rtol=1e-5, atol=1e-7)
    # the full derivative (b differentiated) is genuinely different: b's path is cut
    assert np.abs(auto - fd_full).max() > 1e-3


def test_mmd_all_points_equal_is_zero_not_nan():
    x = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    loss = mmd_loss(x, x.detach().clone())
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(x.grad).all()


def test_mmd_rejects_bad_inputs():
    a = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="same"):
        mmd_loss(a, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="n >= 2"):
        mmd_loss(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="source"):
        mmd_loss(torch.zeros(4, 3, dtype=torch.long), a)
    with pytest.raises(ValueError, match="dtype"):
        mmd_loss(a, a.double())


# --------------------------------------------------------------------------- cai_loss


def _cai_case(seed=0, b=5, d=6):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(b, d))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    mv = unit(rng.normal(size=(2, d)))  # visible covers unified ids {0, 2}
    mi = unit(rng.normal(size=(3, d)))  # infrared covers {0, 1, 2}, rows in the order 2, 0, 1
    ids_v, ids_i = np.array([0, 2]), np.array([2, 0, 1])
    targets = rng.dirichlet(np.ones(3), size=b)
    targets[0] = [0.0, 1.0, 0.0]  # mass only on an id that the visible memory lacks
    targets[1] = [0.7, 0.0, 0.3]  # zeros in the soft row
    return f, mv, mi, ids_v, ids_i, targets


def _t(x):
    return torch.from_numpy(np.asarray(x))


@pytest.mark.parametrize("prior_v,temp", [(0.65, 0.05), (0.3, 0.5), (0.0, 0.05)])
def test_cai_matches_numpy(prior_v, temp):
    f, mv, mi, ids_v, ids_i, targets = _cai_case()
    got = cai_loss(_t(f), _t(mv), _t(mi), _t(ids_v), _t(ids_i), prior_v, _t(targets), temperature=temp)
    assert got.item() == pytest.approx(np_cai(f, mv, mi, ids_v, ids_i, prior_v, targets, temp), rel=1e-10)


def test_cai_gradcheck_features_and_memories_not_differentiated():
    f, mv, mi, ids_v, ids_i, targets = _cai_case(seed=1, b=4, d=5)
    feats = _t(f).requires_grad_()
    mem_v, mem_i = _t(mv).requires_grad_(), _t(mi).requires_grad_()
    fn = lambda x: cai_loss(x, mem_v, mem_i, _t(ids_v), _t(ids_i), 0.6, _t(targets), temperature=0.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (feats,), eps=1e-6, atol=1e-7)
    fn(feats).backward()
    assert mem_v.grad is None and mem_i.grad is None


def test_cai_prior_one_full_visible_memory_is_soft_cross_entropy():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(6, 4))
    mv = rng.normal(size=(3, 4))
    mv /= np.linalg.norm(mv, axis=1, keepdims=True)
    targets = rng.dirichlet(np.ones(3), size=6)
    mi = rng.normal(size=(2, 4))
    got = cai_loss(_t(f), _t(mv), _t(mi), torch.arange(3), torch.tensor([1, 0]), 1.0, _t(targets))
    fh = torch.nn.functional.normalize(_t(f), dim=1)
    expected = soft_cross_entropy(fh @ _t(mv).t() / 0.05, _t(targets))
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)


def test_cai_zero_targets_where_p_do_is_zero_no_nan():
    # prior_v = 1 and the visible memory lacks id 1: P_do[:, 1] = 0, but the targets are 0 there
    f, mv, mi, ids_v, ids_i, _ = _cai_case(seed=3)
    targets = np.array([[0.8, 0.0, 0.2]] * len(f))
    feats = _t(f).float().requires_grad_()
    loss = cai_loss(feats, _t(mv).float(), _t(mi).float(), _t(ids_v), _t(ids_i), 1.0, _t(targets).float())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()
    assert loss.item() == pytest.approx(np_cai(f, mv, mi, ids_v, ids_i, 1.0, targets), rel=1e-4)


def test_cai_rejects_bad_inputs():
    f, mv, mi, ids_v, ids_i, targets = (_t(x) for x in _cai_case())
    ok = dict(features=f, memory_v=mv, memory_i=mi, ids_v=ids_v, ids_i=ids_i, prior_v=0.5, targets=targets)
    bad = [
        (dict(ids_v=torch.tensor([0, 3])), "ids_v"),  # out of [0, K)
        (dict(ids_i=torch.tensor([0, 0, 1])), "ids_i"),  # duplicate
        (dict(ids_v=torch.tensor([0, 1, 2])), "ids_v"),  # not one per memory row
        (dict(ids_i=torch.tensor([-1, 0, 1])), "ids_i"),
        (dict(prior_v=1.2), "prior_v"),
        (dict(prior_v=-0.1), "prior_v"),
        (dict(memory_v=mv[:, :3]), "memory_v"),
        (dict(targets=targets[:2]), "targets"),
        (dict(features=f[0]), "features"),
    ]
    for change, name in bad:
        with pytest.raises(ValueError, match=name):
            cai_loss(**{**ok, **change})


# --------------------------------------------------------------------------- topk_prediction


@pytest.mark.parametrize("k,temp", [(1, 0.05), (3, 0.05), (4, 0.3)])
def test_topk_prediction_matches_numpy(k, temp):
    rng = np.random.default_rng(7)
    f = rng.normal(size=(5, 6))
    mem = rng.normal(size=(7, 6))
    mem /= np.linalg.norm(mem, axis=1, keepdims=True)
    feats = _t(f).requires_grad_()
    got = topk_prediction(feats, _t(mem), k, temperature=temp)
    assert not got.requires_grad and got.shape == (5, 7)
    np.testing.assert_allclose(got.numpy(), np_topk(f, mem, k, temp), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got.sum(1).numpy(), 1.0, rtol=1e-12)
    assert ((got > 0).sum(1) == k).all()


def test_topk_prediction_k_larger_than_classes_is_full_softmax():
    rng = np.random.default_rng(8)
    f, mem = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
    got = topk_prediction(_t(f), _t(mem), 10)
    fh = torch.nn.functional.normalize(_t(f), dim=1)
    torch.testing.assert_close(got, torch.softmax(fh @ _t(mem).t() / 0.05, dim=1))
    with pytest.raises(ValueError, match="k"):
        topk_prediction(_t(f), _t(mem), 0)


# --------------------------------------------------------------------------- refined_targets


def test_refined_targets_hand_numbers():
    labels = torch.tensor([1, 0, 2])
    w = torch.tensor([0.5, 1.0, 0.0])
    pred = torch.tensor([[0.2, 0.8, 0.0], [0.0, 0.5, 0.5], [0.3, 0.3, 0.4]], dtype=torch.float64)
    got = refined_targets(labels, w, pred)
    expected = torch.tensor([[0.1, 0.9, 0.0], [1.0, 0.0, 0.0], [0.3, 0.3, 0.4]], dtype=torch.float64)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(1), torch.ones(3, dtype=torch.float64))
    assert got.dtype == torch.float64 and not got.requires_grad


def test_refined_targets_rejects_bad_inputs():
    pred = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="labels"):
        refined_targets(torch.tensor([0, 3]), torch.tensor([0.5, 0.5]), pred)
    with pytest.raises(ValueError, match="certainty"):
        refined_targets(torch.tensor([0, 1]), torch.tensor([0.5, 1.5]), pred)
    with pytest.raises(ValueError, match="certainty"):
        refined_targets(torch.tensor([0, 1]), torch.tensor([0.5]), pred)
