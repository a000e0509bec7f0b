import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmdl.config import parse_schedule
from dmdl.losses import soft_cross_entropy, triplet_loss, triplet_weight
from dmdl.methods.dmdl import DMDLConfig

# the published schedules are the config defaults (their one source); the weights per epoch below
# are typed in from the paper (docs/dmdl.md#A4.4/#A5.5/#A8)
STAGE1_TRIPLET_SCHEDULE = parse_schedule(DMDLConfig().stage1_triplet)
STAGE2_TRIPLET_SCHEDULE = parse_schedule(DMDLConfig().stage2_triplet)
from _reference import np_triplet


# x0=(0,0), x1=(3,0) (label 0); x2=(0,4), x3=(0,9) (label 1)
# d01=3, d02=4, d03=9, d12=5, d13=sqrt(90)=9.4868, d23=5
HAND_X = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [0.0, 9.0]], dtype=torch.float64)
HAND_Y = torch.tensor([0, 0, 1, 1])


def test_triplet_hand_computed_default_margin():
    # anchor 0: d_ap=3, d_an=min(4, 9)=4       -> max(0, 3-4+0.3) = 0
    # anchor 1: d_ap=3, d_an=min(5, 9.4868)=5  -> max(0, 3-5+0.3) = 0
    # anchor 2: d_ap=5, d_an=min(4, 5)=4       -> max(0, 5-4+0.3) = 1.3
    # anchor 3: d_ap=5, d_an=min(9, 9.4868)=9  -> max(0, 5-9+0.3) = 0
    # mean = 1.3 / 4 = 0.325
    loss = triplet_loss(HAND_X, HAND_Y)
    assert loss.item() == pytest.approx(0.325, abs=1e-9)


def test_triplet_hand_computed_margin_1_5():
    # anchor terms: 3-4+1.5=0.5, 3-5+1.5=-0.5->0, 5-4+1.5=2.5, 5-9+1.5=-2.5->0; mean = 3/4
    assert triplet_loss(HAND_X, HAND_Y, margin=1.5).item() == pytest.approx(0.75, abs=1e-9)


def test_triplet_uses_raw_not_normalised_features():
    # scaling by 2 doubles every distance: terms 2*(3-4)+1.5=-0.5->0, 2*(3-5)+1.5<0, 2*(5-4)+1.5=3.5, <0
    assert triplet_loss(2 * HAND_X, HAND_Y, margin=1.5).item() == pytest.approx(3.5 / 4, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_matches_numpy_loops(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(14, 6))
    y = rng.integers(0, 4, size=14)
    y[-1] = 7  # a label with a single member: its hardest positive is the anchor itself (1e-6)
    for margin in (0.3, 2.0):
        got = triplet_loss(torch.from_numpy(x), torch.from_numpy(y), margin=margin).item()
        assert got == pytest.approx(np_triplet(x, y, margin), rel=1e-10, abs=1e-12)


def test_triplet_equals_margin_ranking_formulation():
    torch.manual_seed(0)
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    dist = torch.cdist(x, x)
    same = y[:, None] == y[None, :]
    d_ap = torch.stack([dist[i][same[i]].max() for i in range(10)])
    d_an = torch.stack([dist[i][~same[i]].min() for i in range(10)])
    ref = torch.nn.MarginRankingLoss(margin=0.3)(d_an, d_ap, torch.ones(10, dtype=torch.float64))
    assert triplet_loss(x, y).item() == pytest.approx(ref.item(), rel=1e-9)


def test_triplet_gradcheck():
    torch.manual_seed(3)
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    margin = 1.0
    # the case has no ties: distinct off-diagonal distances and no hinge term near 0
    d = torch.cdist(x, x)
    upper = d[torch.triu(torch.ones(8, 8, dtype=torch.bool), diagonal=1)]
    assert upper.sort().values.diff().min() > 1e-4  # all pairwise distances distinct
    same = y[:, None] == y[None, :]
    d_ap = d.masked_fill(~same, -1).amax(1)
    d_an = d.masked_fill(same, 1e9).amin(1)
    assert ((d_ap - d_an + margin).abs() > 1e-3).all()
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: triplet_loss(f, y, margin=margin), (x,), eps=1e-6, atol=1e-6)


def test_triplet_all_same_label_is_zero_with_grad():
    x = torch.randn(5, 3, requires_grad=True)
    loss = triplet_loss(x, torch.zeros(5, dtype=torch.int64))
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_triplet_rejects_bad_inputs():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=">= 0"):
        triplet_loss(x, torch.tensor([0, 0, -1, 1]))
    with pytest.raises(ValueError, match="labels"):
        triplet_loss(x, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="labels"):
        triplet_loss(x, torch.tensor([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="features"):
        triplet_loss(torch.randn(4), torch.tensor([0, 0, 1, 1]))


def test_triplet_float32_backward():
    torch.manual_seed(0)
    x = torch.randn(16, 8, requires_grad=True)
    y = torch.arange(4).repeat_interleave(4)
    loss = triplet_loss(x, y)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_soft_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 5)) * 3
    q = rng.dirichlet(np.ones(5), size=6)
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    expected = float(np.mean(-(q * logp).sum(1)))
    got = soft_cross_entropy(torch.from_numpy(z), torch.from_numpy(q)).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_soft_cross_entropy_one_hot_is_hard_ce():
    torch.manual_seed(0)
    z = torch.randn(7, 4, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2, 0, 3])
    q = F.one_hot(y, 4).to(torch.float64)
    assert soft_cross_entropy(z, q).item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-12)


def test_soft_cross_entropy_shape_mismatch():
    with pytest.raises(ValueError, match="targets"):
        soft_cross_entropy(torch.randn(3, 4), torch.rand(3, 5))
    with pytest.raises(ValueError, match="logits"):
        soft_cross_entropy(torch.randn(3), torch.rand(3))


@pytest.mark.parametrize("epoch,weight", [(0, 0.0), (15, 0.0), (16, 0.25), (25, 0.25), (26, 0.5), (35, 0.5),
                                          (36, 1.0), (49, 1.0)])
def test_stage1_schedule(epoch, weight):
    assert triplet_weight(STAGE1_TRIPLET_SCHEDULE, epoch) == weight


@pytest.mark.parametrize("epoch,weight", [(0, 0.0), (10, 0.0), (11, 0.5), (20, 0.5), (21, 1.0), (60, 1.0)])
def test_stage2_schedule(epoch, weight):
    assert triplet_weight(STAGE2_TRIPLET_SCHEDULE, epoch) == weight


def test_schedule_before_first_and_validation():
    assert triplet_weight(((5, 1.0),), 4) == 0.0
    assert triplet_weight(((5, 1.0),), 5) == 1.0
    assert triplet_weight((), 3) == 0.0
    with pytest.raises(ValueError, match="increasing"):
        triplet_weight(((0, 0.0), (10, 1.0), (5, 0.5)), 3)
    with pytest.raises(ValueError, match=">= 0"):
        triplet_weight(((0, -0.5),), 3)
