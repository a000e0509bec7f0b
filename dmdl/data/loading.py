"""Image loading with clear errors, and datasets over (path, label) lists
(one view per image, or DMDL's two views per image: docs/dmdl.md#A3)."""

from __future__ import annotations

from typing import Callable, Sequence

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from dmdl.errors import InputError


class ImageReadError(InputError, RuntimeError):
    """An image file could not be decoded; the message names the file (exit code 2 in the CLI)."""


def read_image(path: str) -> Image.Image:
    """Open an image as RGB (infrared images become 3 identical channels).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: the file exists but is not a readable image.
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot decode image {path}: {exc}") from exc


class ImageListDataset(Dataset):
    """Images with integer labels.

    Items are ``(image, label, index)`` where image is what ``transform`` makes
    of the RGB PIL image.

    Args:
        paths: image file paths.
        labels: one int per path (pseudo-label, pid or -1).
        transform: callable applied to the PIL image.
        cache: keep decoded PIL images in RAM after the first read (small
            datasets: RegDB is 64 x 128 per image): ``True`` for a private
            cache, or a dict (path -> image) shared between datasets, e.g.
            the per-epoch training and feature-extraction datasets of a run.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform: Callable,
                 cache: bool | dict = False):
        if len(paths) != len(labels):
            raise ValueError(f"paths ({len(paths)}) and labels ({len(labels)}) differ in length")
        self.paths = list(paths)
        self.labels = [int(x) for x in labels]
        self.transform = transform
        if isinstance(cache, dict):
            self._cache: dict[str, Image.Image] | None = cache
        else:
            self._cache = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> Image.Image:
        if self._cache is None:
            return read_image(self.paths[index])
        path = self.paths[index]
        img = self._cache.get(path)
        if img is None:
            img = self._cache[path] = read_image(path)
        return img

    def __getitem__(self, index: int):
        return self.transform(self._load(index)), self.labels[index], index


class TwoViewDataset(ImageListDataset):
    """Images with integer labels, two augmented views per image (docs/dmdl.md#A3
    ; DMDL arXiv 2512.03745 Fig. 4): the reference loads an image once and
    applies two independent transforms to it.

    Items are ``(view0, view1, label, index)`` with ``view0 = transforms[0](img)``
    and ``view1 = transforms[1](img)`` made from the SAME decoded RGB PIL image
    (e.g. the pair from :func:`dmdl.data.transforms.train_views`). Caching and
    errors are those of :class:`ImageListDataset` (``FileNotFoundError`` or
    :class:`ImageReadError` naming the file when it is read).

    Args:
        paths: image file paths.
        labels: one int per path.
        transforms: the two callables (view 0, view 1) applied to the PIL image.
        cache: as for :class:`ImageListDataset`.

    Raises:
        ValueError: lengths of ``paths`` and ``labels`` differ, or
            ``transforms`` is not a pair of callables.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int],
                 transforms: tuple[Callable, Callable], cache: bool | dict = False):
        transforms = tuple(transforms)
        if len(transforms) != 2 or not all(callable(t) for t in transforms):
            raise ValueError(f"transforms must be a pair of callables, got {transforms!r}")
        super().__init__(paths, labels, transforms[0], cache=cache)
        self.transforms = transforms

    def __getitem__(self, index: int):
        img = self._load(index)
        return self.transforms[0](img), self.transforms[1](img), self.labels[index], index
