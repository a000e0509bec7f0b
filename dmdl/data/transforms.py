"""Image transforms for training and testing (docs/dmdl.md#A2, #A3).

Built on torchvision (plus timm's RandomErasing and OpenCV colormaps). The
modality-specific transforms of ADCA/DMDL (ChannelExchange for visible images,
ChannelAdapGray and PseudoColor for infrared ones) have no torchvision
equivalent and are defined here. :func:`train_views` gives DMDL's two training
views per modality.
"""

from __future__ import annotations

import random
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image
from timm.data.random_erasing import RandomErasing
from torch import Tensor
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ChannelExchange:
    """ADCA's visible channel augmentation "CA" (docs/dmdl.md#A3; ADCA
    ``ChannelAug.ChannelExchange``; DMDL arXiv 2512.03745 Fig. 4).

    Draws ``idx`` uniformly from {0, ..., gray} (``random.randint(0, gray)``).
    idx 0, 1, 2 copy channel R, G or B into all three channels; idx >= 3 (only
    possible when ``gray`` > 2) writes the luminance
    0.2989 R + 0.5870 G + 0.1140 B into all three. DMDL uses ``gray=2``, so the
    greyscale branch never fires.

    ``p`` (ours, not in the reference): apply with this probability; the
    default 1.0 is the reference's behaviour and draws nothing extra.

    Input and output: (3, H, W) float tensor (the input is not modified).

    Raises:
        ValueError: ``gray`` < 0.
    """

    def __init__(self, gray: int = 2, p: float = 1.0):
        if gray < 0:
            raise ValueError(f"gray must be >= 0, got {gray}")
        self.gray = int(gray)
        self.p = p

    def __call__(self, img: Tensor) -> Tensor:
        if self.p < 1.0 and random.random() >= self.p:
            return img
        idx = random.randint(0, self.gray)
        if idx < 3:
            return img[idx : idx + 1].expand_as(img).clone()
        gray = 0.2989 * img[0] + 0.5870 * img[1] + 0.1140 * img[2]
        return gray.unsqueeze(0).expand_as(img).clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(gray={self.gray}, p={self.p})"


class ChannelAdapGray:
    """Infrared channel augmentation (docs/dmdl.md#A3; ADCA
    ``ChannelAug.ChannelAdapGray``).

    Draws ``idx`` uniformly from {0, 1, 2, 3}: 0-2 copy that channel into all
    three; 3: if ``random.uniform(0, 1) <= probability`` replace all channels by
    the luminance 0.2989 R + 0.5870 G + 0.1140 B, otherwise leave the image
    unchanged (the reference's test, ``> probability`` keeps the image).

    Input and output: (3, H, W) float tensor (the input is not modified).
    """

    def __init__(self, probability: float = 0.5):
        self.probability = probability

    def __call__(self, img: Tensor) -> Tensor:
        idx = random.randint(0, 3)
        if idx < 3:
            return img[idx : idx + 1].expand_as(img).clone()
        if random.uniform(0, 1) > self.probability:
            return img
        gray = 0.2989 * img[0] + 0.5870 * img[1] + 0.1140 * img[2]
        return gray.unsqueeze(0).expand_as(img).clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(probability={self.probability})"


# Candidate OpenCV colormaps per output channel (docs/dmdl.md#A3).
PSEUDO_COLOR_MAPS: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = (
    (cv2.COLORMAP_OCEAN, cv2.COLORMAP_CIVIDIS),  # 5, 17: source of channel 0
    (cv2.COLORMAP_INFERNO, cv2.COLORMAP_AUTUMN),  # 14, 0: source of channel 1
    (cv2.COLORMAP_DEEPGREEN, cv2.COLORMAP_JET),  # 21, 2: source of channel 2
)


class PseudoColor:
    """DMDL's infrared "pseudo-color" augmentation (docs/dmdl.md#A3; DMDL
    arXiv 2512.03745 Fig. 4).

    The image becomes a uint8 (H, W, 3) array; three colormap ids are drawn
    independently with ``random.choice`` (in this order): a from {OCEAN 5,
    CIVIDIS 17}, b from {INFERNO 14, AUTUMN 0}, c from {DEEPGREEN 21, JET 2}.
    Output channel k is channel k of ``cv2.applyColorMap(img, map_k)``
    (OpenCV's BGR order kept as is, no BGR -> RGB swap, as in the reference).
    ``applyColorMap`` turns a 3-channel input into grey first, so for infrared
    images (R = G = B) this colours the intensity.

    Input: PIL image (converted to RGB if needed). Output: RGB PIL image of
    the same size.

    Raises:
        TypeError: the input is not a PIL image.
    """

    maps = PSEUDO_COLOR_MAPS

    def __call__(self, img: Image.Image) -> Image.Image:
        if not isinstance(img, Image.Image):
            raise TypeError(f"PseudoColor expects a PIL image, got {type(img).__name__}")
        arr = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
        arr = np.ascontiguousarray(arr)
        ids = [random.choice(cands) for cands in self.maps]
        out = np.empty_like(arr)
        for k, cmap in enumerate(ids):
            out[..., k] = cv2.applyColorMap(arr, cmap)[..., k]
        return Image.fromarray(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(maps={self.maps})"


def random_erasing(max_area: float = 0.5) -> RandomErasing:
    """timm ``RandomErasing`` as DMDL uses it (docs/dmdl.md#A3): probability
    0.5, area fraction 0.02-``max_area`` (0.5; RegDB stage 2: 0.6), timm's
    default log-uniform aspect ratio in [0.3, 1/0.3], ``mode='pixel'`` (per-pixel
    N(0, 1) noise), one box, on CPU. Applied to a normalised (3, H, W) float
    tensor, which it modifies in place and returns.
    """
    return RandomErasing(probability=0.5, min_area=0.02, max_area=max_area, mode="pixel",
                         max_count=1, device="cpu")


RESIZE_MODES = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


def test_transform(height: int, width: int, interpolation: str = "bicubic") -> T.Compose:
    """Resize to (height, width), ToTensor, ImageNet normalisation -> (3, H, W) float32.

    ``interpolation``: ``"bicubic"`` (DMDL's code) or ``"bilinear"`` (MULT's code: torchvision's
    default). Raises ValueError for another name."""
    if interpolation not in RESIZE_MODES:
        raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
    return T.Compose(
        [
            T.Resize((height, width), interpolation=RESIZE_MODES[interpolation]),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _geometric(height: int, width: int) -> list:
    """Steps 1-4 of docs/dmdl.md#A3: bicubic resize, zero pad 10, random crop, flip."""
    return [
        T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
        T.Pad(10),
        T.RandomCrop((height, width)),
        T.RandomHorizontalFlip(0.5),
    ]


def train_views(modality: str, height: int, width: int,
                erasing_max_area: float = 0.5, pseudo_color: bool = True) -> tuple[Callable, Callable]:
    """DMDL's two training transforms of one modality (docs/dmdl.md#A3; DMDL
    arXiv 2512.03745 Fig. 4), each mapping an RGB PIL image to a (3, height,
    width) float32 tensor. "geo" = bicubic Resize, Pad(10), RandomCrop,
    RandomHorizontalFlip(0.5); "norm" = ToTensor, ImageNet Normalize; "RE" =
    :func:`random_erasing` (``erasing_max_area``: 0.5, RegDB stage 2 0.6).

    - visible: view 0 = geo, norm, RE; view 1 ("CA") = geo,
      ColorJitter(0.5, 0.5, 0.5, 0.5), norm, RE, ChannelExchange(gray=2).
    - infrared: view 0 = geo, norm, RE, ChannelAdapGray(0.5); view 1 = geo,
      PseudoColor, norm, RE. With ``pseudo_color=False`` (DMDL's ablation without
      CBT's data level, Table 3) view 1 is a second, independent draw of view 0.

    Returns:
        (view0, view1): two independent ``T.Compose`` transforms.

    Raises:
        ValueError: unknown ``modality`` (not 'visible' or 'infrared').
    """
    if modality not in ("visible", "infrared"):
        raise ValueError(f"modality must be 'visible' or 'infrared', got {modality!r}")
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if modality == "visible":
        view0 = _geometric(height, width) + norm + [random_erasing(erasing_max_area)]
        view1 = (_geometric(height, width)
                 + [T.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5)]
                 + norm + [random_erasing(erasing_max_area), ChannelExchange(gray=2)])
    else:
        view0 = (_geometric(height, width) + norm
                 + [random_erasing(erasing_max_area), ChannelAdapGray(0.5)])
        if pseudo_color:
            view1 = _geometric(height, width) + [PseudoColor()] + norm + [random_erasing(erasing_max_area)]
        else:
            view1 = (_geometric(height, width) + norm
                     + [random_erasing(erasing_max_area), ChannelAdapGray(0.5)])
    return T.Compose(view0), T.Compose(view1)


def flip_width(x: Tensor) -> Tensor:
    """Horizontal flip of a (B, C, H, W) batch."""
    return torch.flip(x, dims=[3])
