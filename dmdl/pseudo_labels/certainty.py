"""Label certainty by a two-component GMM on the per-sample loss (docs/dmdl.md#A4.3, #A5.4).

DMDL's CBT label level (paper Eqs. 8-13) smooths a sample's pseudo-label by
w_i * onehot(y_i) + (1 - w_i) * P(Y | augmented view); w_i is the posterior of
the *low-loss* component of a 2-component Gaussian mixture fitted on the
per-sample loss. This module computes w from the probability each sample gives
to its own label (the caller builds p_i = softmax(f_i . M^T / 0.05)[y_i]).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture


def _low_mean_posterior(values: np.ndarray) -> np.ndarray | None:
    """Posterior of the smaller-mean component of a 2-GMM on 1-D ``values``.

    Returns None when the mixture cannot be fitted meaningfully: fewer than two
    distinct values (two components cannot be separated), a fit error, or a
    non-finite posterior. EM that stops at ``max_iter`` without converging
    (sklearn's ConvergenceWarning) is used as is, like the reference; the
    warning is silenced.
    """
    if values.shape[0] < 2 or np.unique(values).shape[0] < 2:
        return None
    x = values.reshape(-1, 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gmm = GaussianMixture(n_components=2, random_state=0).fit(x)
            post = gmm.predict_proba(x)[:, int(np.argmin(gmm.means_.ravel()))]
    except (ValueError, FloatingPointError, np.linalg.LinAlgError):
        return None
    if not np.all(np.isfinite(post)):
        return None
    return post


def certainty(prob_of_label, labels, per_cluster: bool = True, *, loss: str = "prob") -> np.ndarray:
    """Per-sample label certainty w in [0, 1] (DMDL, docs/dmdl.md#A4.3, #A5.4).

    Rule (the released code, docs/decisions.md#paper-vs-code):

    1. loss l_i = -p_i, the negative *probability* of the sample's own label
       (the paper's Eq. 10 writes -log p; the code uses -p).
    2. Min-max normalise l over **all** given samples, outliers (label -1)
       included: in the reference they index column -1 of the probability
       matrix and only widen the normalisation range. If max == min every
       sample gets w = 1.
    3. ``per_cluster=True`` (SYSU, LLCM, stage 1 and stage 2): for every cluster
       with >= 2 members fit ``GaussianMixture(n_components=2, random_state=0)``
       on its normalised losses (1-D); w_i = posterior of the component with the
       smaller mean (the low-loss, high-probability one). Clusters with <= 1
       member get w = 1.
       ``per_cluster=False`` (RegDB): one global GMM fitted on all samples,
       outliers included (the reference fits every row); its posterior is
       returned for the non-outliers.
    4. Degenerate fits give w = 1 for the samples concerned: a cluster (or, in
       global mode, the whole set) whose normalised losses are all
       identical, a GMM fit that raises, or a non-finite posterior.
       Non-convergence of EM (sklearn ConvergenceWarning) is silenced and the
       fitted mixture is used, as in the reference.
    5. Outliers (label -1) get w = 1.0. They are dropped from training, so the
       value is never used; 1.0 means "no smoothing" should a caller keep them.

    Args:
        prob_of_label: (N,) float array (or anything ``np.asarray`` accepts),
            p_i in [0, 1], the probability of sample i's own pseudo-label.
        labels: (N,) int array, cluster ids >= 0, -1 for outliers. Ids need
            not be contiguous.
        per_cluster: one GMM per cluster (True) or one global GMM (False).
        loss: (keyword) ``"prob"`` (default, the code's l = -p) or ``"log"`` (the
            paper's Eq. 10, l = -log p, with p clipped at 1e-12).

    Returns:
        (N,) float64 array of certainties in [0, 1].

    Raises:
        ValueError: ``prob_of_label`` not 1-D, NaN/inf or outside [0, 1];
            ``labels`` not 1-D integer, with a value < -1, or not of the same
            length as ``prob_of_label``.

    Source: DMDL docs/README.md#code-d stage-1/stage-2 trainers, GMM certainty (docs/dmdl.md#A4.3, #A5.4, docs/decisions.md#D3).
    """
    p = np.asarray(prob_of_label, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 1:
        raise ValueError(f"prob_of_label must be 1-D (N,), got shape {p.shape}")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {y.shape}")
    if y.shape[0] != p.shape[0]:
        raise ValueError(
            f"prob_of_label and labels must have the same length, got {p.shape[0]} and {y.shape[0]}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if not np.all(np.isfinite(p)):
        raise ValueError("prob_of_label contains NaN or inf")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(f"prob_of_label must lie in [0, 1], got range [{p.min()}, {p.max()}]")
    y = y.astype(np.int64)
    if y.size and y.min() < -1:
        raise ValueError(f"labels must be >= -1 (-1 = outlier), got {y.min()}")

    if loss not in ("prob", "log"):
        raise ValueError(f"loss must be 'prob' or 'log', got {loss!r}")
    n = p.shape[0]
    w = np.ones(n, dtype=np.float64)
    if n == 0:
        return w
    loss = -p if loss == "prob" else -np.log(np.clip(p, 1e-12, 1.0))
    lo, hi = loss.min(), loss.max()
    if hi == lo:
        return w
    loss = (loss - lo) / (hi - lo)

    if not per_cluster:  # one GMM over ALL samples, outliers included, as the reference fits it
        idx = np.flatnonzero(y >= 0)
        post = _low_mean_posterior(loss)
        if post is not None:
            w[idx] = post[idx]
        return w

    keep = np.flatnonzero(y >= 0)
    order = keep[np.argsort(y[keep], kind="stable")]
    _, starts, counts = np.unique(y[order], return_index=True, return_counts=True)
    for start, count in zip(starts, counts):
        if count < 2:
            continue
        idx = order[start:start + count]
        post = _low_mean_posterior(loss[idx])
        if post is not None:
            w[idx] = post
    return w
