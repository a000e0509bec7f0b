"""GMM label certainty (docs/dmdl.md#A4.3, #A5.4)."""

import sys
import warnings

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from dmdl.pseudo_labels import certainty

_MOD = sys.modules["dmdl.pseudo_labels.certainty"]  # the attribute is shadowed by the function


def _reference_w(values):
    """Independent fit: 2-GMM (random_state=0), posterior of the smaller-mean component."""
    x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, random_state=0).fit(x)
    return gmm.predict_proba(x)[:, np.argmin(gmm.means_.ravel())]


def _minmax(loss):
    return (loss - loss.min()) / (loss.max() - loss.min())


# cluster 0: clearly bimodal (4 confident, 3 unconfident); cluster 1: spread; cluster 2: singleton
P = np.array([0.90, 0.92, 0.88, 0.91, 0.10, 0.12, 0.08,
              0.50, 0.55, 0.60, 0.20, 0.70,
              0.33,
              0.40, 0.02])
Y = np.array([0, 0, 0, 0, 0, 0, 0,
              1, 1, 1, 1, 1,
              2,
              -1, -1])


def test_per_cluster_matches_independent_gmm_and_separates_modes():
    w = certainty(P, Y)
    assert w.shape == (15,) and w.dtype == np.float64
    loss = _minmax(-P)  # over all samples, outliers included
    for k in (0, 1):
        idx = np.flatnonzero(Y == k)
        np.testing.assert_allclose(w[idx], _reference_w(loss[idx]), rtol=1e-6, atol=1e-9)
    # high probability = low loss -> w ~ 1; low probability -> w ~ 0
    assert np.all(w[:4] > 0.99) and np.all(w[4:7] < 0.01)
    assert w[12] == 1.0  # singleton cluster
    np.testing.assert_array_equal(w[13:], 1.0)  # outliers
    assert np.all((w >= 0) & (w <= 1))


def test_cluster_with_identical_values_gets_one_without_warnings():
    p = np.array([0.9, 0.1, 0.5, 0.5, 0.5, 0.5])
    y = np.array([0, 0, 1, 1, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = certainty(p, y)
        wg = certainty(np.array([0.9, 0.3, 0.3, 0.3]), np.array([0, 1, 1, 1]),
                       per_cluster=True)
    np.testing.assert_array_equal(w[2:], 1.0)
    assert w[0] > 0.99 and w[1] < 0.01  # two points: one per component
    assert wg[0] == 1.0 and np.all(wg[1:] == 1.0)  # singleton / identical-valued clusters -> 1


def test_all_values_equal_and_empty():
    np.testing.assert_array_equal(certainty(np.full(5, 0.3), np.array([0, 0, 1, 1, -1])), 1.0)
    np.testing.assert_array_equal(certainty(np.full(4, 0.7), np.zeros(4, dtype=int), per_cluster=False), 1.0)
    assert certainty(np.zeros(0), np.zeros(0, dtype=int)).shape == (0,)


def test_outliers_enter_the_normalisation_range(monkeypatch):
    # A tight cluster; the outlier's p widens the min-max range and so changes the fitted values.
    p = np.array([0.500, 0.501, 0.503, 0.506, 0.510, 0.511, 0.512, 0.0])
    y = np.array([0, 0, 0, 0, 0, 0, 0, -1])
    seen = []

    class Recording(GaussianMixture):
        def fit(self, X, y=None):
            seen.append(np.asarray(X).ravel().copy())
            return super().fit(X, y)

    monkeypatch.setattr(_MOD, "GaussianMixture", Recording)
    w = certainty(p, y)
    # the values handed to the GMM are -p min-max normalised over all 8 samples
    np.testing.assert_allclose(seen[0], ((-p - (-0.512)) / 0.512)[:7], atol=1e-12)
    monkeypatch.undo()
    with_outlier = _reference_w(_minmax(-p)[:7])
    without_outlier = _reference_w(_minmax(-p[:7]))
    np.testing.assert_allclose(w[:7], with_outlier, rtol=1e-6, atol=1e-9)
    assert not np.allclose(w[:7], without_outlier, rtol=0, atol=1e-4)
    # changing only the outlier's probability changes the cluster's certainties
    p2 = p.copy()
    p2[-1] = 0.45
    assert not np.allclose(certainty(p2, y)[:7], w[:7], rtol=0, atol=1e-4)


def test_global_mode_vs_per_cluster_mode():
    # cluster 0 all confident, cluster 1 all unconfident, each with some spread
    p = np.array([0.90, 0.93, 0.95, 0.97, 0.10, 0.12, 0.15, 0.18, 0.99])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1])
    wg = certainty(p, y, per_cluster=False)
    loss = _minmax(-p)
    keep = y >= 0
    # the global GMM is fitted on every sample, the outlier included (the reference fits all rows)
    np.testing.assert_allclose(wg[keep], _reference_w(loss)[keep], rtol=1e-6, atol=1e-9)
    assert wg[-1] == 1.0
    assert np.all(wg[:4] > 0.99) and np.all(wg[4:8] < 0.01)  # global: whole cluster 1 is uncertain
    wc = certainty(p, y, per_cluster=True)
    for k in (0, 1):
        idx = np.flatnonzero(y == k)
        np.testing.assert_allclose(wc[idx], _reference_w(loss[idx]), rtol=1e-6, atol=1e-9)
    assert wc[4:8].max() > 0.5  # per cluster: cluster 1's most confident members are "clean"
    assert not np.allclose(wc, wg)


@pytest.mark.parametrize(
    "p, y, match",
    [
        (np.array([0.1, 0.2]), np.array([0, 0, 1]), "same length"),
        (np.array([0.1, 1.2]), np.array([0, 0]), "prob_of_label must lie in"),
        (np.array([-0.1, 0.2]), np.array([0, 0]), "prob_of_label must lie in"),
        (np.array([np.nan, 0.2]), np.array([0, 0]), "prob_of_label contains NaN"),
        (np.ones((2, 2)) * 0.5, np.array([0, 0]), "prob_of_label must be 1-D"),
        (np.array([0.1, 0.2]), np.array([[0, 0]]), "labels must be 1-D"),
        (np.array([0.1, 0.2]), np.array([0.0, 1.0]), "labels must be integers"),
        (np.array([0.1, 0.2]), np.array([0, -2]), "labels must be >= -1"),
    ],
)
def test_errors_name_the_argument(p, y, match):
    with pytest.raises(ValueError, match=match):
        certainty(p, y)


def test_log_loss_variant_is_the_papers_minus_log_p():
    import numpy as np

    from dmdl.pseudo_labels import certainty as certainty_fn

    p = np.array([0.9, 0.85, 0.8, 0.1, 0.05, 0.02, 0.95, 0.5])
    y = np.zeros(8, dtype=np.int64)
    l = -np.log(p)
    l = (l - l.min()) / (l.max() - l.min())
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=2, random_state=0).fit(l.reshape(-1, 1))
    expected = gmm.predict_proba(l.reshape(-1, 1))[:, int(np.argmin(gmm.means_.ravel()))]
    np.testing.assert_allclose(certainty_fn(p, y, loss="log"), expected, atol=1e-12)
    with pytest.raises(ValueError, match="loss"):
        certainty_fn(p, y, loss="nll")
