"""Reader for SYSU-MM01 in its raw camera-folder layout.

Layout (docs/datasets.md#sysu-layout)::

    SYSU-MM01/                 <- ``root``
      [ori_data/]              <- optional level (AGW keeps the raw data here)
        cam1/ ... cam6/
          <pid:4 digits>/<index:4 digits>.jpg     (not every pid in every camera)
        exp/train_id.txt  val_id.txt  test_id.txt  [available_id.txt]

RGB cameras: 1, 2 (indoor), 4, 5 (outdoor); IR cameras: 3, 6.  ``exp/*.txt``
hold one line of comma-separated decimal ids.  Pid and camera are taken from
the ``cam<k>`` and ``<pid>`` path components, never from character offsets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from dmdl.modalities import INFRARED, VISIBLE

from .records import ImageRecord, report
from .regdb import CameraIndex, VIReIDDataset

__all__ = ["SYSUMM01", "SYSU_RGB_CAMS", "SYSU_IR_CAMS", "SYSU_INDOOR_CAMS",
           "read_id_list", "parse_id_list", "list_image_files", "collect_camera_folders"]

SYSU_RGB_CAMS = (1, 2, 4, 5)
SYSU_INDOOR_CAMS = (1, 2)
SYSU_IR_CAMS = (3, 6)


def parse_id_list(text: str, origin: str = "id list") -> List[int]:
    """Ids of an id-list text: comma-separated non-negative integers (zero padding allowed).

    Whitespace around ids and a trailing comma per line are tolerated; ids may span
    several lines.

    Raises:
        ValueError: a token that is not a non-negative integer (message: ``origin:line``),
            or no id at all.
    """
    ids: List[int] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tokens = [t.strip() for t in raw.strip().split(",")]
        if tokens and tokens[-1] == "":
            tokens = tokens[:-1]
        if tokens == [] or tokens == [""]:
            continue
        for tok in tokens:
            if not (tok.isascii() and tok.isdigit()):
                raise ValueError(
                    f"{origin}:{lineno}: malformed id list, token {tok!r} is not "
                    "a non-negative integer")
            ids.append(int(tok))
    if not ids:
        raise ValueError(f"{origin}: id list is empty")
    return ids


def read_id_list(path: Path) -> List[int]:
    """Parse an id file (see :func:`parse_id_list`).

    Raises FileNotFoundError if missing, ValueError if empty or holding a
    non-integer token (message names file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list not found: {path}")
    return parse_id_list(path.read_text(encoding="utf-8", errors="replace"), str(path))


def _read_ids(path: Path, problems) -> List[int]:
    """:func:`read_id_list`, or [] with the problem recorded (collecting mode)."""
    try:
        return read_id_list(path)
    except FileNotFoundError as exc:
        report(problems, "missing id list", path, str(exc), missing=True)
    except ValueError as exc:
        report(problems, "malformed id list", path, str(exc))
    return []


def list_image_files(folder: str) -> List[str]:
    """Sorted absolute paths of the regular, non-hidden files in ``folder``.

    Sorting by name reproduces the reference code's ``sorted(os.listdir())``.
    """
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    return [os.path.join(folder, n) for n in names
            if os.path.isfile(os.path.join(folder, n))]


class SYSUMM01(VIReIDDataset):
    """SYSU-MM01 reader (docs/datasets.md#sysu).

    Args:
        root: the ``SYSU-MM01`` folder; cameras and ``exp/`` may sit directly
            in it or in ``root/ori_data/`` (the first one holding ``exp/`` is
            used, ``root`` first).

    Attributes:
        train_ids / val_ids / test_ids: sorted ids of ``exp/*_id.txt``.
        train_visible: for every id of train ∪ val (ascending), the files of
            cams 1, 2, 4, 5 in that order (files sorted);  train_infrared: the
            same for cams 3, 6.  (= ``pre_process_sysu`` order, 395 ids.)
        test_visible / test_infrared: the same for the test ids.
        test_visible_index / test_infrared_index:
            ``{(pid, cam): sorted paths}`` of the test split in that
            iteration order, one entry per existing non-empty folder.
        data_dir: the folder actually holding ``cam*/`` and ``exp/``.

    Missing ``cam<k>/<pid>`` folders are normal and skipped.

    Raises:
        FileNotFoundError: root missing; no ``exp/`` under root or
            root/ori_data; a missing ``train_id/val_id/test_id.txt``; a missing
            camera folder ``cam1`` .. ``cam6``.
        ValueError: a malformed id list.

    With ``problems`` (a list), problems are appended to it instead of raised (see
    :class:`~dmdl.data.regdb.RegDB`).
    """

    name = "sysu"

    def __init__(self, root, *, problems: list | None = None) -> None:
        super().__init__()
        self.root = Path(root).expanduser().resolve()
        self.train_ids_, self.val_ids, self.test_ids_ = [], [], []
        self.cameras: Tuple[int, ...] = ()
        self.data_dir = self.root
        if not self.root.is_dir():
            report(problems, "missing root", self.root, f"SYSU-MM01 root not found: {self.root}", missing=True)
            return
        candidates = [self.root, self.root / "ori_data"]
        for cand in candidates:
            if (cand / "exp").is_dir():
                self.data_dir = cand
                break
        else:
            report(problems, "missing folder", self.root / "exp",
                   "SYSU-MM01 'exp' folder not found; looked in "
                   + " and ".join(str(c / "exp") for c in candidates), missing=True)
            return
        exp = self.data_dir / "exp"
        train = _read_ids(exp / "train_id.txt", problems)
        val = _read_ids(exp / "val_id.txt", problems)
        test = _read_ids(exp / "test_id.txt", problems)
        cams = []
        for k in range(1, 7):
            if (self.data_dir / f"cam{k}").is_dir():
                cams.append(k)
            else:
                report(problems, "missing folder", self.data_dir / f"cam{k}",
                       f"SYSU-MM01 camera folder not found: {self.data_dir / f'cam{k}'} "
                       "(the dataset has cam1..cam6)", missing=True)
        self.cameras = tuple(cams)
        self.train_ids_ = sorted(set(train) | set(val))
        self.val_ids = sorted(set(val))
        self.test_ids_ = sorted(set(test))

        tr_vis, _ = self._collect(self.train_ids_, SYSU_RGB_CAMS, VISIBLE)
        tr_ir, _ = self._collect(self.train_ids_, SYSU_IR_CAMS, INFRARED)
        self.train_visible, self.train_infrared = tr_vis, tr_ir
        self.test_visible, self.test_visible_index = self._collect(
            self.test_ids_, SYSU_RGB_CAMS, VISIBLE)
        self.test_infrared, self.test_infrared_index = self._collect(
            self.test_ids_, SYSU_IR_CAMS, INFRARED)

    @property
    def train_ids(self) -> List[int]:  # type: ignore[override]
        """Training ids: train_id ∪ val_id, ascending."""
        return list(self.train_ids_)

    @property
    def test_ids(self) -> List[int]:  # type: ignore[override]
        """Test ids from ``exp/test_id.txt``, ascending."""
        return list(self.test_ids_)

    def _collect(self, ids: Sequence[int], cams: Sequence[int],
                 modality: str) -> Tuple[List[ImageRecord], CameraIndex]:
        return collect_camera_folders(str(self.data_dir), ids, cams, modality)


def collect_camera_folders(base: str, ids: Sequence[int], cams: Sequence[int],
                           modality: str) -> Tuple[List[ImageRecord], CameraIndex]:
    """Records and ``{(pid, cam): sorted paths}`` of ``base/cam<k>/<pid:04d>/*``.

    Ids ascending as given, cameras in the given order, files sorted; missing or
    empty folders are skipped (not every id appears in every camera). Shared by
    the SYSU-MM01 and LLCM test layouts (docs/datasets.md#sysu-layout, #llcm-layout).
    """
    records: List[ImageRecord] = []
    index: Dict[Tuple[int, int], Tuple[str, ...]] = {}
    for pid in ids:
        for cam in cams:
            folder = os.path.join(base, f"cam{cam}", f"{pid:04d}")
            if not os.path.isdir(folder):
                continue
            files = list_image_files(folder)
            if not files:
                continue
            index[(pid, cam)] = tuple(files)
            records.extend(ImageRecord(p, pid, cam, modality) for p in files)
    return records, index
