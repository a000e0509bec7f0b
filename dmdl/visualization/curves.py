"""CMC curves and training curves as PNG files (matplotlib, Agg canvas: no display needed).

- :func:`plot_cmc`: Rank-1..20 CMC curves of the protocol's settings (both directions), with
  the re-ranked ones dashed when given; ``FIGSIZE_CMC`` x ``DPI`` pixels.
- :func:`plot_training_curves`: the curves of a run directory's ``log.csv`` (losses, clusters
  and unified identities, DBSCAN outliers, pseudo-label ARI per modality and unified, learning
  rate, seconds per epoch and test mAP when logged); ``FIGSIZE_TRAINING`` x ``DPI`` pixels.
- :func:`redraw_run`: both again for a run directory (``dmdl plot``).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from dmdl.errors import InputError

DPI = 100
FIGSIZE_CMC = (6.4, 4.8)  # inches: 640 x 480 pixels
FIGSIZE_TRAINING = (15.0, 8.0)  # 1500 x 800
TRAINING_CURVES_NAME = "training_curves.png"
# the protocol names of dmdl.evaluation.runner, repeated here: this module imports neither torch nor
# the training code, so that the engine can call plot_training_curves without an import cycle
SETTING_NAMES = {"v2t": "Visible->Thermal", "t2v": "Thermal->Visible", "all": "All-search",
                 "indoor": "Indoor-search", "ir2vis": "IR->VIS", "vis2ir": "VIS->IR"}


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def plot_cmc(cmc: Mapping[str, Sequence[float]], out, title: str = "CMC",
             reranked: Optional[Mapping[str, Sequence[float]]] = None) -> Path:
    """Draw CMC curves to ``out`` (PNG, 640 x 480).

    Args:
        cmc: ``{setting: [rank-1, ..., rank-K]}`` as fractions in [0, 1] (``cmc[k - 1]`` is
            Rank-k, as the metric functions return); settings ``v2t``, ``t2v``, ``all``, ... are
            labelled with their protocol names.
        reranked: the same after k-reciprocal re-ranking (dashed, same colours).

    Returns:
        ``out`` as a Path.

    Raises:
        InputError: no curve, or an empty one.
    """
    if not cmc or any(len(v) == 0 for v in cmc.values()):
        raise InputError("plot_cmc: no CMC curve to draw")
    fig = _figure(FIGSIZE_CMC)
    ax = fig.add_subplot(1, 1, 1)
    for i, (setting, curve) in enumerate(cmc.items()):
        color = f"C{i}"
        ranks = range(1, len(curve) + 1)
        name = SETTING_NAMES.get(setting, setting)
        ax.plot(ranks, [100 * v for v in curve], color=color, marker="o", markersize=3,
                label=f"{name} (Rank-1 {100 * curve[0]:.1f}%)")
        if reranked and setting in reranked:
            rr = reranked[setting]
            ax.plot(range(1, len(rr) + 1), [100 * v for v in rr], color=color, linestyle="--", marker="x",
                    markersize=3, label=f"{name} re-ranked (Rank-1 {100 * rr[0]:.1f}%)")
    ax.set_xlabel("Rank k")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(title)
    last = max(len(v) for v in cmc.values())
    ax.set_xlim(1, last)
    ax.set_xticks(sorted({1, last} | set(range(5, last + 1, 5))))
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    out = Path(out)
    fig.savefig(out, format="png")
    return out


def _read_log(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"no training log: {path} does not exist")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "stage" not in rows[0] or "epoch" not in rows[0]:
        raise InputError(f"{path} holds no epoch row (or is not a dmdl log.csv: no stage/epoch columns)")
    return rows


def _column(rows, key) -> List[float]:
    out = []
    for r in rows:
        v = (r.get(key) or "").strip()
        try:
            out.append(float(v) if v else math.nan)
        except ValueError:
            out.append(math.nan)
    return out


def _panel(ax, x, rows, keys: Sequence[tuple[str, str]], title: str, ylabel: str, boundary) -> None:
    drawn = 0
    for key, label in keys:
        y = _column(rows, key)
        if all(math.isnan(v) for v in y):
            continue
        ax.plot(x, y, marker="o", markersize=3, label=label)
        drawn += 1
    if boundary is not None:
        ax.axvline(boundary, color="grey", linestyle=":", linewidth=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel("epoch (stage 1, then stage 2)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize="x-small")
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")


def plot_training_curves(run_dir) -> List[Path]:
    """Draw the training curves of ``run_dir/log.csv`` to ``run_dir/training_curves.png``.

    One figure (1500 x 800) with six panels over the epochs of both stages (a dotted line
    where stage 2 starts): losses (``loss`` and every ``loss_*`` column logged), clusters per
    modality and unified identities, DBSCAN outliers per modality, pseudo-label ARI (visible,
    infrared, unified), learning rate, and seconds per epoch with the test mAP when logged.

    Returns:
        The PNG files written (one).

    Raises:
        FileNotFoundError: no ``log.csv`` in ``run_dir``.
        InputError: a ``log.csv`` with no epoch row.
    """
    run_dir = Path(run_dir)
    rows = _read_log(run_dir / "log.csv")
    x = list(range(1, len(rows) + 1))
    stages = [r["stage"] for r in rows]
    boundary = stages.index("2") + 0.5 if "1" in stages and "2" in stages else None
    losses = [("loss", "loss")] + [(k, k[5:]) for k in rows[0] if k.startswith("loss_")]
    fig = _figure(FIGSIZE_TRAINING)
    axes = [fig.add_subplot(2, 3, i) for i in range(1, 7)]
    _panel(axes[0], x, rows, losses, "losses", "loss", boundary)
    _panel(axes[1], x, rows, [("clusters_visible", "visible"), ("clusters_infrared", "infrared"),
                              ("unified_ids", "unified")], "clusters / identities", "count", boundary)
    _panel(axes[2], x, rows, [("outliers_visible", "visible"), ("outliers_infrared", "infrared")],
           "DBSCAN outliers", "images", boundary)
    _panel(axes[3], x, rows, [("ari_visible", "visible"), ("ari_infrared", "infrared"),
                              ("ari_unified", "unified")], "pseudo-label ARI", "adjusted Rand index", boundary)
    _panel(axes[4], x, rows, [("lr", "learning rate")], "learning rate", "lr", boundary)
    _panel(axes[5], x, rows, [("seconds", "seconds / epoch"), ("test_mAP", "test mAP (%)")],
           "time and test mAP", "s / %", boundary)
    fig.suptitle(f"training curves: {run_dir.name}")
    fig.tight_layout()
    out = run_dir / TRAINING_CURVES_NAME
    fig.savefig(out, format="png")
    return [out]


def redraw_run(run_dir) -> List[Path]:
    """``dmdl plot RUN_DIR``: the training curves (when ``log.csv`` exists) and the CMC curves of
    every ``evaluation_*.json`` holding them (written by ``dmdl evaluate``).

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
        InputError: nothing to draw (no ``log.csv``, no evaluation with CMC curves).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no such run directory: {run_dir}")
    out: List[Path] = []
    if (run_dir / "log.csv").is_file():
        out += plot_training_curves(run_dir)
    for ev in sorted(run_dir.glob("evaluation_*.json")):
        try:
            data = json.loads(ev.read_text())
        except ValueError as exc:
            raise InputError(f"{ev} is not valid JSON ({exc})") from None
        res = data.get("results", {}) if isinstance(data, dict) else {}
        if res.get("cmc"):
            out.append(plot_cmc(res["cmc"], ev.with_name("cmc_" + ev.stem[len("evaluation_"):] + ".png"),
                                title=f"CMC: {ev.stem[len('evaluation_'):]}", reranked=res.get("cmc_reranked")))
    if not out:
        raise InputError(f"{run_dir}: nothing to draw (no log.csv, no evaluation_*.json with CMC curves)")
    return out
