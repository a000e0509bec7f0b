"""Ghost BatchNorm reproduces per-replica statistics of a DataParallel run."""

import torch
from torch import nn

from dmdl.models.ghost_bn import Replicas, replica_forward, replica_order


def test_groups_are_normalised_with_their_own_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    ref = nn.BatchNorm2d(3)
    ref.load_state_dict(bn.state_dict())
    model = nn.Sequential(bn).train()
    x = torch.randn(8, 3, 4, 2) * torch.tensor([1.0, 5.0]).repeat_interleave(4).view(8, 1, 1, 1)
    y = replica_forward(model, x, 2)
    # independent reference: normalise each half by its own mean and biased variance
    for k, half in enumerate((x[:4], x[4:])):
        mean = half.mean(dim=(0, 2, 3), keepdim=True)
        var = half.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        torch.testing.assert_close(y[4 * k:4 * (k + 1)], (half - mean) / torch.sqrt(var + bn.eps))
    # running statistics: those of group 0 only (DataParallel keeps replica 0's buffers)
    ref.train()(x[:4])
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 1 and bn.track_running_stats
    # evaluation is plain BatchNorm
    torch.testing.assert_close(model.eval()(x), ref.eval()(x))
    model.train()
    torch.testing.assert_close(Replicas(model, 2)(x), y)  # one module call, the same groups


def test_replica_order_puts_each_replicas_rows_together():
    infrared = torch.arange(8) >= 4  # visible rows 0..3, infrared rows 4..7
    p = replica_order(infrared, 2)
    assert p.tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    assert torch.argsort(p)[p].tolist() == list(range(8))
    # unequal modalities (MULT: two visible views, one infrared): each replica a chunk of each
    assert replica_order(torch.arange(6) >= 4, 2).tolist() == [0, 1, 4, 2, 3, 5]
