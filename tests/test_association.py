import numpy as np
import pytest
import torch

from dmdl.pseudo_labels import imca


def _feats(dirs, labels):
    return torch.tensor([dirs[l] if l >= 0 else [0.0, 0.0, 1.0] for l in labels], dtype=torch.float32)


def test_imca_maps_clusters_to_most_similar_anchor_cluster():
    # visible clusters: 0 ~ x-axis, 1 ~ y-axis, 2 ~ between (closer to y); IR clusters: 0 ~ y, 1 ~ x
    vis_dirs = {0: [1.0, 0.05, 0.0], 1: [0.05, 1.0, 0.0], 2: [0.4, 1.0, 0.0]}
    ir_dirs = {0: [0.0, 1.0, 0.0], 1: [1.0, 0.0, 0.0]}
    lv = np.array([0, 0, 1, 2, -1, 1])
    li = np.array([1, 0, 0, -1, 1])
    fv, fi = _feats(vis_dirs, lv), _feats(ir_dirs, li)
    uv, ui, k = imca(fv, lv, fi, li, anchor="infrared")
    assert k == 2
    np.testing.assert_array_equal(uv, [1, 1, 0, 0, -1, 0])  # many-to-one: clusters 1 and 2 -> IR 0
    np.testing.assert_array_equal(ui, li)
    uv2, ui2, k2 = imca(fv, lv, fi, li, anchor="visible")
    assert k2 == 3
    np.testing.assert_array_equal(uv2, lv)
    # IR 0 (y-axis): cos with vis1 = 1/|[.05,1]| ~ .9988, with vis2 = 1/|[.4,1]| ~ .928 -> vis 1
    np.testing.assert_array_equal(ui2, [0, 1, 1, -1, 0])


def test_imca_errors():
    f = torch.eye(3)
    with pytest.raises(ValueError, match="anchor"):
        imca(f, np.array([0, 0, 1]), f, np.array([0, 1, 1]), anchor="rgb")
    with pytest.raises(ValueError, match="at least one cluster"):
        imca(f, np.array([-1, -1, -1]), f, np.array([0, 1, 1]), anchor="infrared")
