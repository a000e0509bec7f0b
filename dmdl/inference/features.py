"""The features file of ``dmdl extract`` (NumPy ``.npz``), read back by ``dmdl search`` and
``dmdl visualize tsne``.

Arrays: ``features`` (N, D) float32 (L2-normalised rows), ``paths`` (N,) str, ``modality`` ()
str (empty: not given), ``weights_hash`` () str (see
:func:`~dmdl.inference._bridge.weights_hash`: the model that made them), ``checkpoint`` () str,
``height``, ``width`` () int64 (input size), ``skipped`` (K,) str (``"path: reason"`` of the
images that could not be read), ``format`` () str (``dmdl-features-1``).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from dmdl import __version__

from ._bridge import InputError

FORMAT = "dmdl-features-1"
_KEYS = ("features", "paths", "modality", "weights_hash", "height", "width", "format")


@dataclass
class FeaturesFile:
    """A features file as read by :func:`load_features` (attributes as its arrays)."""

    path: Path
    features: torch.Tensor
    paths: List[str]
    modality: Optional[str]
    weights_hash: str
    checkpoint: str
    height: int
    width: int
    skipped: List[str] = field(default_factory=list)


def save_features(out, features: torch.Tensor, paths, modality: Optional[str], weights_hash: str,
                  checkpoint: str, height: int, width: int, skipped=()) -> Path:
    """Write a features file to exactly ``out`` (no suffix is added); returns its path.

    Raises:
        ValueError: ``features`` is not (len(paths), D).
    """
    feats = features.detach().cpu().float().numpy()
    if feats.ndim != 2 or feats.shape[0] != len(paths):
        raise ValueError(f"features must be ({len(paths)}, D), got {tuple(feats.shape)}")
    out = Path(out)
    if out.parent and not out.parent.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        np.savez(fh, features=feats, paths=np.array([str(p) for p in paths], dtype=str),
                 modality=np.array(modality or ""), weights_hash=np.array(weights_hash),
                 checkpoint=np.array(str(checkpoint)), height=np.array(height, dtype=np.int64),
                 width=np.array(width, dtype=np.int64), skipped=np.array(list(skipped), dtype=str),
                 format=np.array(FORMAT), dmdl_version=np.array(__version__))
    return out


def load_features(path, what: str = "features file") -> FeaturesFile:
    """Read a features file written by :func:`save_features` (``dmdl extract``).

    Args:
        what: how messages name the file (e.g. ``"--gallery-features"``).

    Raises:
        FileNotFoundError: no such file.
        InputError: not a dmdl features file (the message names it and what is missing).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{what} {path} is not a dmdl features file (not a NumPy .npz archive); write one "
                         "with dmdl extract")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{what} {path} is not a dmdl features file (.npz of dmdl extract): {exc}") from None
    missing = [k for k in _KEYS if k not in arrays]
    if missing:
        raise InputError(f"{what} {path} is not a dmdl features file (no {', '.join(missing)}); write one "
                         "with dmdl extract")
    feats, paths = arrays["features"], arrays["paths"]
    if feats.ndim != 2 or paths.ndim != 1 or len(paths) != len(feats) or not len(feats):
        raise InputError(f"{what} {path}: features {feats.shape} and paths {paths.shape} do not match")
    return FeaturesFile(path=path, features=torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
                        paths=[str(p) for p in paths], modality=str(arrays["modality"]) or None,
                        weights_hash=str(arrays["weights_hash"]), checkpoint=str(arrays.get("checkpoint", "")),
                        height=int(arrays["height"]), width=int(arrays["width"]),
                        skipped=[str(s) for s in arrays.get("skipped", [])])
