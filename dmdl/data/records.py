"""The record every dataset reader returns."""

from __future__ import annotations

from typing import List, NamedTuple, Tuple



class ImageRecord(NamedTuple):
    """One image of a VI-ReID dataset.

    Attributes:
        path: absolute path of the image file (str).
        pid: person identity as written in the dataset's paths (int; e.g. SYSU
            ``0006`` -> 6, RegDB folder ``285`` -> 285). Not a training label.
        camid: camera number (int; SYSU 1..6, LLCM 1..9, RegDB 1 = visible,
            2 = thermal as in the AGW reference code).
        modality: ``"visible"`` (RGB / VIS) or ``"infrared"`` (IR / NIR /
            thermal).
    """

    path: str
    pid: int
    camid: int
    modality: str


class Problem(NamedTuple):
    """One thing wrong with a dataset on disk (see :mod:`dmdl.data.check`).

    Attributes:
        kind: short category, for counting (e.g. ``"missing image"``).
        path: the file or folder at fault.
        message: the full sentence shown to the user (names the path).
        missing: True when the path does not exist (raised as ``FileNotFoundError``,
            else as ``ValueError``).
    """

    kind: str
    path: str
    message: str
    missing: bool = False

    def exception(self) -> Exception:
        return (FileNotFoundError if self.missing else ValueError)(self.message)


def report(problems, kind: str, path, message: str, missing: bool = False) -> None:
    """Raise the problem (``problems is None``: a reader's normal, strict mode) or append
    it to the ``problems`` list (the collecting mode of ``dmdl check-dataset``)."""
    p = Problem(kind, str(path), message, missing)
    if problems is None:
        raise p.exception()
    problems.append(p)


def split_idx_line(line: str) -> Tuple[List[str], int]:
    """``"<relative path> <label>"`` (a RegDB or LLCM idx line) -> (path parts, label);
    backslashes count as slashes.

    Raises:
        ValueError: why the line is malformed (the caller adds file and line number).
    """
    fields = line.split()
    if len(fields) != 2:
        raise ValueError("expected '<relative path> <label>'")
    rel, label_s = fields
    try:
        label = int(label_s)
    except ValueError:
        raise ValueError("label is not an integer") from None
    return rel.replace("\\", "/").split("/"), label
