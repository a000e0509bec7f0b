"""MULT's training augmentations (docs/mult.md#B5; docs/README.md#code-m ``ChannelAug.py``, ``dataset.py``).

MULT (arXiv 2402.00672) trains on three images per sample: two views of a
visible image and one view of an infrared image, with two transforms of its
own besides the channel augmentations of ADCA (reused from
:mod:`dmdl.data.transforms`):

- :class:`ChannelRandomErasing`: random erasing (Zhong et al., AAAI 2020)
  that fills one rectangle with a constant per channel;
- :class:`LinearTransform`: repeated random-rectangle intensity scaling,
  applied to the [0, 1] image before normalisation.

:func:`mult_train_views` assembles them per modality and stage. Every random
draw uses Python's :mod:`random` module (which PyTorch's DataLoader seeds in
each worker), also where the reference draws from NumPy.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence, Tuple

import torch
from torch import Tensor
from torchvision import transforms as T

from .transforms import IMAGENET_MEAN, IMAGENET_STD, ChannelAdapGray, ChannelExchange

__all__ = ["ChannelRandomErasing", "LinearTransform", "mult_train_views", "ERASING_FILL"]

#: ChannelRandomErasing's default fill, one value per channel (the CIFAR-10
#: channel means, as in the reference; written into the *normalised* tensor).
ERASING_FILL: Tuple[float, float, float] = (0.4914, 0.4822, 0.4465)


def _check_box_args(name: str, probability: float, min_area: float, max_area: float, aspect: float) -> None:
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"{name}: probability must be in [0, 1], got {probability}")
    if not 0.0 < min_area <= max_area <= 1.0:
        raise ValueError(f"{name}: need 0 < min_area <= max_area <= 1, got {min_area}, {max_area}")
    if not 0.0 < aspect <= 1.0:
        raise ValueError(f"{name}: aspect must be in (0, 1], got {aspect}")


def _draw_box(height: int, width: int, min_area: float, max_area: float, aspect: float,
              attempts: int):
    """The reference's rectangle draw: area fraction ~ U(min_area, max_area), aspect h/w ~
    U(aspect, 1/aspect) (uniform, not log-uniform), h and w rounded; kept if h < height and
    w < width (strictly), top-left corner uniform. Up to ``attempts`` tries.

    Returns:
        (top, left, h, w), or None when no draw fitted.
    """
    area = height * width
    for _ in range(attempts):
        target = random.uniform(min_area, max_area) * area
        ratio = random.uniform(aspect, 1.0 / aspect)
        h = int(round(math.sqrt(target * ratio)))
        w = int(round(math.sqrt(target / ratio)))
        if w < width and h < height:
            top = random.randint(0, height - h)
            left = random.randint(0, width - w)
            return top, left, h, w
    return None


class ChannelRandomErasing:
    """MULT/ADCA's random erasing with a constant fill per channel (docs/mult.md#B5;
    docs/README.md#code-m ``ChannelAug.ChannelRandomErasing``).

    With probability ``probability`` (the reference's test: skip when
    ``random.uniform(0, 1) > probability``), draws a rectangle (see below) up
    to 100 times until one fits strictly inside the image, and sets channel c
    of that rectangle to ``fill[c]`` (a 1-channel image gets ``fill[0]``). If
    no draw fits, the image is returned unchanged. The rectangle: area
    fraction ~ U(min_area, max_area), aspect ratio h/w ~ U(aspect, 1/aspect),
    h and w rounded to integers, top-left corner uniform.

    The reference applies it after Normalize, so the fill values (CIFAR-10
    channel means) land in the normalised space; we do the same.

    Args:
        probability: chance to erase (MULT: 0.9 in the single stage, 0.5 in
            the cross stage).
        min_area, max_area: bounds of the erased area fraction (0.02, 0.4).
        aspect: lower bound of h/w; the upper bound is 1/aspect (0.3).
        fill: per-channel fill values (3 floats).
        attempts: rectangle draws before giving up (100, as the reference).

    Input: (C, H, W) float tensor, C = 1 or 3. Output: a tensor of the same
    shape, dtype and device (a modified copy; the input is never changed).

    Raises:
        ValueError: arguments out of range (probability outside [0, 1],
            areas not 0 < min <= max <= 1, aspect outside (0, 1], a fill that
            is not 3 values, attempts < 1), or an input that is not (1|3, H, W).
    """

    def __init__(self, probability: float = 0.5, min_area: float = 0.02, max_area: float = 0.4,
                 aspect: float = 0.3, fill: Sequence[float] = ERASING_FILL, attempts: int = 100):
        _check_box_args("ChannelRandomErasing", probability, min_area, max_area, aspect)
        fill = tuple(float(v) for v in fill)
        if len(fill) != 3:
            raise ValueError(f"ChannelRandomErasing: fill must hold 3 values, got {len(fill)}")
        if attempts < 1:
            raise ValueError(f"ChannelRandomErasing: attempts must be >= 1, got {attempts}")
        self.probability = probability
        self.min_area = min_area
        self.max_area = max_area
        self.aspect = aspect
        self.fill = fill
        self.attempts = int(attempts)

    def __call__(self, img: Tensor) -> Tensor:
        if img.dim() != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"ChannelRandomErasing expects a (1|3, H, W) tensor, got {tuple(img.shape)}")
        if random.uniform(0, 1) > self.probability:
            return img
        box = _draw_box(img.shape[1], img.shape[2], self.min_area, self.max_area, self.aspect,
                        self.attempts)
        if box is None:
            return img
        top, left, h, w = box
        out = img.clone()
        for c in range(out.shape[0]):
            out[c, top:top + h, left:left + w] = self.fill[c]
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(probability={self.probability}, min_area={self.min_area}, "
                f"max_area={self.max_area}, aspect={self.aspect}, fill={self.fill})")


class LinearTransform:
    """MULT's random-rectangle intensity scaling, bounded (docs/mult.md#B5; docs/README.md#code-m
    ``ChannelAug.LinearTransform``).

    With probability ``probability`` (skip when ``random.uniform(0, 1) >
    probability``), repeats: draw a rectangle as :class:`ChannelRandomErasing`
    does (area 2-40 %, h/w in [0.3, 3.33], up to ``attempts`` tries); for each
    channel c whose values in the rectangle have a maximum m > 0, draw
    b ~ Beta(0.5, 0.5) and multiply the rectangle of channel c by b / m (so
    its maximum becomes b). A per-pixel, per-channel cumulative factor F
    (start 1) is multiplied alike; the loop stops when min F <= ``tmin``.
    The output is F * input, pixelwise.

    **Bounded (our choice).** The reference loops until that condition
    holds, with no other exit: it never ends on an all-zero image and may run
    long on dark ones. We stop after at most ``max_rects`` rectangles (50), or
    when ``attempts`` draws in a row do not fit. On random [0.1, 0.9] images
    of 288 x 144 the reference's own stopping rule ended after a median of 11
    rectangles (max 26 over 300 images), so the cap changes nothing on
    ordinary inputs.

    Beta draws use ``random.betavariate`` (the reference: ``numpy.random
    .beta``, whose state PyTorch's DataLoader does not reseed per worker).

    Args:
        probability: chance to apply (MULT's visible view 0: 0.9; the class
            default in the reference is 0.5).
        min_area, max_area, aspect: the rectangle draw (0.02, 0.4, 0.3).
        tmin: stop once some cumulative factor is <= tmin (1e-6).
        max_rects: the bound on rectangles (50).
        attempts: rectangle draws per rectangle before giving up (100).

    Input: (C, H, W) float tensor, the ToTensor output in [0, 1] (it is
    applied before Normalize). Output: same shape, dtype and device, values
    in [0, 1] for an input in [0, 1] (a copy; the input is never changed).

    Raises:
        ValueError: arguments out of range (as :class:`ChannelRandomErasing`;
            tmin <= 0, max_rects < 1, attempts < 1), or an input that is not 3-D.
    """

    def __init__(self, probability: float = 0.9, min_area: float = 0.02, max_area: float = 0.4,
                 aspect: float = 0.3, tmin: float = 1e-6, max_rects: int = 50, attempts: int = 100):
        _check_box_args("LinearTransform", probability, min_area, max_area, aspect)
        if tmin <= 0:
            raise ValueError(f"LinearTransform: tmin must be > 0, got {tmin}")
        if max_rects < 1 or attempts < 1:
            raise ValueError(f"LinearTransform: max_rects and attempts must be >= 1, got {max_rects}, {attempts}")
        self.probability = probability
        self.min_area = min_area
        self.max_area = max_area
        self.aspect = aspect
        self.tmin = tmin
        self.max_rects = int(max_rects)
        self.attempts = int(attempts)

    def apply(self, img: Tensor) -> Tuple[Tensor, Tensor, int]:
        """The transform without the probability test.

        Args:
            img: (C, H, W) float tensor (not modified).

        Returns:
            ``(out, factor, rects)``: the (C, H, W) result, the (C, H, W)
            cumulative factor F (``out == factor * img``), and the number of
            rectangles applied (<= ``max_rects``).

        Raises:
            ValueError: ``img`` is not 3-D.
        """
        if img.dim() != 3:
            raise ValueError(f"LinearTransform expects a (C, H, W) tensor, got {tuple(img.shape)}")
        out = img.clone()
        factor = torch.ones_like(img)
        rects = 0
        while rects < self.max_rects:
            box = _draw_box(img.shape[1], img.shape[2], self.min_area, self.max_area, self.aspect,
                            self.attempts)
            if box is None:
                break
            top, left, h, w = box
            rects += 1
            for c in range(out.shape[0]):
                region = out[c, top:top + h, left:left + w]
                peak = float(region.max())
                if peak > 0:
                    scale = random.betavariate(0.5, 0.5) / peak
                    region.mul_(scale)
                    factor[c, top:top + h, left:left + w].mul_(scale)
            if float(factor.min()) <= self.tmin:
                break
        return out, factor, rects

    def __call__(self, img: Tensor) -> Tensor:
        if random.uniform(0, 1) > self.probability:
            return img
        return self.apply(img)[0]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(probability={self.probability}, min_area={self.min_area}, "
                f"max_area={self.max_area}, aspect={self.aspect}, tmin={self.tmin}, "
                f"max_rects={self.max_rects})")


def _geometric(height: int, width: int) -> list:
    """MULT's geometric steps: Resize (torchvision's default bilinear), zero Pad(10),
    RandomCrop back to (height, width), RandomHorizontalFlip(0.5)."""
    return [
        T.Resize((height, width)),
        T.Pad(10),
        T.RandomCrop((height, width)),
        T.RandomHorizontalFlip(0.5),
    ]


def _jitter() -> T.ColorJitter:
    return T.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5)


def mult_train_views(modality: str, height: int, width: int, stage: int) -> Tuple[Callable, Callable]:
    """MULT's training transforms of one modality and stage (docs/mult.md#B5; docs/README.md#code-m
    ``dataset.py``, ``pseudo_label_dataset``), each mapping an RGB PIL image to a
    (3, height, width) float32 tensor.

    "geo" = Resize (bilinear), Pad(10), RandomCrop, RandomHorizontalFlip(0.5);
    "norm" = ImageNet Normalize; "CRE(p)" = :class:`ChannelRandomErasing` (p).

    Stage 1 (MULT's "single" stage):

    - visible view 0: geo, ToTensor, :class:`LinearTransform` (0.9), norm, CRE(0.9);
    - visible view 1: geo, ColorJitter(0.5, 0.5, 0.5, 0.5), ToTensor, norm,
      CRE(0.9), :class:`~dmdl.data.transforms.ChannelExchange` (gray=2);
    - infrared: geo, ColorJitter(0.5, 0.5, 0.5, 0.5), ToTensor, norm, CRE(0.9),
      :class:`~dmdl.data.transforms.ChannelAdapGray` (0.5).

    Stage 2 (the "cross" stage): the same without LinearTransform and
    ColorJitter, with CRE(0.5).

    The order of every step is the reference's. Infrared: MULT uses one view
    per infrared image; both elements of the returned pair are that one
    transform (the same object), so a two-view loader gets two independent
    draws of it; use the first element for MULT's single view.

    Args:
        modality: ``"visible"`` or ``"infrared"``.
        height, width: output size in pixels (MULT: 288 x 144).
        stage: 1 (single) or 2 (cross).

    Returns:
        ``(view0, view1)``: ``T.Compose`` transforms.

    Raises:
        ValueError: unknown ``modality`` or ``stage``.
    """
    if modality not in ("visible", "infrared"):
        raise ValueError(f"modality must be 'visible' or 'infrared', got {modality!r}")
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 (single) or 2 (cross), got {stage!r}")
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    p_erase = 0.9 if stage == 1 else 0.5
    jitter = [_jitter()] if stage == 1 else []
    if modality == "infrared":
        ir = T.Compose(_geometric(height, width) + jitter
                       + [T.ToTensor(), norm, ChannelRandomErasing(p_erase), ChannelAdapGray(0.5)])
        return ir, ir
    linear = [LinearTransform(0.9)] if stage == 1 else []
    view0 = T.Compose(_geometric(height, width)
                      + [T.ToTensor()] + linear + [norm, ChannelRandomErasing(p_erase)])
    view1 = T.Compose(_geometric(height, width) + jitter
                      + [T.ToTensor(), norm, ChannelRandomErasing(p_erase), ChannelExchange(gray=2)])
    return view0, view1
