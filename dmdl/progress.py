"""Progress bars only where someone watches: tqdm on a terminal, nothing in a file.

A run whose output goes to a file (a cluster job's log) would otherwise fill it with thousands of
progress-bar redraws; there the per-epoch lines of :class:`dmdl.training.log.EpochLog` say enough.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable


def progress(iterable: Iterable, total: int | None = None, desc: str = ""):
    """A tqdm progress bar over ``iterable`` on a terminal (stderr); the bare iterable otherwise
    (also in a distributed run's ranks other than 0, which set ``DMDL_NO_PROGRESS``)."""
    if not sys.stderr.isatty() or os.environ.get("DMDL_NO_PROGRESS"):
        return _Quiet(iterable)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


class _Quiet:
    """An iterable with tqdm's ``set_postfix`` as a no-op (no terminal to draw on)."""

    def __init__(self, iterable: Iterable):
        self._it = iterable

    def __iter__(self):
        return iter(self._it)

    def set_postfix(self, **_kw) -> None:
        pass


__all__ = ["progress"]
