"""Reader for LLCM (Low-Light Cross-Modality) in its raw layout.

Layout (docs/datasets.md#llcm-layout)::

    LLCM/
      idx/train_vis.txt  train_nir.txt  test_id.txt  [test_vis.txt  test_nir.txt]
      vis/<pid4>/<pid4>_c<CC>_s<6 digits>_f<digits>_vis.jpg
      nir/<pid4>/<pid4>_c<CC>_s<6 digits>_f<digits>_nir.jpg
      test_vis/cam<k>/<pid4>/<file>        k = 1..9
      test_nir/cam<k>/<pid4>/<file>        k = 1, 2, 4..9 (no NIR camera 3)

Training lines are ``<vis|nir>/<pid4>/<file> <label>``; the pid comes from the
``<pid4>`` folder, the camera from the ``_c<CC>_`` field of the file name.
Test images are found through ``test_vis/cam<k>/<pid4>/`` for the ids of
``idx/test_id.txt``; the camera is the ``cam<k>`` directory component.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Tuple

from dmdl.modalities import INFRARED, VISIBLE

from .records import ImageRecord, report, split_idx_line
from .regdb import CameraIndex, VIReIDDataset
from .sysu import _read_ids, collect_camera_folders

__all__ = ["LLCM", "LLCM_VIS_CAMS", "LLCM_NIR_CAMS", "parse_llcm_line"]

LLCM_VIS_CAMS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
LLCM_NIR_CAMS = (1, 2, 4, 5, 6, 7, 8, 9)

_CAM_FIELD = re.compile(r"_c(\d+)_")
_MODS = {VISIBLE: ("vis", "train_vis.txt", "test_vis", LLCM_VIS_CAMS),
         INFRARED: ("nir", "train_nir.txt", "test_nir", LLCM_NIR_CAMS)}


def parse_llcm_line(line: str, folder: str) -> Tuple[List[str], int, int]:
    """One LLCM training idx line ``<folder>/<pid4>/<..._c<CC>_...> <label>`` ->
    (path parts, label, camera); ``folder`` is ``"vis"`` or ``"nir"``.

    Raises:
        ValueError: why the line is malformed (the caller adds file and line number).
    """
    parts, label = split_idx_line(line)
    if len(parts) != 3 or parts[0] != folder or not (parts[1].isascii() and parts[1].isdigit()):
        raise ValueError(f"path is not '{folder}/<pid4>/<file>'")
    m = _CAM_FIELD.search(parts[2])
    if m is None:
        raise ValueError("no '_c<CC>_' camera field in file name")
    return parts, label, int(m.group(1))


class LLCM(VIReIDDataset):
    """LLCM reader (docs/datasets.md#llcm).

    Args:
        root: the ``LLCM`` folder.

    Attributes:
        train_visible / train_infrared: records of ``idx/train_vis.txt`` /
            ``idx/train_nir.txt`` in file order (labels in
            ``train_labels_visible`` / ``train_labels_infrared``).
        test_ids: ids of ``idx/test_id.txt``, ascending
            (``test_id_order`` keeps the file order = test label order).
        test_visible: for each test id ascending, cameras 1..9 in order, the
            sorted files of ``test_vis/cam<k>/<pid4>/``;  test_infrared: the
            same over ``test_nir`` and cameras 1, 2, 4..9.
        test_visible_index / test_infrared_index:
            ``{(pid, cam): sorted paths}`` in that order.

    Raises:
        FileNotFoundError: missing root, idx file, listed training image,
            ``test_vis/`` or ``test_nir/`` absent.
        ValueError: malformed idx line (file and line named) or id list.

    With ``problems`` (a list), problems are appended to it instead of raised (see
    :class:`~dmdl.data.regdb.RegDB`).
    """

    name = "llcm"

    def __init__(self, root, *, problems: list | None = None) -> None:
        super().__init__()
        self.root = Path(root).expanduser().resolve()
        self._problems = problems
        self.train_labels_visible = self.train_labels_infrared = []
        self.test_id_order: List[int] = []
        self.test_ids_: List[int] = []
        if not self.root.is_dir():
            report(problems, "missing root", self.root, f"LLCM root not found: {self.root}", missing=True)
            return
        self.train_visible, self.train_labels_visible = self._read_train(VISIBLE)
        self.train_infrared, self.train_labels_infrared = self._read_train(INFRARED)
        self.test_id_order = _read_ids(self.root / "idx" / "test_id.txt", problems)
        self.test_ids_ = sorted(set(self.test_id_order))
        for m in (VISIBLE, INFRARED):
            folder = self.root / _MODS[m][2]
            if not folder.is_dir():
                report(problems, "missing folder", folder, f"LLCM test folder not found: {folder}", missing=True)
        self.test_visible, self.test_visible_index = self._collect_test(VISIBLE)
        self.test_infrared, self.test_infrared_index = self._collect_test(INFRARED)

    @property
    def test_ids(self) -> List[int]:  # type: ignore[override]
        """Test ids from ``idx/test_id.txt``, ascending."""
        return list(self.test_ids_)

    def _read_train(self, modality: str) -> Tuple[List[ImageRecord], List[int]]:
        folder, fname, _, _ = _MODS[modality]
        list_file = self.root / "idx" / fname
        problems = self._problems
        if not list_file.is_file():
            report(problems, "missing idx file", list_file, f"LLCM idx file not found: {list_file}", missing=True)
            return [], []
        root = str(self.root)
        records: List[ImageRecord] = []
        labels: List[int] = []
        with open(list_file, "r", encoding="utf-8", errors="replace") as fh:
            for lineno, raw in enumerate(fh, start=1):
                line = raw.strip()
                if not line:
                    continue
                where = f"{list_file}:{lineno}"
                try:
                    parts, label, cam = parse_llcm_line(line, folder)
                except ValueError as exc:
                    report(problems, "malformed idx line", where, f"{where}: {exc}: {line!r}")
                    continue
                path = os.path.join(root, *parts)
                if not os.path.isfile(path):
                    report(problems, "missing image", path, f"LLCM image listed in {where} not found: {path}",
                           missing=True)
                    continue
                records.append(ImageRecord(path, int(parts[1]), cam, modality))
                labels.append(label)
        return records, labels

    def _collect_test(self, modality: str) -> Tuple[List[ImageRecord], CameraIndex]:
        _, _, test_dir, cams = _MODS[modality]
        return collect_camera_folders(os.path.join(str(self.root), test_dir), self.test_ids_, cams, modality)
