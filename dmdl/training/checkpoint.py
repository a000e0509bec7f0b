"""Checkpoints: atomic save, checked load, what ``--resume`` points to, the RNG states, and the
log rows a resumed run drops.

A checkpoint (``checkpoint.pth`` of a run directory, :mod:`dmdl.rundir`) is a dict with at least
``model``, ``config`` (flat keys), ``stage`` and ``epoch``; one written after an epoch also holds
``optimizer``, ``scheduler``, ``scaler``, ``rng`` (Python, NumPy, torch and CUDA generator states),
``results``, ``workers`` and the method's state (``pseudo_labels``, ``memories``, ...).
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dmdl.errors import CheckpointError
from dmdl.rundir import CHECKPOINT_NAME

#: the entries every dmdl checkpoint has
CHECKPOINT_KEYS = ("model", "config", "stage", "epoch")
#: the entries a checkpoint needs to resume a run
RESUME_KEYS = CHECKPOINT_KEYS + ("optimizer", "scheduler", "rng")


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, flushed to disk, then renamed over ``path``: a run
    killed at any moment leaves either the previous file or the new one, never half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu", need: Sequence[str] = CHECKPOINT_KEYS) -> dict:
    """Read a dmdl checkpoint (a run directory means its ``checkpoint.pth``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not a (complete) dmdl checkpoint; the message names it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        text = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}"
                              f"{': ' + text[:200] if text else ''}); was it written by dmdl train, "
                              "and completely?") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a dmdl checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in need if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a dmdl checkpoint: no {', '.join(repr(k) for k in missing)} "
                              f"entr{'y' if len(missing) == 1 else 'ies'}")
    return ckpt


def resolve_resume(resume: str | None) -> Path | None:
    """The checkpoint file ``resume`` points to, or None when it is a run directory without one
    yet (the run was stopped before its first epoch ended: start afresh).

    Raises:
        FileNotFoundError: neither a checkpoint file nor a directory.
    """
    if not resume:
        return None
    path = Path(resume)
    if path.is_dir():
        return path / CHECKPOINT_NAME if (path / CHECKPOINT_NAME).is_file() else None
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint file or run directory at {path}")
    return path


def rng_state() -> dict:
    """The Python, NumPy, torch and CUDA generator states (for :func:`set_rng_state`)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(rng: dict) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only with the same number of GPUs)."""
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"].cpu())
    if rng.get("cuda") is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def truncate_log(log_path: Path, stage: int, epoch: int, fields: Sequence[str]) -> None:
    """Drop the rows of ``log_path`` (a run's ``log.csv``) after ``(stage, epoch)``: written by the
    run that was stopped, and written again by the resumed one."""
    log_path = Path(log_path)
    if not log_path.is_file():
        return
    with open(log_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if (int(r["stage"]), int(r["epoch"])) <= (stage, epoch)]
    if len(keep) < len(rows):
        with open(log_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(fields), restval="", extrasaction="ignore")
            w.writeheader()
            w.writerows(keep)


def next_epoch(stage: int, epoch: int, epochs_in_stage: int) -> tuple[int, int]:
    """The (stage, epoch) after a checkpoint of ``(stage, epoch)``; ``(3, 0)`` after the last epoch."""
    return (stage, epoch + 1) if epoch + 1 < epochs_in_stage else (stage + 1, 0)


__all__ = ["CHECKPOINT_KEYS", "RESUME_KEYS", "atomic_save", "load_checkpoint", "resolve_resume", "rng_state",
           "set_rng_state", "truncate_log", "next_epoch"]
