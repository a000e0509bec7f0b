"""OCLR loss (docs/mult.md#B4) against its formula, by NumPy."""

import numpy as np
import pytest
import torch

from dmdl.losses import oclr_loss
from _reference import np_sce


def test_matches_formula():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(7, 11, generator=g, dtype=torch.float64) * 20  # cosine / 0.05 scale
    target = torch.randn(7, 11, generator=g, dtype=torch.float64) * 20
    np.testing.assert_allclose(oclr_loss(pred, target).item(), np_sce(pred.numpy(), target.numpy()), rtol=1e-12)
    np.testing.assert_allclose(oclr_loss(pred, target, sharpen=1.0).item(),
                               np_sce(pred.numpy(), target.numpy(), 1.0), rtol=1e-12)


def test_hand_computed():
    # target logits (0, 0) -> uniform q; pred (0, log 3) -> p = (1/4, 3/4): -(0.5 log 1/4 + 0.5 log 3/4)
    loss = oclr_loss(torch.tensor([[0.0, float(np.log(3.0))]]), torch.zeros(1, 2))
    assert loss.item() == pytest.approx(-(0.5 * np.log(0.25) + 0.5 * np.log(0.75)), rel=1e-6)


def test_gradient_reaches_target_unless_detached():
    pred = torch.randn(4, 5, requires_grad=True)
    target = torch.randn(4, 5, requires_grad=True)
    oclr_loss(pred, target).backward()
    assert target.grad is not None and target.grad.abs().sum() > 0  # MULT: targets not detached
    target.grad = None
    oclr_loss(pred, target, detach_target=True).backward()
    assert target.grad is None


def test_finite_where_softmax_underflows():
    pred = torch.tensor([[0.0, -2000.0]])  # softmax(pred)[1] underflows to 0: log gives -inf in MULT's code
    loss = oclr_loss(pred, torch.tensor([[0.0, 0.0]]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(1000.0, rel=1e-6)


def test_bad_shapes():
    with pytest.raises(ValueError, match="one shape"):
        oclr_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="sharpen"):
        oclr_loss(torch.zeros(2, 3), torch.zeros(2, 3), sharpen=0)
