"""Image loading with clear errors, and a dataset over (path, label) lists."""

from __future__ import annotations

from typing import Callable, Sequence

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset


class ImageReadError(RuntimeError):
    """An image file could not be decoded; the message names the file."""


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
