"""The shared generators of dmdl.testing do what their docstrings say (the other tests rely on it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmdl.ops import _library, jaccard_distance
from dmdl.testing import (clustered_features, csr_tensor, direction_features, identical_rows_features,
                          jaccard_affinity, near_tie_features, two_modality_features)


def _unit_rows(x: torch.Tensor) -> bool:
    return bool(torch.allclose(x.norm(dim=1), torch.ones(x.shape[0]), atol=1e-6))


@pytest.mark.parametrize("kw", [{}, {"noise": 0.8, "cluster_size": 20}, {"clusters": 7, "noise": 0.3}])
def test_clustered_features_shape_norm_and_seed(kw):
    x = clustered_features(300, 24, 5, **kw)
    assert x.shape == (300, 24) and x.dtype == torch.float32 and x.is_contiguous() and _unit_rows(x)
    assert torch.equal(x, clustered_features(300, 24, 5, **kw))  # deterministic
    assert not torch.equal(x, clustered_features(300, 24, 6, **kw))  # the seed matters


@pytest.mark.parametrize("n,clusters,cluster_size,want", [(500, 5, 12, 5), (240, None, 12, 20), (240, None, 20, 12),
                                                          (10, None, 12, 2)])
def test_clustered_features_without_noise_are_the_centres(n, clusters, cluster_size, want):
    # noise 0: every row is its (normalised) centre, so there are as many distinct rows as centres
    # drawn (all of them, with n far above the number of clusters)
    x = clustered_features(n, 8, 1, noise=0.0, clusters=clusters, cluster_size=cluster_size)
    assert torch.unique(x, dim=0).shape[0] == want


def test_clustered_features_chunks():
    whole = clustered_features(100, 16, 3)
    assert torch.equal(clustered_features(100, 16, 3, chunk_rows=100), whole)
    assert torch.equal(clustered_features(100, 16, 3, chunk_rows=1000), whole)
    chunked = clustered_features(100, 16, 3, chunk_rows=30)  # labels and noise drawn per chunk
    assert chunked.shape == (100, 16) and _unit_rows(chunked) and not torch.equal(chunked, whole)
    assert clustered_features(0, 16, 3).shape == (0, 16)
    with pytest.raises(ValueError, match="chunk_rows"):
        clustered_features(10, 4, chunk_rows=0)
    with pytest.raises(ValueError, match="d >= 1"):
        clustered_features(10, 0)


def test_near_tie_features_have_the_documented_ties():
    n, d = 200, 16
    m = n // 10
    x = near_tie_features(n, d, 4)
    assert x.shape == (n, d) and x.is_contiguous() and _unit_rows(x)
    assert torch.equal(x[n // 2 : n // 2 + m], x[:m])  # exact duplicates
    assert torch.equal(x[3 * m : 3 * m + 5], x[3 * m].expand(5, d))  # 6 identical rows
    gap = (x[m : 2 * m] - x[2 * m : 3 * m]).norm(dim=1)
    assert bool((gap > 0).all()) and bool((gap < 1e-3).all())  # near duplicates


def test_identical_rows_features():
    x = identical_rows_features(80, 8, 12)
    assert x.shape == (80, 8) and x.is_contiguous()
    assert torch.equal(x[:50], torch.full((50, 8), 8 ** -0.5))
    assert torch.equal(x[50:], clustered_features(30, 8, 12))
    with pytest.raises(ValueError, match="smaller than identical"):
        identical_rows_features(40, 8, 0)


def test_two_modality_features():
    v, i, yv, yi = two_modality_features(3, n_visible=40, n_infrared=30, ids=6, d=16)
    assert v.shape == (40, 16) and i.shape == (30, 16) and _unit_rows(v) and _unit_rows(i)
    assert yv.dtype == torch.int64 and yi.dtype == torch.int64 and yv.shape == (40,) and yi.shape == (30,)
    assert int(yv.min()) >= 0 and int(yv.max()) < 6 and int(yi.min()) >= 0 and int(yi.max()) < 6
    # without noise a visible sample is its identity's direction and an infrared one that
    # direction plus the gap: equal rows within an identity, and the gap moves every identity
    v0, i0, yv0, yi0 = two_modality_features(3, n_visible=40, n_infrared=30, ids=6, d=16, noise=0.0)
    for k in set(yv0.tolist()) & set(yi0.tolist()):
        rows_v, rows_i = v0[yv0 == k], i0[yi0 == k]
        assert torch.equal(rows_v, rows_v[:1].expand_as(rows_v)) and torch.equal(rows_i, rows_i[:1].expand_as(rows_i))
        assert (rows_v[0] - rows_i[0]).norm() > 1e-3
    # the gap drawn first changes the draws (bench_mult_transfer.py's order), not the directions
    v1, _, yv1, _ = two_modality_features(3, n_visible=40, n_infrared=30, ids=6, d=16, noise=0.0, gap_first=True)
    assert not torch.equal(yv1, yv0)
    assert torch.unique(v1, dim=0).shape[0] <= 6


def test_direction_features_hand_computed():
    got = direction_features({0: [1.0, 0.0], 1: [0.0, 2.0]}, [0, 0, 1, -1, 0, 1], outlier=[5.0, 6.0, 7.0], jitter=0.1)
    want = torch.tensor([[1.1, 0.0], [0.9, 0.0], [0.0, 2.2], [5.0, 6.0], [1.1, 0.0], [0.0, 1.8]])
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(direction_features({0: [0.3, 0.4]}, [0, 0], outlier=[0.0, 1.0]),
                       torch.tensor([[0.3, 0.4], [0.3, 0.4]]))


def test_csr_tensor_keeps_indices_as_given():
    a = csr_tensor([0, 2, 2, 4], torch.tensor([2, 0, 1, 1], dtype=torch.int32), [1.0, 2.0, 3.0, 4.0], (3, 3))
    assert a.layout == torch.sparse_csr and a.col_indices().tolist() == [2, 0, 1, 1]  # unsorted, repeated
    dense = np.zeros((3, 3))
    np.add.at(dense, ([0, 0, 2, 2], [2, 0, 1, 1]), [1.0, 2.0, 3.0, 4.0])
    assert np.array_equal(a.to_dense().numpy(), dense)


@pytest.mark.skipif(not _library.is_available(), reason="dmdl._C is not built")
def test_jaccard_affinity_is_the_row_normalised_complement_of_the_dense_distance():
    x = clustered_features(120, 16, 2)
    aff = jaccard_affinity(x, 20, 6)
    dist = jaccard_distance(x, 20, 6, output="dense").double()
    a = torch.where(dist < 1, 1 - dist, torch.zeros_like(dist))
    want = a / a.sum(dim=1, keepdim=True)
    assert aff.layout == torch.sparse_csr
    assert torch.allclose(aff.to_dense().double(), want, rtol=0, atol=1e-6)
