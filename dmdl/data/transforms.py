"""Image transforms for training and testing (algorithm.md §A2, §A3).

Built on torchvision. The modality-specific channel transforms of ADCA/DMDL
(ChannelExchange for visible images, ChannelAdapGray for infrared ones) have no
torchvision equivalent and are defined here.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ChannelExchange:
    """Copy one random colour channel into all three (ADCA's visible channel
    augmentation, "CA"; algorithm.md §A3, ``gray=2`` so the greyscale branch
    never fires), applied with probability ``p``.

    Input and output: (3, H, W) float tensor.
    """

    def __init__(self, p: float = 1.0):
        self.p = p

    def __call__(self, img: Tensor) -> Tensor:
        if self.p < 1.0 and random.random() >= self.p:
            return img
        idx = random.randint(0, 2)
        return img[idx : idx + 1].expand_as(img).clone()


class ChannelAdapGray:
    """Infrared channel augmentation (algorithm.md §A3): with p = 1/4 each copy
    channel 0, 1 or 2 into all three; otherwise with probability ``p`` replace
    the image by its luminance 0.2989 R + 0.5870 G + 0.1140 B.

    Input and output: (3, H, W) float tensor.
    """

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img: Tensor) -> Tensor:
        idx = random.randint(0, 3)
        if idx < 3:
            return img[idx : idx + 1].expand_as(img).clone()
        if random.random() < self.p:
            gray = 0.2989 * img[0] + 0.5870 * img[1] + 0.1140 * img[2]
            return gray.unsqueeze(0).expand_as(img).clone()
        return img


def test_transform(height: int, width: int) -> T.Compose:
    """Resize (bicubic) to (height, width), ToTensor, ImageNet normalisation -> (3, H, W) float32."""
    return T.Compose(
        [
            T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def train_transform(modality: str, height: int, width: int, erasing_max_area: float = 0.5,
                    channel_exchange: float = 0.5, random_invert: float = 0.0) -> T.Compose:
    """Training view of one modality (algorithm.md §A3).

    Resize, pad 10, random crop, horizontal flip, ToTensor, normalise, random
    erasing with per-pixel N(0, 1) noise (p 0.5, area 0.02-``erasing_max_area``,
    aspect 0.3-3.33); then visible images get :class:`ChannelExchange` with
    probability ``channel_exchange`` (the baseline's "CA", a single view mixing
    DMDL's original and CA views) and infrared images :class:`ChannelAdapGray`.
    ``random_invert`` > 0 inverts intensities (torchvision ``RandomInvert``) with
    that probability before ToTensor, in both modalities: an option of ours
    (not in DMDL) that makes features contrast-polarity invariant.

    Raises:
        ValueError: unknown modality.
    """
    if modality not in ("visible", "infrared"):
        raise ValueError(f"modality must be 'visible' or 'infrared', got {modality!r}")
    ops = [
        T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
        T.Pad(10),
        T.RandomCrop((height, width)),
        T.RandomHorizontalFlip(0.5),
    ]
    if random_invert > 0:
        ops.append(T.RandomInvert(random_invert))
    ops += [
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        T.RandomErasing(p=0.5, scale=(0.02, erasing_max_area), ratio=(0.3, 3.33), value="random"),
    ]
    if modality == "infrared":
        ops.append(ChannelAdapGray(0.5))
    elif channel_exchange > 0:
        ops.append(ChannelExchange(channel_exchange))
    return T.Compose(ops)


def flip_width(x: Tensor) -> Tensor:
    """Horizontal flip of a (B, C, H, W) batch."""
    return torch.flip(x, dims=[3])
