"""MULT's batch samplers (docs/mult.md#B5)."""

import numpy as np
import pytest

from dmdl.data.mult_sampler import cross_stage_batches, single_stage_batches


def test_single_stage_batches_draw_clustered_identities():
    rng = np.random.default_rng(0)
    lr = rng.integers(-1, 10, 300)
    li = rng.integers(-1, 8, 200)
    rgb, ir = single_stage_batches(lr, li, iterations=5, num_ids=4, num_instances=6, seed=3)
    assert len(rgb) == len(ir) == 5
    for b, lab in ((rgb, lr), (ir, li)):
        for batch in b:
            assert batch.shape == (24,) and batch.dtype == np.int64
            ids = lab[batch].reshape(4, 6)
            assert (ids >= 0).all()  # outliers are never drawn
            assert (ids == ids[:, :1]).all()  # blocks of one identity
            assert len(set(ids[:, 0])) == 4  # identities without replacement
    again = single_stage_batches(lr, li, iterations=5, num_ids=4, num_instances=6, seed=3)
    assert all((a == b).all() for a, b in zip(rgb, again[0]))


def test_images_without_replacement_only_when_more_than_num_instances():
    labels = np.array([0] * 7 + [1] * 3)  # id 0: 7 > 6 images; id 1: 3 <= 6
    rgb, _ = single_stage_batches(labels, labels, iterations=20, num_ids=2, num_instances=6, seed=1)
    for batch in rgb:
        for block in batch.reshape(2, 6):
            if labels[block[0]] == 0:
                assert len(set(block)) == 6
            else:
                assert set(block) <= {7, 8, 9}


def test_cross_stage_pairs_rgb_and_ir_blocks():
    rng = np.random.default_rng(1)
    lr, cm_r = rng.integers(0, 6, 200), rng.integers(0, 5, 200)  # RGB intra (K_R 6) / RGB in IR space (K_I 5)
    li, cm_i = rng.integers(0, 5, 150), rng.integers(0, 6, 150)  # IR intra / IR in RGB space
    rgb, ir = cross_stage_batches(lr, li, cm_r, cm_i, iterations=4, num_ids=4, num_instances=5, seed=0)
    for br, bi in zip(rgb, ir):
        blocks_r, blocks_i = br.reshape(4, 5), bi.reshape(4, 5)
        for j in range(2):  # RGB label space: RGB by intra label, IR by cross label, same id
            assert len(set(lr[blocks_r[j]])) == 1 and len(set(cm_i[blocks_i[j]])) == 1
            assert lr[blocks_r[j][0]] == cm_i[blocks_i[j][0]]
        for j in range(2, 4):  # IR label space
            assert len(set(cm_r[blocks_r[j]])) == 1 and len(set(li[blocks_i[j]])) == 1
            assert cm_r[blocks_r[j][0]] == li[blocks_i[j][0]]


def test_cross_stage_needs_shared_identities_and_even_num_ids():
    lr = np.zeros(10, dtype=int)
    cm_i = np.ones(10, dtype=int)  # no IR sample mapped to RGB id 0
    with pytest.raises(ValueError, match="RGB label space"):
        cross_stage_batches(lr, lr, lr, cm_i, 1, 2, 2, 0)
    with pytest.raises(ValueError, match="even"):
        cross_stage_batches(lr, lr, lr, lr, 1, 3, 2, 0)
    with pytest.raises(ValueError, match="every label is -1"):
        single_stage_batches(-np.ones(5, dtype=int), lr, 1, 2, 2, 0)
