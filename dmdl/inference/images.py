"""What the after-training commands accept as images, and the identity a dataset path carries.

- :func:`collect_image_paths`: files, folders (searched recursively) and glob patterns -> a
  sorted list of image files, with a clear error for a name that matches nothing.
- :func:`as_image_items`: any mix of paths, PIL images, uint8 arrays and tensors -> one list of
  (name, source) items, a path or an RGB PIL image each.
- :func:`identity_from_path`: the person identity of an image in a dataset layout (RegDB,
  SYSU-MM01, LLCM), else None.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any, Iterable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ._bridge import InputError

#: File name endings taken as images in a folder (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_GLOB_CHARS = re.compile(r"[*?\[]")
_REGDB_FILE = re.compile(r"_(\d+)\.bmp$", re.IGNORECASE)
_CAMERA = re.compile(r"^cam\d+$")

Item = Tuple[str, Any]  # (name, path str or RGB PIL image)


def _is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def collect_image_paths(specs: Iterable) -> List[str]:
    """Image files named by ``specs``: each a file, a folder (every image file below it,
    recursively) or a glob pattern (``**`` recursive). Folders and patterns are sorted; the
    order of ``specs`` is kept; a file named twice is kept once.

    Raises:
        InputError: a spec that is no file, folder or matching pattern; a folder or pattern
            with no image file (the message names it and the extensions looked for).
    """
    out: list[str] = []
    for spec in specs:
        spec = os.fspath(spec)
        if os.path.isfile(spec):
            out.append(spec)
        elif os.path.isdir(spec):
            found = sorted(os.path.join(d, n) for d, _, names in os.walk(spec) for n in names if _is_image_file(n))
            if not found:
                raise InputError(f"{spec}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            out += found
        elif _GLOB_CHARS.search(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p) and _is_image_file(p))
            if not found:
                raise InputError(f"{spec}: the pattern matches no image file")
            out += found
        else:
            raise InputError(f"{spec}: no such file or folder")
    return list(dict.fromkeys(out))


def _array_to_pil(arr: np.ndarray, name: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise InputError(f"{name}: an image array must be uint8 (H, W, 3), got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), mode="L").convert("RGB")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    raise InputError(f"{name}: an image array must have shape (H, W, 3) or (H, W), got {arr.shape}")


def _tensor_to_pil(t: torch.Tensor, name: str) -> Image.Image:
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise InputError(f"{name}: an image tensor must have shape (3, H, W) or (1, H, W), got {tuple(t.shape)}")
    t = t.detach().cpu()
    if t.dtype != torch.uint8:
        if not t.is_floating_point():
            raise InputError(f"{name}: an image tensor must be uint8 or float in [0, 1], got {t.dtype}")
        if t.numel() and (float(t.min()) < 0.0 or float(t.max()) > 1.0):
            raise InputError(f"{name}: a float image tensor must hold values in [0, 1] (ToTensor's range)")
        t = (t.float() * 255.0).round().to(torch.uint8)
    return _array_to_pil(t.permute(1, 2, 0).numpy(), name)


def as_image_items(images) -> List[Item]:
    """Normalise the inputs of :meth:`dmdl.FeatureExtractor.extract` to ``(name, source)``
    items, ``source`` a path (decoded later, so that a bad file can be skipped) or an RGB PIL image.

    Accepted, alone or in a list/tuple: a path (str/PathLike: file, folder or glob, see
    :func:`collect_image_paths`); a PIL image (converted to RGB); a uint8 array (H, W, 3),
    (H, W) or a batch (N, H, W, 3); a tensor (3, H, W) or (B, 3, H, W), uint8 (``torchvision.io``
    layout) or float in [0, 1] (``ToTensor`` layout, turned back into uint8 by ``round(255 x)``,
    which is exact for tensors made from 8-bit images).

    Raises:
        InputError: an input of another type or shape, a path that names no image.
    """
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    if not isinstance(images, (list, tuple)):
        raise InputError(f"images must be a path, a PIL image, an array, a tensor or a list of them, "
                         f"got {type(images).__name__}")
    items: list[Item] = []
    for obj in images:
        n = len(items)
        if isinstance(obj, (str, os.PathLike)):
            items += [(p, p) for p in collect_image_paths([obj])]
        elif isinstance(obj, Image.Image):
            items.append((f"<PIL image {n}>", obj.convert("RGB") if obj.mode != "RGB" else obj))
        elif isinstance(obj, np.ndarray):
            batch = obj if obj.ndim == 4 else obj[None]
            items += [(f"<array {n + i}>", _array_to_pil(a, f"array {n + i}")) for i, a in enumerate(batch)]
        elif isinstance(obj, torch.Tensor):
            batch = obj if obj.dim() == 4 else obj[None]
            items += [(f"<tensor {n + i}>", _tensor_to_pil(t, f"tensor {n + i}")) for i, t in enumerate(batch)]
        else:
            raise InputError(f"cannot use a {type(obj).__name__} as an image (expected a path, a PIL image, "
                             "a uint8 array or a tensor)")
    return items


def identity_from_path(path: str) -> Optional[int]:
    """The person identity of an image stored in a dataset layout, else None.

    - RegDB: ``.../<pid>/<name>_<pid>.bmp`` (the folder and the file-name suffix agree).
    - SYSU-MM01 and LLCM: ``.../cam<k>/<pid>/<file>``.
    """
    p = Path(path)
    parent, grand = p.parent.name, p.parent.parent.name
    if not (parent.isascii() and parent.isdigit()):
        return None
    m = _REGDB_FILE.search(p.name)
    if m is not None and int(m.group(1)) == int(parent):
        return int(parent)
    if _CAMERA.match(grand):
        return int(parent)
    return None
