"""Ghost BatchNorm reproduces per-replica statistics of a DataParallel run."""

import torch
from torch import nn

from dmdl.models.ghost_bn import convert_ghost_batchnorm, dataparallel_order


def test_groups_are_normalised_with_their_own_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    ref = nn.BatchNorm2d(3)
    ref.load_state_dict(bn.state_dict())
    model = convert_ghost_batchnorm(nn.Sequential(bn), groups=2)
    x = torch.randn(8, 3, 4, 2) * torch.tensor([1.0, 5.0]).repeat_interleave(4).view(8, 1, 1, 1)
    y = model.train()(x)
    # independent reference: normalise each half by its own mean and biased variance
    for k, half in enumerate((x[:4], x[4:])):
        mean = half.mean(dim=(0, 2, 3), keepdim=True)
        var = half.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        torch.testing.assert_close(y[4 * k:4 * (k + 1)], (half - mean) / torch.sqrt(var + bn.eps))
    # running statistics: those of group 0 only (DataParallel keeps replica 0's buffers)
    ref.train()(x[:4])
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert set(model.state_dict()) == {"0.weight", "0.bias", "0.running_mean", "0.running_var",
                                       "0.num_batches_tracked"}
    # evaluation is plain BatchNorm
    torch.testing.assert_close(model.eval()(x), ref.eval()(x))


def test_dataparallel_order_puts_each_replicas_rows_together():
    p = dataparallel_order(batch=4, groups=2)  # x1 rows 0..3, x2 rows 4..7
    assert p.tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    assert torch.argsort(p)[p].tolist() == list(range(8))
