"""Images -> features: a model run over a list of image files, as training and evaluation use it.

The features of a list of images are ``model(x)`` in eval mode on the test transform
(resize to height x width, ImageNet mean/std), averaged with the horizontally flipped image
and L2-normalised when asked (docs/dmdl.md#A1.2, #A11). Training extracts its clustering
features here (:meth:`dmdl.training.RunContext.features`), evaluation its query and gallery
features (:func:`dmdl.evaluation.runner.evaluate_model`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from dmdl.data.loading import ImageListDataset
from dmdl.data.transforms import flip_width, test_transform
from dmdl.progress import progress


@torch.no_grad()
def extract_features(
    model: nn.Module,
    paths: Sequence[str],
    height: int,
    width: int,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    flip: bool = True,
    renormalize: bool = True,
    desc: str = "extract",
    cache: bool | dict = False,
    modality: str | None = None,
    interpolation: str = "bicubic",
    channels_last: bool = False,
) -> torch.Tensor:
    """Features of a list of images.

    Args:
        model: returns (B, D) features in eval mode.
        paths: N image paths.
        height, width: input size in pixels.
        flip: average with the horizontally flipped image (docs/dmdl.md#A1.2, #A11).
        renormalize: L2-normalise the (flip-averaged) feature.
        cache: decoded-image cache, see :class:`~dmdl.data.loading.ImageListDataset`.
        modality: ``"visible"`` or ``"infrared"``, the modality of all of
            ``paths``. A two-stream model (``model.two_stream`` true,
            :class:`~dmdl.models.TwoStream`, docs/mult.md#B2) is called as
            ``model(x, modality)`` so the images go through that modality's
            stem; one-stream models ignore it.
        interpolation: the resize, ``"bicubic"`` (DMDL) or ``"bilinear"`` (MULT); see
            :func:`dmdl.data.transforms.test_transform`.
        channels_last: feed the batches in channels-last memory format (for a model converted
            to it: the same numbers up to float summation order, faster on oneDNN CPUs and GPUs).

    Returns:
        (N, D) float32 tensor on ``device``.

    Raises:
        ValueError: a two-stream model and no ``modality``; a ``modality``
            other than None, "visible", "infrared"; no image.
    """
    if modality not in (None, "visible", "infrared"):
        raise ValueError(f"{desc}: modality must be 'visible', 'infrared' or None, got {modality!r}")
    if getattr(model, "two_stream", False):
        if modality is None:
            raise ValueError(
                f"{desc}: a two-stream model needs the images' modality ('visible' or "
                f"'infrared') to pick its stem"
            )

        def embed(x: torch.Tensor) -> torch.Tensor:
            return model(x, modality)
    else:
        embed = model
    was_training = model.training
    model.eval()
    ds = ImageListDataset(paths, [-1] * len(paths), test_transform(height, width, interpolation), cache=cache)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    out = []
    for x, _, _ in progress(loader, total=len(loader), desc=desc):
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        f = embed(x).float()
        if flip:
            f = (f + embed(flip_width(x)).float()) / 2
        if renormalize:
            f = F.normalize(f, dim=1)
        out.append(f)
    model.train(was_training)
    if not out:
        raise ValueError(f"{desc}: no image to extract features from")
    return torch.cat(out)


__all__ = ["extract_features"]
