import math

import numpy as np
import pytest
import torch

from dmdl.ops.memory import ClusterMemory, cluster_centroids, momentum_update_reference


def test_momentum_update_hand_computed():
    mem = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[0.0, 2.0], [3.0, 0.0]])  # normalised inside: [0,1], [1,0]
    momentum_update_reference(mem, x, torch.tensor([0, 0]), 0.2)
    # step 1: 0.2*[1,0] + 0.8*[0,1] = [0.2, 0.8] -> / sqrt(0.68)
    r1 = np.array([0.2, 0.8]) / math.sqrt(0.68)
    # step 2: 0.2*r1 + 0.8*[1,0]
    r2 = 0.2 * r1 + np.array([0.8, 0.0])
    r2 /= np.linalg.norm(r2)
    np.testing.assert_allclose(mem[0].numpy(), r2, atol=1e-6)
    np.testing.assert_allclose(mem[1].numpy(), [0.0, 1.0])  # untouched row


def test_update_order_matters_and_is_batch_order():
    mem_a = torch.eye(3)
    mem_b = torch.eye(3)
    x = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    momentum_update_reference(mem_a, x, torch.tensor([0, 0]), 0.2)
    momentum_update_reference(mem_b, x.flip(0), torch.tensor([0, 0]), 0.2)
    assert not torch.allclose(mem_a[0], mem_b[0])
    # later samples weigh more: in mem_a the last sample was e3
    assert mem_a[0, 2] > mem_a[0, 1]


def test_cluster_memory_loss_matches_manual_cross_entropy():
    torch.manual_seed(0)
    cent = torch.randn(5, 8)
    mem = ClusterMemory.from_centroids(cent, temperature=0.05, momentum=0.2)
    x = torch.randn(6, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    loss = mem(x, y)
    xn = x.detach().numpy() / np.linalg.norm(x.detach().numpy(), axis=1, keepdims=True)
    cn = cent.numpy() / np.linalg.norm(cent.numpy(), axis=1, keepdims=True)
    z = xn @ cn.T / 0.05
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    expected = -logp[np.arange(6), y.numpy()].mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert mem.features.grad is None


def test_cluster_memory_rejects_bad_targets():
    mem = ClusterMemory(4, 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        mem(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="targets"):
        momentum_update_reference(mem.features, torch.randn(2, 4), torch.tensor([0]), 0.2)


def test_cluster_centroids_ignores_outliers_and_normalises():
    f = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0], [0.0, 3.0]])
    lab = torch.tensor([0, 1, -1, 1])
    c = cluster_centroids(f, lab)
    np.testing.assert_allclose(c.numpy(), [[1.0, 0.0], [0.0, 1.0]], atol=1e-6)
    with pytest.raises(ValueError, match="no member"):
        cluster_centroids(f, torch.tensor([0, 2, -1, 2]))


def test_per_sample_momentum_matches_numpy_and_one_means_no_update():
    import numpy as np

    from dmdl.ops.memory import momentum_update_reference

    g = torch.Generator().manual_seed(0)
    mem = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    x = torch.randn(4, 4, generator=g)
    y = torch.tensor([1, 1, 2, 0])
    mu = torch.tensor([0.2, 0.5, 1.0, 0.9])
    expected = mem.numpy().astype(np.float64).copy()
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    for i in range(4):
        if mu[i] >= 1:
            continue
        row = float(mu[i]) * expected[int(y[i])] + (1 - float(mu[i])) * xn[i]
        expected[int(y[i])] = row / np.linalg.norm(row)
    out = momentum_update_reference(mem.clone(), x, y, mu)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(out[2].numpy(), mem[2].numpy())  # mu = 1: row 2 untouched
