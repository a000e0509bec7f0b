"""t-SNE of test features, coloured by modality and by identity (scikit-learn's TSNE, matplotlib).

van der Maaten and Hinton, "Visualizing Data using t-SNE", JMLR 2008. The embedding is
seeded (``random_state``) and initialised with PCA, so a picture is reproducible on one machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dmdl.errors import InputError

from .curves import DPI, _figure

FIGSIZE_TSNE = (12.0, 6.0)  # 1200 x 600 pixels
MIN_POINTS = 5
MODALITY_STYLE = {"visible": ("C0", "o"), "infrared": ("C3", "^")}


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, 2) t-SNE coordinates (perplexity ``min(30, (N - 1) / 3)``, PCA
    initialisation, ``random_state=seed``).

    Raises:
        InputError: fewer than 5 points, or not (N, D).
    """
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < MIN_POINTS:
        raise InputError(f"t-SNE needs at least {MIN_POINTS} feature rows, got shape {x.shape}")
    perplexity = float(min(30.0, (x.shape[0] - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def plot_tsne(features: np.ndarray, modalities: Sequence[str], identities: Sequence[Optional[int]], out,
              title: str = "t-SNE of the test features", max_ids: int = 20, seed: int = 0) -> Path:
    """Draw a t-SNE of ``features`` to ``out`` (PNG, 1200 x 600): left, the points coloured by
    modality; right, the first ``max_ids`` identities (sorted) each in its own colour (marker:
    o visible, ^ infrared), the others grey.

    Args:
        features: (N, D); modalities: N of ``"visible"`` / ``"infrared"``; identities: N ints
            (None: unknown).

    Raises:
        InputError: lengths differ, fewer than 5 points.
    """
    x = np.asarray(features)
    if not len(modalities) == len(identities) == len(x):
        raise InputError(f"t-SNE: {len(x)} features, {len(modalities)} modalities, {len(identities)} identities")
    xy = tsne_embedding(x, seed)
    mods = np.array([str(m) for m in modalities])
    ids = np.array([-1 if i is None else int(i) for i in identities])
    shown = sorted(set(ids[ids >= 0].tolist()))[:max_ids]
    fig = _figure(FIGSIZE_TSNE)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    present = [m for m in MODALITY_STYLE if m in set(mods.tolist())] + sorted(set(mods.tolist()) - set(MODALITY_STYLE))
    for m in present:
        color, marker = MODALITY_STYLE.get(m, ("C7", "s"))
        sel = mods == m
        left.scatter(xy[sel, 0], xy[sel, 1], s=10, c=color, marker=marker, label=f"{m} ({int(sel.sum())})", alpha=0.7)
    left.set_title("by modality")
    left.legend(fontsize="small")
    rest = ~np.isin(ids, shown)
    right.scatter(xy[rest, 0], xy[rest, 1], s=6, c="lightgrey", marker=".")
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    for k, pid in enumerate(shown):
        label = f"id {pid}"
        for m in present:
            sel = (ids == pid) & (mods == m)
            if sel.any():
                right.scatter(xy[sel, 0], xy[sel, 1], s=18, color=cmap(k % 20),
                              marker=MODALITY_STYLE.get(m, ("C7", "s"))[1], label=label)
                label = None
    right.set_title(f"by identity (first {len(shown)}; o visible, ^ infrared)")
    if shown and len(shown) <= 20:
        right.legend(fontsize="xx-small", ncol=2, loc="best")
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    out = Path(out)
    fig.savefig(out, format="png", dpi=DPI)
    return out
