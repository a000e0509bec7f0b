from collections import Counter

import pytest

from dmdl.data.sampler import PseudoIdentitySampler


def test_groups_of_num_instances_prefer_other_cameras():
    labels = [0] * 6 + [1] * 3 + [-1] * 2
    cams = [1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 2]
    s = PseudoIdentitySampler(labels, cams, num_instances=4, seed=0)
    idx = list(s)
    assert len(idx) == len(s) == 8
    groups = [idx[:4], idx[4:]]
    for g in groups:
        assert len({labels[i] for i in g}) == 1
        assert all(labels[i] >= 0 for i in g)
    g0 = next(g for g in groups if labels[g[0]] == 0)
    anchor_cam = cams[g0[0]]
    assert all(cams[i] != anchor_cam for i in g0[1:])  # 3 other-camera images exist: all drawn from them
    assert len(set(g0[1:])) == 3  # without replacement when enough


def test_with_replacement_when_too_few_and_deterministic():
    labels = [0, 0, 1, 1, 1]
    cams = [1, 1, 1, 1, 1]
    a = list(PseudoIdentitySampler(labels, cams, 4, seed=3))
    b = list(PseudoIdentitySampler(labels, cams, 4, seed=3))
    assert a == b
    counts = Counter(labels[i] for i in a)
    assert counts == {0: 4, 1: 4}


def test_no_labels_raises():
    with pytest.raises(ValueError, match="every label is -1"):
        PseudoIdentitySampler([-1, -1], [1, 1], 2)


def test_min_length_repeats_identities_to_fill_a_batch():
    labels = [0, 0, 0, 1, 1, 1]
    s = PseudoIdentitySampler(labels, [1] * 6, num_instances=2, seed=0, min_length=10)
    idx = list(s)
    assert len(idx) == len(s) == 12  # 3 passes of 2 ids x 2
    assert Counter(labels[i] for i in idx) == {0: 6, 1: 6}
