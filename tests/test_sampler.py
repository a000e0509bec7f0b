from collections import Counter

import pytest

from dmdl.data.sampler import PseudoIdentitySampler, shared_identity_order

SEEDS = range(200)


def _groups(idx, n):
    return [idx[i:i + n] for i in range(0, len(idx), n)]


def test_groups_of_num_instances_prefer_other_cameras():
    # id 0: 5 images in cam 1 and 5 in cam 2 -> other-camera pool of 5 >= 4: all from it, no repeats
    labels = [0] * 10 + [1] * 5 + [-1] * 2
    cams = [1] * 5 + [2] * 5 + [1] * 5 + [1, 2]
    for seed in range(50):
        s = PseudoIdentitySampler(labels, cams, num_instances=4, seed=seed)
        idx = list(s)
        assert len(idx) == len(s) == 8
        for g in _groups(idx, 4):
            assert len({labels[i] for i in g}) == 1
            assert all(labels[i] >= 0 for i in g)
        g0 = next(g for g in _groups(idx, 4) if labels[g[0]] == 0)
        assert all(cams[i] != cams[g0[0]] for i in g0[1:])
        assert len(set(g0)) == 4


def test_other_camera_preferred_even_when_it_has_one_image():
    # anchor in cam 1 -> the only other-camera image (index 5) is repeated num_instances-1 times
    labels = [0] * 6
    cams = [1, 1, 1, 1, 1, 2]
    seen_cam1_anchor = False
    for seed in SEEDS:
        idx = list(PseudoIdentitySampler(labels, cams, num_instances=4, seed=seed))
        assert len(idx) == 4
        if idx[0] != 5:
            seen_cam1_anchor = True
            assert idx[1:] == [5, 5, 5]
        else:  # anchor in cam 2: pool = the 5 cam-1 images (>= 4) -> without replacement
            assert len(set(idx[1:])) == 3 and 5 not in idx[1:]
    assert seen_cam1_anchor


@pytest.mark.parametrize("cams", [[1, 1, 1, 1], [1, 2, 3, 4]])
def test_pool_of_exactly_num_instances_minus_1_is_drawn_with_replacement(cams):
    # 4 images: the pool (same-camera others, or other-camera images) has 3 = num_instances-1 < 4
    repeats = 0
    for seed in SEEDS:
        idx = list(PseudoIdentitySampler([0] * 4, cams, num_instances=4, seed=seed))
        assert len(idx) == 4
        assert idx[0] not in idx[1:]
        repeats += len(set(idx[1:])) < 3
    assert repeats > 0


@pytest.mark.parametrize("cams", [[1] * 5, [1, 2, 3, 4, 5]])
def test_pool_of_num_instances_is_drawn_without_replacement(cams):
    for seed in SEEDS:
        idx = list(PseudoIdentitySampler([0] * 5, cams, num_instances=4, seed=seed))
        assert len(idx) == 4
        assert len(set(idx)) == 4


def test_same_camera_fallback_excludes_anchor_and_replaces_when_short():
    labels = [0, 0, 1, 1, 1]
    cams = [1, 1, 1, 1, 1]
    for seed in range(50):
        idx = list(PseudoIdentitySampler(labels, cams, 4, seed=seed))
        assert Counter(labels[i] for i in idx) == {0: 4, 1: 4}
        for g in _groups(idx, 4):
            assert g[0] not in g[1:]


def test_singleton_ids_yield_one_index():
    labels = [0, 1, 1, 1, 1, 2]
    cams = [1, 1, 2, 1, 2, 1]
    s = PseudoIdentitySampler(labels, cams, num_instances=4, seed=0)
    idx = list(s)
    assert len(s) == len(idx) == 1 + 4 + 1
    assert Counter(idx)[0] == 1 and Counter(idx)[5] == 1
    assert Counter(labels[i] for i in idx) == {0: 1, 1: 4, 2: 1}
    padded = PseudoIdentitySampler(labels, cams, num_instances=4, seed=0, pad_singletons=True)
    pidx = list(padded)
    assert len(padded) == len(pidx) == 12
    assert Counter(pidx)[0] == 4 and Counter(pidx)[5] == 4


@pytest.mark.parametrize("min_length", [0, 7, 20, 33])
def test_len_equals_yielded_with_singletons_and_passes(min_length):
    labels = [0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 4, -1]
    cams = [1, 1, 2, 1, 1, 2, 1, 1, 2, 2, 1, 2, 1]
    s = PseudoIdentitySampler(labels, cams, num_instances=3, seed=5, min_length=min_length)
    per_pass = 1 + 3 + 3 + 3 + 1
    assert len(s) == -(-max(min_length, 1) // per_pass) * per_pass
    for _ in range(3):  # every epoch
        idx = list(s)
        assert len(idx) == len(s) >= min_length
        assert all(labels[i] >= 0 for i in idx)


def test_seed_reproducibility():
    labels = [i % 7 for i in range(60)]
    cams = [i % 3 for i in range(60)]
    a = PseudoIdentitySampler(labels, cams, 4, seed=3)
    b = PseudoIdentitySampler(labels, cams, 4, seed=3)
    a1, a2 = list(a), list(a)
    assert a1 == list(b) and a2 == list(b)
    assert a1 != a2  # the sampler's RNG advances between epochs
    assert list(PseudoIdentitySampler(labels, cams, 4, seed=4)) != a1


def test_no_labels_raises():
    with pytest.raises(ValueError, match="every label is -1"):
        PseudoIdentitySampler([-1, -1], [1, 1], 2)


def test_min_length_repeats_identities_to_fill_a_batch():
    labels = [0, 0, 0, 1, 1, 1]
    s = PseudoIdentitySampler(labels, [1] * 6, num_instances=2, seed=0, min_length=10)
    idx = list(s)
    assert len(idx) == len(s) == 12  # 3 passes of 2 ids x 2
    assert Counter(labels[i] for i in idx) == {0: 6, 1: 6}


def test_inter_modality_samplers_pair_identities_position_by_position():
    from dmdl.data.sampler import shared_identity_order

    # visible has ids 0..3 (id 3 a singleton), infrared ids 0..2 and 4
    lv = [0] * 5 + [1] * 5 + [2] * 5 + [3]
    li = [0] * 4 + [1] * 4 + [2] * 4 + [4] * 4
    order = shared_identity_order(lv, li, seed=3)
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert order == shared_identity_order(li, lv, seed=3)  # symmetric, seeded
    n = 4
    sv = PseudoIdentitySampler(lv, [0] * len(lv), n, seed=1, id_order=order)
    si = PseudoIdentitySampler(li, [1] * len(li), n, seed=2, id_order=order)
    xv, xi = list(sv), list(si)
    assert len(xv) == len(sv) == len(xi) == len(si) == 5 * n
    for g, pid in enumerate(order):
        gv = [lv[j] for j in xv[g * n:(g + 1) * n]]
        gi = [li[j] for j in xi[g * n:(g + 1) * n]]
        assert len(set(gv)) == 1 and len(set(gi)) == 1  # one identity per group
        if pid in lv:
            assert gv[0] == pid
        if pid in li:
            assert gi[0] == pid
        if pid in lv and pid in li:
            assert gv[0] == gi[0]  # the same identity at the same position in both modalities


@pytest.mark.parametrize("replay", [True, False])
def test_paired_sampler_replays_its_draw_or_draws_afresh(replay):
    """The released inter-modality sampler draws an epoch's groups once and every pass of its loader
    replays them (``inter_sampler: replay``); ``redraw`` draws new groups on every pass."""
    labels = [0] * 6 + [1] * 6 + [2] * 6
    cams = [1, 2] * 9
    order = shared_identity_order(labels, labels, seed=3)
    s = PseudoIdentitySampler(labels, cams, 4, seed=5, id_order=order, replay=replay)
    passes = [list(s) for _ in range(4)]
    assert all(len(p) == len(s) == 12 for p in passes)
    assert all(p == passes[0] for p in passes) is replay
    fresh = PseudoIdentitySampler(labels, cams, 4, seed=5, id_order=order)
    assert passes[0] == list(fresh)  # the first pass is the same draw either way
