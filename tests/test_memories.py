"""CrossModalMemory (dmdl/memories.py) against NumPy re-derivations of its documented semantics."""

import numpy as np
import pytest
import torch

from dmdl.memories import CrossModalMemory

T, MU = 0.1, 0.3

# stage-2-like case: unified ids 0..2; visible covers {0, 2}, infrared {0, 1, 2}; -1 = outlier
LV = np.array([0, 2, -1, 0, 2, 2])
LI = np.array([1, 0, 2, -1, 1, 0, 2])


def _np_normalize(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_centroids(feats, labels, ids):
    """L2-normalised plain mean of the (raw) member features of each id in ``ids``."""
    return np.stack([_np_normalize(feats[labels == i].mean(axis=0)) for i in ids])


def _data(seed=0, d=5):
    rng = np.random.default_rng(seed)
    # non-unit norms so "mean of raw features" differs from "mean of normalised features"
    fv = rng.normal(size=(len(LV), d)) * rng.uniform(0.5, 3.0, size=(len(LV), 1))
    fi = rng.normal(size=(len(LI), d)) * rng.uniform(0.5, 3.0, size=(len(LI), 1))
    return fv, fi


def _build(fv, fi, shared=True, lv=LV, li=LI):
    feats = {"visible": torch.tensor(fv, dtype=torch.float32), "infrared": torch.tensor(fi, dtype=torch.float32)}
    return CrossModalMemory.build(feats, {"visible": lv, "infrared": li}, temperature=T, momentum=MU, shared=shared)


def _mem(cm, name):
    return cm.memories[name].features.detach().double().numpy()


def test_rows_tables_and_prior():
    fv, fi = _data()
    cm = _build(fv, fi)
    assert cm.num_ids == 3
    np.testing.assert_array_equal(cm.id_to_row["visible"].numpy(), [0, -1, 1])
    np.testing.assert_array_equal(cm.id_to_row["infrared"].numpy(), [0, 1, 2])
    np.testing.assert_array_equal(cm.id_to_row["shared"].numpy(), [0, 1, 2])
    # prior: non-outlier counts 5 (visible) and 6 (infrared) over 11
    assert cm.prior["visible"] == pytest.approx(5 / 11)
    assert cm.prior["infrared"] == pytest.approx(6 / 11)
    np.testing.assert_array_equal(cm.rows("visible", torch.tensor([2, 0, 1, 2])).numpy(), [1, 0, -1, 1])
    np.testing.assert_array_equal(cm.rows("infrared", torch.tensor([2, 1])).numpy(), [2, 1])
    for bad in ([3], [-1]):
        with pytest.raises(ValueError):
            cm.rows("visible", torch.tensor(bad))


def test_memory_rows_are_normalised_means_per_modality_and_shared():
    fv, fi = _data()
    cm = _build(fv, fi)
    assert set(cm.memories.keys()) == {"visible", "infrared", "shared"}
    vis = _mem(cm, "visible")
    assert vis.shape == (2, fv.shape[1])  # only the ids present among visible samples
    np.testing.assert_allclose(vis, _np_centroids(fv, LV, [0, 2]), atol=1e-6)
    np.testing.assert_allclose(_mem(cm, "infrared"), _np_centroids(fi, LI, [0, 1, 2]), atol=1e-6)
    both_f, both_l = np.concatenate([fv, fi]), np.concatenate([LV, LI])
    np.testing.assert_allclose(_mem(cm, "shared"), _np_centroids(both_f, both_l, [0, 1, 2]), atol=1e-6)
    # hand check of one row: shared id 1 has members infrared samples 0 and 4 only
    np.testing.assert_allclose(_mem(cm, "shared")[1], _np_normalize((fi[0] + fi[4]) / 2), atol=1e-6)
    assert "shared" not in _build(fv, fi, shared=False).memories


def test_loss_is_cross_entropy_at_the_right_rows():
    fv, fi = _data()
    cm = _build(fv, fi)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, fv.shape[1])) * 4.0
    ids = np.array([2, 0, 2, 0])
    m = _np_centroids(fv, LV, [0, 2])
    logits = _np_normalize(x) @ m.T / T
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    rows = np.array([{0: 0, 2: 1}[i] for i in ids])
    expected = -logp[np.arange(4), rows].mean()
    got = cm.loss("visible", torch.tensor(x, dtype=torch.float32), torch.tensor(ids))
    assert float(got) == pytest.approx(expected, rel=1e-4)
    # the same ids against the infrared memory use rows 2 and 0 of a 3-row memory
    mi = _np_centroids(fi, LI, [0, 1, 2])
    li = _np_normalize(x) @ mi.T / T
    lse = np.log(np.exp(li - li.max(1, keepdims=True)).sum(1)) + li.max(1)
    expected_i = (lse - li[np.arange(4), ids]).mean()
    got_i = cm.loss("infrared", torch.tensor(x, dtype=torch.float32), torch.tensor(ids))
    assert float(got_i) == pytest.approx(expected_i, rel=1e-4)


def test_loss_raises_for_label_without_row():
    fv, fi = _data()
    cm = _build(fv, fi)
    x = torch.randn(2, fv.shape[1])
    with pytest.raises(ValueError):
        cm.loss("visible", x, torch.tensor([0, 1]))  # id 1 has no visible row
    cm.loss("infrared", x, torch.tensor([0, 1]))  # fine there


def _np_sequential_update(mem, x, rows, mu):
    mem = mem.copy()
    for xi, r in zip(_np_normalize(x), rows):
        if r < 0:
            continue
        mem[r] = _np_normalize(mu * mem[r] + (1 - mu) * xi)
    return mem


def test_update_sequential_in_batch_order_and_skips_rowless_labels():
    fv, fi = _data()
    cm = _build(fv, fi)
    before = _mem(cm, "visible")
    before_i = _mem(cm, "infrared")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, fv.shape[1])) * rng.uniform(0.5, 3, size=(4, 1))
    ids = np.array([2, 1, 2, 0])  # two samples hit row 1 (id 2); id 1 has no visible row -> skipped
    rows = np.array([1, -1, 1, 0])
    expected = _np_sequential_update(before, x, rows, MU)
    # order matters for this input: the reversed order gives a different row 1
    reversed_order = _np_sequential_update(before, x[[2, 1, 0, 3]], rows[[2, 1, 0, 3]], MU)
    assert np.abs(expected[1] - reversed_order[1]).max() > 1e-3
    cm.update("visible", torch.tensor(x, dtype=torch.float32), torch.tensor(ids))
    np.testing.assert_allclose(_mem(cm, "visible"), expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(_mem(cm, "visible"), axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(_mem(cm, "infrared"), before_i, atol=0)  # other memories untouched


def test_update_with_only_rowless_labels_is_a_no_op():
    fv, fi = _data()
    cm = _build(fv, fi)
    before = _mem(cm, "visible")
    cm.update("visible", torch.randn(3, fv.shape[1]), torch.tensor([1, 1, 1]))
    np.testing.assert_array_equal(_mem(cm, "visible"), before)


def test_modality_without_labelled_sample_raises():
    fv, fi = _data()
    with pytest.raises(ValueError, match="visible"):
        _build(fv, fi, shared=False, lv=np.full(len(LV), -1))
    with pytest.raises(ValueError, match="infrared"):
        _build(fv, fi, shared=False, li=np.full(len(LI), -1))


def test_shared_needs_every_id_to_have_a_member():
    fv, fi = _data()
    li = np.array([0, 0, 2, -1, 2, 0, 2])  # id 1 in neither modality
    cm = _build(fv, fi, shared=False, li=li)  # fine without the shared memory
    np.testing.assert_array_equal(cm.id_to_row["infrared"].numpy(), [0, -1, 1])
    with pytest.raises(ValueError):
        _build(fv, fi, shared=True, li=li)
