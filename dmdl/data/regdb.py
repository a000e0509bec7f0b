"""Reader for RegDB (Dongguk DBPerson-Recog-DB1) in its standard raw layout.

Layout (docs/datasets.md#regdb-layout)::

    RegDB/
      Visible/<pid>/<gender>_<front|back>_v_<frame5>_<pid>.bmp
      Thermal/<pid>/<gender>_<front|back>_t_<frame5>_<pid>.bmp
      idx/train_visible_<t>.txt  train_thermal_<t>.txt
          test_visible_<t>.txt   test_thermal_<t>.txt        t = 1..10

Each idx line is ``<relative path> <label>``.  The label is the trial-local
training label (renumbered in order of first appearance); the reader keeps the
dataset pid, which it takes from the ``<pid>`` folder component and checks
against the ``_<pid>.bmp`` suffix of the file name.

This module also defines :class:`VIReIDDataset`, the small base class shared
by all readers of :mod:`dmdl.data` (split lists, per-camera test index,
summary).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

from dmdl.modalities import INFRARED, VISIBLE

from .records import ImageRecord, report, split_idx_line

__all__ = ["VIReIDDataset", "RegDB", "REGDB_TRIALS", "parse_regdb_line"]

#: Valid RegDB trial numbers.
REGDB_TRIALS = tuple(range(1, 11))

#: ``{(pid, camid): tuple of sorted absolute paths}``
CameraIndex = Dict[Tuple[int, int], Tuple[str, ...]]


def _ids(records: Iterable[ImageRecord]) -> List[int]:
    return sorted({r.pid for r in records})


def build_camera_index(records: Iterable[ImageRecord]) -> CameraIndex:
    """Group records by ``(pid, camid)``; paths sorted within each group.

    Groups are inserted in order of first appearance.
    """
    groups: Dict[Tuple[int, int], List[str]] = {}
    for r in records:
        groups.setdefault((r.pid, r.camid), []).append(r.path)
    return {k: tuple(sorted(v)) for k, v in groups.items()}


class VIReIDDataset:
    """Common interface of the dataset readers.

    Subclasses fill four lists of :class:`~dmdl.data.records.ImageRecord`:
    ``train_visible``, ``train_infrared``, ``test_visible``,
    ``test_infrared``, and two per-camera indexes of the test split,
    ``test_visible_index`` and ``test_infrared_index``
    (``{(pid, camid): sorted absolute paths}``) used by
    :mod:`dmdl.evaluation.protocols` for gallery sampling without touching
    the disk again.
    """

    name = "dataset"

    def __init__(self) -> None:
        self.train_visible: List[ImageRecord] = []
        self.train_infrared: List[ImageRecord] = []
        self.test_visible: List[ImageRecord] = []
        self.test_infrared: List[ImageRecord] = []
        self.test_visible_index: CameraIndex = {}
        self.test_infrared_index: CameraIndex = {}

    # -- derived views -------------------------------------------------
    @property
    def train_ids(self) -> List[int]:
        """Sorted pids of the training split (both modalities)."""
        return _ids(self.train_visible + self.train_infrared)

    @property
    def test_ids(self) -> List[int]:
        """Sorted pids of the test split (both modalities)."""
        return _ids(self.test_visible + self.test_infrared)

    @property
    def train(self) -> List[ImageRecord]:
        """All training records, visible first."""
        return self.train_visible + self.train_infrared

    def _describe(self) -> str:
        return f"root={str(getattr(self, 'root', ''))!r}"

    def summary(self) -> str:
        """Multi-line table of ids / images per split and modality."""
        rows = [
            ("train", self.train_ids, self.train_visible, self.train_infrared),
            ("test", self.test_ids, self.test_visible, self.test_infrared),
        ]
        lines = [f"{type(self).__name__}({self._describe()})",
                 "  split |   ids | visible | infrared"]
        for split, ids, vis, ir in rows:
            lines.append(f"  {split:<5} | {len(ids):5d} | {len(vis):7d} | {len(ir):8d}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._describe()}: "
            f"train {len(self.train_ids)} ids {len(self.train_visible)} vis/"
            f"{len(self.train_infrared)} ir, "
            f"test {len(self.test_ids)} ids {len(self.test_visible)} vis/"
            f"{len(self.test_infrared)} ir)"
        )


_REGDB_NAME = re.compile(r"^.*_(\d+)\.bmp$", re.IGNORECASE)
_REGDB_FOLDERS = {VISIBLE: ("Visible", 1), INFRARED: ("Thermal", 2)}


def parse_regdb_line(line: str, folder: str) -> Tuple[List[str], int, int]:
    """One RegDB idx line ``<folder>/<pid>/<name>_<pid>.bmp <label>`` -> (path parts, label, pid).

    ``folder`` is ``"Visible"`` or ``"Thermal"``; backslashes count as slashes.

    Raises:
        ValueError: why the line is malformed (the caller adds file and line number).
    """
    parts, label = split_idx_line(line)
    if len(parts) != 3 or parts[0] != folder:
        raise ValueError(f"path is not '{folder}/<pid>/<file>'")
    if not (parts[1].isascii() and parts[1].isdigit()):
        raise ValueError("pid folder is not a number")
    pid = int(parts[1])
    m = _REGDB_NAME.match(parts[2])
    if m is None:
        raise ValueError("file name does not end in '_<pid>.bmp'")
    if int(m.group(1)) != pid:
        raise ValueError(f"file-name pid {m.group(1)} != folder pid {parts[1]}")
    return parts, label, pid


class RegDB(VIReIDDataset):
    """RegDB reader for one trial (docs/datasets.md#regdb).

    Args:
        root: the ``RegDB`` folder (holding ``Visible/``, ``Thermal/``,
            ``idx/``).
        trial: split number, 1..10 (``idx/*_<trial>.txt``).

    Attributes:
        train_visible, train_infrared, test_visible, test_infrared: lists of
            :class:`ImageRecord` in idx-file order.  ``camid`` is 1 for
            visible and 2 for thermal (the AGW convention); ``modality`` is
            ``"visible"`` / ``"infrared"``.
        train_labels_visible, train_labels_infrared, test_labels_visible,
            test_labels_infrared: the label column of the idx files.

    Raises:
        ValueError: ``trial`` not in 1..10; a malformed idx line (message
            names the file and the 1-based line number): not two fields,
            non-integer label, path not ``<Visible|Thermal>/<pid>/<name>``,
            or the ``_<pid>.bmp`` suffix disagreeing with the folder.
        FileNotFoundError: missing root, idx file or listed image (named).

    With ``problems`` (a list), nothing is raised for the dataset's content: every
    problem is appended as a :class:`~dmdl.data.records.Problem` and the reader goes on
    without the faulty lines (what ``dmdl check-dataset`` uses).
    """

    name = "regdb"

    def __init__(self, root, trial: int = 1, *, problems: list | None = None) -> None:
        super().__init__()
        if isinstance(trial, bool) or not isinstance(trial, int) or trial not in REGDB_TRIALS:
            raise ValueError(f"RegDB trial must be an integer in 1..10, got {trial!r}")
        self.root = Path(root).expanduser().resolve()
        self.trial = trial
        self._problems = problems
        self.train_labels_visible = self.train_labels_infrared = []
        self.test_labels_visible = self.test_labels_infrared = []
        if not self.root.is_dir():
            report(problems, "missing root", self.root, f"RegDB root not found: {self.root}", missing=True)
            return
        self.train_visible, self.train_labels_visible = self._read("train", VISIBLE)
        self.train_infrared, self.train_labels_infrared = self._read("train", INFRARED)
        self.test_visible, self.test_labels_visible = self._read("test", VISIBLE)
        self.test_infrared, self.test_labels_infrared = self._read("test", INFRARED)
        self.test_visible_index = build_camera_index(self.test_visible)
        self.test_infrared_index = build_camera_index(self.test_infrared)

    def _describe(self) -> str:
        return f"root={str(self.root)!r}, trial={self.trial}"

    def idx_file(self, split: str, modality: str) -> Path:
        """Path of ``idx/<split>_<visible|thermal>_<trial>.txt``."""
        tag = "visible" if modality == VISIBLE else "thermal"
        return self.root / "idx" / f"{split}_{tag}_{self.trial}.txt"

    def _read(self, split: str, modality: str) -> Tuple[List[ImageRecord], List[int]]:
        list_file = self.idx_file(split, modality)
        problems = self._problems
        if not list_file.is_file():
            report(problems, "missing idx file", list_file, f"RegDB idx file not found: {list_file}", missing=True)
            return [], []
        folder, camid = _REGDB_FOLDERS[modality]
        records: List[ImageRecord] = []
        labels: List[int] = []
        root = str(self.root)
        with open(list_file, "r", encoding="utf-8", errors="replace") as fh:
            for lineno, raw in enumerate(fh, start=1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    parts, label, pid = parse_regdb_line(line, folder)
                except ValueError as exc:
                    report(problems, "malformed idx line", f"{list_file}:{lineno}",
                           f"{list_file}:{lineno}: {exc}: {line!r}")
                    continue
                path = os.path.join(root, *parts)
                if not os.path.isfile(path):
                    report(problems, "missing image", path,
                           f"RegDB image listed in {list_file}:{lineno} not found: {path}", missing=True)
                    continue
                records.append(ImageRecord(path, pid, camid, modality))
                labels.append(label)
        return records, labels
