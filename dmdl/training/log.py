"""What a run reports: the per-epoch CSV row and TensorBoard scalars, and the printed lines.

Progress bars (:func:`dmdl.progress.progress`) are drawn only on a terminal: a run whose output
goes to a file (a cluster job's log) gets the one line per epoch that :class:`EpochLog` prints.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dmdl.rundir import LOG_NAME, TENSORBOARD_DIR

# one row per epoch; the unified-label columns stay empty in stage 1
LOG_FIELDS = (
    "stage", "epoch", "lr",
    "clusters_visible", "outliers_visible", "ari_visible",
    "clusters_infrared", "outliers_infrared", "ari_infrared",
    "unified_ids", "ari_unified", "matching", "certainty_visible", "certainty_infrared",
    "loss", "loss_id", "loss_cai", "loss_cross", "loss_triplet", "loss_mmd",
    "loss_ms", "loss_ma", "loss_oclr", "seconds_transfer", "transfer_iterations",
    "seconds_features", "seconds_clustering", "seconds_training", "seconds_communication", "seconds_waiting",
    "seconds", "test_mAP",
)


def fmt_seconds(sec: float) -> str:
    """``h:mm:ss``."""
    sec = int(round(sec))
    return f"{sec // 3600}:{sec % 3600 // 60:02d}:{sec % 60:02d}"


class EpochLog:
    """The per-epoch record of a run directory: ``log.csv`` (columns :data:`LOG_FIELDS`) and
    TensorBoard scalars (``stage<S>/<field>`` at the global epoch), plus the printed line.

    Args:
        out: the run directory.
        stage1_epochs: to number stage-2 epochs globally in TensorBoard.
        tensorboard: write TensorBoard event files (skipped, with a note, if tensorboard is broken).
        write: write the files at all (False: print only; a distributed run's ranks but 0).
    """

    def __init__(self, out: Path, stage1_epochs: int, tensorboard: bool = True, write: bool = True):
        self.path = Path(out) / LOG_NAME
        self.stage1_epochs = stage1_epochs
        self.writer = None
        self.write_files = write
        if tensorboard and write:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(out) / TENSORBOARD_DIR))
            except ImportError:  # tensorboard is an install requirement; keep training if it is broken
                print("tensorboard is not importable: logging to log.csv only")

    def write(self, stats: dict) -> None:
        """Print one epoch's fields and append them to the CSV and TensorBoard."""
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()), flush=True)
        if not self.write_files:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_FIELDS, restval="", extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(stats)
        if self.writer is not None:
            step = (0 if stats["stage"] == 1 else self.stage1_epochs) + stats["epoch"]
            for k, v in stats.items():
                if k not in ("stage", "epoch") and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"stage{stats['stage']}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_results(path: Path, results: dict, config: dict) -> None:
    """A results JSON (``results.json``, ``evaluation_*.json``): metrics in percent, plus the
    config that produced them."""
    Path(path).write_text(json.dumps({"units": "percent", "results": results, "config": config}, indent=2))


__all__ = ["LOG_FIELDS", "EpochLog", "fmt_seconds", "write_results"]
