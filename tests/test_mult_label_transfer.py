"""MULT label transfer (docs/mult.md#B3) against a dense NumPy re-derivation written from the spec.

The reference below uses no code of dmdl.pseudo_labels.mult: dense float64 matrices, the unshifted
kernel exp(-25 P), the four propagation updates and the stopping rule as docs/mult.md#B3 lists
them, and the argmax labels.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dmdl.ops import jaccard_distance
from dmdl.pseudo_labels import dbscan_labels, mult_label_transfer, mult_soft_labels  # the public names
from dmdl.pseudo_labels.mult import dbscan_centers, heterogeneous_affinity, sinkhorn_knopp, sinkhorn_plan
from dmdl.testing import two_modality_features


# ----------------------------------------------------------------------------- NumPy reference
def np_sqdist(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def np_sinkhorn(p, lam=25.0, max_iter=500, tol=0.1):
    m, n = p.shape
    k = np.exp(-lam * p)
    beta = np.full(n, 1.0 / n)
    alpha = np.full(m, 1.0 / m)
    err, step = np.inf, 0
    while err > tol and step < max_iter:
        alpha = (1.0 / m) / (k @ beta)
        beta_new = (1.0 / n) / (k.T @ alpha)
        if step % 10 == 0:
            err = np.nansum(np.abs(beta / beta_new - 1.0))
        beta = beta_new
        step += 1
    return alpha[:, None] * k * beta[None, :]


def np_rownorm(a):
    return a / a.sum(1, keepdims=True)


def np_softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def np_lp(a_ab, a_ba, a_a, a_b, ya0, yb0, alpha=0.2):
    ya, yb = ya0.copy(), yb0.copy()
    old_a, old_b = ya0.copy(), yb0.copy()
    for _ in range(20):
        ya = (1 - alpha) * a_ab @ yb + alpha * ya0
        yb = (1 - alpha) * a_ba @ ya + alpha * yb0
        ya = 0.5 * a_a @ ya + 0.5 * ya
        yb = 0.5 * a_b @ yb + 0.5 * yb
        eps = max(np.abs(yb - old_b).sum() / old_b.sum(), np.abs(ya - old_a).sum() / old_a.sum())
        old_a, old_b = ya.copy(), yb.copy()
        if eps <= 1e-2:
            break
    return ya, yb


def np_mult(fr, fi, cr, ci, dr, di, alpha=0.2, temp=0.05, lam=25.0):
    y_r0 = np_softmax(fr @ cr.T / temp)
    y_i0 = np_softmax(fi @ ci.T / temp)
    y_ri0 = np.eye(len(ci))[np_sinkhorn(np_sqdist(fr, ci), lam).argmax(1)]
    y_ir0 = np.eye(len(cr))[np_sinkhorn(np_sqdist(fi, cr), lam).argmax(1)]
    t = np_sinkhorn(np_sqdist(fr, fi), lam)
    a_r, a_i = np_rownorm(1 - dr), np_rownorm(1 - di)
    a_ri, a_ir = np_rownorm(t), np_rownorm(t.T)
    y_i, y_ri = np_lp(a_ir, a_ri, a_i, a_r, y_i0, y_ri0, alpha)
    y_r, y_irc = np_lp(a_ri, a_ir, a_r, a_i, y_r0, y_ir0, alpha)
    return {"y_rgb": y_r, "y_ir": y_i, "y_rgb_cm": y_ri, "y_ir_cm": y_irc}


# ----------------------------------------------------------------------------- data
def _inputs(seed, eps=0.6, **kw):
    fr, fi, yr, yi = two_modality_features(seed, **kw)
    out = {}
    for name, f in (("rgb", fr), ("ir", fi)):
        sparse = jaccard_distance(f, 20, 6, output="sparse")
        dense = jaccard_distance(f, 20, 6, output="dense")
        labels = dbscan_labels(sparse, eps, 4)
        out[name] = (f, sparse, dense, labels)
    return out, yr.numpy(), yi.numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", ["sparse", "dense", "numpy", "scipy"])
def test_transfer_matches_numpy_reference(seed, layout):
    data, _, _ = _inputs(seed)
    (fr, sr, dr, lr), (fi, si, di, li) = data["rgb"], data["ir"]
    cr, ci = dbscan_centers(fr, lr), dbscan_centers(fi, li)
    dist = {"sparse": (sr, si), "dense": (dr, di), "numpy": (dr.numpy(), di.numpy()),
            "scipy": (sp.csr_matrix(dr.numpy() * (dr.numpy() < 1)), sp.csr_matrix(di.numpy() * (di.numpy() < 1)))}
    if layout == "scipy":  # a scipy graph omits its zeros too: only the diagonal carries d = 0
        dist["scipy"] = tuple(_scipy_from_torch(s) for s in (sr, si))
    out = mult_label_transfer(fr, fi, cr, ci, *dist[layout])
    ref = np_mult(fr.double().numpy(), fi.double().numpy(), cr.double().numpy(), ci.double().numpy(),
                  dr.double().numpy(), di.double().numpy())
    for key in ("y_rgb", "y_ir", "y_rgb_cm", "y_ir_cm"):
        assert out[key].dtype == torch.float32
        np.testing.assert_allclose(out[key].numpy(), ref[key], atol=1e-4, err_msg=key)
    for key, ykey in (("labels_rgb", "y_rgb"), ("labels_ir", "y_ir"), ("rgb_in_ir", "y_rgb_cm"),
                      ("ir_in_rgb", "y_ir_cm")):
        y = ref[ykey]
        top2 = np.sort(y, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-4  # rows whose argmax is not a near tie
        assert clear.mean() > 0.9
        np.testing.assert_array_equal(out[key][clear], y.argmax(1)[clear], err_msg=key)
        assert out[key].dtype == np.int64


def _scipy_from_torch(csr):
    return sp.csr_matrix((csr.values().numpy(), csr.col_indices().numpy(), csr.crow_indices().numpy()),
                         shape=tuple(csr.shape))


def test_transfer_recovers_identities_across_a_modality_gap():
    data, yr, yi = _inputs(6, n_visible=200, n_infrared=160, ids=12)
    (fr, sr, _, lr), (fi, si, _, li) = data["rgb"], data["ir"]
    out = mult_label_transfer(fr, fi, dbscan_centers(fr, lr), dbscan_centers(fi, li), sr, si)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(yr, out["labels_rgb"]) > 0.95
    assert adjusted_rand_score(yi, out["labels_ir"]) > 0.95
    # RGB samples in the IR space agree with the IR samples of the same person
    ir_label_of_pid = {p: np.bincount(out["labels_ir"][yi == p]).argmax() for p in np.unique(yi)}
    agree = np.mean([out["rgb_in_ir"][i] == ir_label_of_pid[p] for i, p in enumerate(yr)])
    assert agree > 0.95
    assert 1 <= out["iterations"]["ir_space"] <= 20


def test_knn_cross_affinity_close_to_dense_on_separated_data():
    data, yr, yi = _inputs(3)
    (fr, sr, _, lr), (fi, si, _, li) = data["rgb"], data["ir"]
    cr, ci = dbscan_centers(fr, lr), dbscan_centers(fi, li)
    dense = mult_label_transfer(fr, fi, cr, ci, sr, si)
    knn = mult_label_transfer(fr, fi, cr, ci, sr, si, cross_affinity="knn", cross_k=40)
    assert knn["y_rgb"].shape == dense["y_rgb"].shape
    for key in ("labels_rgb", "labels_ir", "rgb_in_ir", "ir_in_rgb"):
        assert np.mean(knn[key] == dense[key]) > 0.97, key


def test_knn_affinity_is_the_gaussian_knn_graph():
    fr, fi, _, _ = two_modality_features(4, n_visible=60, n_infrared=50)
    a_ri, a_ir, steps = heterogeneous_affinity(fr, fi, mode="knn", k=5)
    assert steps == 0 and a_ri.layout == torch.sparse_csr and a_ri.shape == (60, 50) and a_ir.shape == (50, 60)
    d = np_sqdist(fr.double().numpy(), fi.double().numpy())
    for aff, dist in ((a_ri, d), (a_ir, d.T)):
        expected = np.zeros_like(dist)
        for i, row in enumerate(dist):
            near = np.argsort(row, kind="stable")[:5]
            expected[i, near] = np.exp(-25.0 * row[near])
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(aff.to_dense().numpy(), expected, atol=2e-5)  # float32 d^2, times 25


def test_sinkhorn_marginals():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(70, 40, generator=g) * 0.2
    plan = sinkhorn_plan(cost, lam=25.0, max_iter=5000, tol=1e-10)
    np.testing.assert_allclose(plan.sum(1).numpy(), 1 / 70, rtol=1e-6)
    np.testing.assert_allclose(plan.sum(0).numpy(), 1 / 40, rtol=1e-9)  # exact after the beta update
    # MULT's loose rule (err <= 0.1, checked every 10 steps): columns exact, rows approximately
    kernel, alpha, beta, steps = sinkhorn_knopp(cost)
    loose = alpha[:, None] * kernel * beta[None, :]
    np.testing.assert_allclose(loose.sum(0).numpy(), 1 / 40, rtol=1e-9)
    assert np.abs(loose.sum(1).numpy() * 70 - 1).max() < 0.1
    assert steps % 10 == 1 or steps == 500
    np.testing.assert_allclose(loose.numpy(), np_sinkhorn(cost.double().numpy()), rtol=1e-9, atol=1e-300)


def test_sinkhorn_far_rows_do_not_underflow():
    cost = torch.tensor([[0.0, 0.1], [4.0, 4.2], [30.0, 30.5]])  # exp(-25 * 30) underflows in float64
    plan = sinkhorn_plan(cost, max_iter=2000, tol=1e-12)
    assert torch.isfinite(plan).all()
    np.testing.assert_allclose(plan.sum(1).numpy(), 1 / 3, rtol=1e-6)


def test_soft_labels_beta_step():
    y = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    out = mult_soft_labels(y, beta=0.7)
    expected = torch.tensor([[0.06, 0.85, 0.09], [0.88, 0.09, 0.03]])
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="beta"):
        mult_soft_labels(y, beta=1.5)


def test_dbscan_centers_are_raw_means():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    c = dbscan_centers(f, np.array([0, 0, 1, -1]))
    torch.testing.assert_close(c, torch.tensor([[0.5, 0.5], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="outlier"):
        dbscan_centers(f, np.array([-1, -1, -1, -1]))


def test_bad_inputs_name_the_argument():
    data, _, _ = _inputs(0)
    (fr, sr, _, lr), (fi, si, _, li) = data["rgb"], data["ir"]
    cr, ci = dbscan_centers(fr, lr), dbscan_centers(fi, li)
    with pytest.raises(ValueError, match="dist_ir"):
        mult_label_transfer(fr, fi, cr, ci, sr, sr)
    with pytest.raises(ValueError, match="features_ir contains NaN"):
        mult_label_transfer(fr, fi * float("nan"), cr, ci, sr, si)
    with pytest.raises(ValueError, match="same width"):
        mult_label_transfer(fr, fi, cr[:, :5], ci, sr, si)
    with pytest.raises(ValueError, match="cross_affinity"):
        mult_label_transfer(fr, fi, cr, ci, sr, si, cross_affinity="sparse")
    with pytest.raises(TypeError, match="dist_rgb"):
        mult_label_transfer(fr, fi, cr, ci, [[0.0]], si)


@pytest.mark.parametrize("anchor", ["infrared", "visible"])
def test_mult_association_for_dmdl(anchor):
    from dmdl.pseudo_labels import associate

    data, yr, yi = _inputs(6, n_visible=200, n_infrared=160, ids=12)
    (fr, sr, _, lr), (fi, si, _, li) = data["rgb"], data["ir"]
    lr, li = lr.copy(), li.copy()
    lr[:7] = -1  # DBSCAN outliers stay outliers
    li[-5:] = -1
    uv, ui, k = associate("mult", fr, lr, fi, li, anchor, dist_visible=sr, dist_infrared=si)
    out = mult_label_transfer(fr, fi, dbscan_centers(fr, lr), dbscan_centers(fi, li), sr, si)
    raw_v, raw_i = (out["rgb_in_ir"], out["labels_ir"]) if anchor == "infrared" else (out["labels_rgb"],
                                                                                         out["ir_in_rgb"])
    assert (uv[:7] == -1).all() and (ui[-5:] == -1).all()
    assert (uv[7:] >= 0).all() and (ui[:-5] >= 0).all()
    # the same partition as the transfer's labels, renumbered 0..K-1 with every id used
    both, raw = np.concatenate([uv, ui]), np.concatenate([raw_v, raw_i])
    keep = both >= 0
    assert set(both[keep]) == set(range(k))
    pairs = set(zip(both[keep].tolist(), raw[keep].tolist()))
    assert len(pairs) == k == len(set(raw[keep]))
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(np.concatenate([yr, yi])[keep], both[keep]) > 0.95
    with pytest.raises(ValueError, match="dist_visible"):
        associate("mult", fr, lr, fi, li, anchor)
