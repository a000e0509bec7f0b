"""Tests of MULT's training augmentations (docs/mult.md#B5): ChannelRandomErasing,
the bounded LinearTransform and mult_train_views."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dmdl.data.transforms import ChannelAdapGray, ChannelExchange
from dmdl.data.transforms_mult import (
    ERASING_FILL,
    ChannelRandomErasing,
    LinearTransform,
    mult_train_views,
)

H, W = 96, 48


def _erased_box(out, background):
    """(top, left, h, w) of the changed pixels, asserting they form one filled rectangle."""
    changed = (out != background).any(dim=0)
    rows = torch.nonzero(changed.any(dim=1)).flatten()
    cols = torch.nonzero(changed.any(dim=0)).flatten()
    top, left = int(rows[0]), int(cols[0])
    h, w = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
    assert changed[top:top + h, left:left + w].all() and int(changed.sum()) == h * w
    return top, left, h, w


def test_channel_random_erasing_fill_and_bounds():
    er = ChannelRandomErasing(probability=1.0)
    background = -10.0
    random.seed(0)
    areas, ratios = [], []
    for _ in range(300):
        x = torch.full((3, H, W), background)
        out = er(x)
        assert torch.equal(x, torch.full((3, H, W), background))  # input untouched
        assert out.shape == (3, H, W) and out.dtype == torch.float32
        top, left, h, w = _erased_box(out, background)
        for c in range(3):
            assert torch.all(out[c, top:top + h, left:left + w] == torch.tensor(ERASING_FILL[c]))
        assert h < H and w < W  # strictly inside, as the reference
        areas.append(h * w / (H * W))
        ratios.append(h / w)
    # rounding of h and w moves the area and aspect a little beyond the drawn bounds
    assert 0.02 * 0.8 <= min(areas) and max(areas) <= 0.4 * 1.1
    assert max(areas) > 0.3 and min(areas) < 0.05
    assert 0.3 * 0.8 <= min(ratios) and max(ratios) <= (1 / 0.3) * 1.25


def test_channel_random_erasing_probability_and_errors():
    x = torch.randn(3, H, W)
    random.seed(1)
    assert all(ChannelRandomErasing(probability=0.0)(x) is x for _ in range(20))
    random.seed(1)
    hits = sum(not torch.equal(ChannelRandomErasing(probability=0.5)(x), x) for _ in range(400))
    assert 150 < hits < 250
    one = ChannelRandomErasing(probability=1.0, fill=(0.25, 0.5, 0.75))(torch.zeros(1, H, W))
    assert set(one.unique().tolist()) == {0.0, 0.25}
    with pytest.raises(ValueError, match="probability"):
        ChannelRandomErasing(probability=1.5)
    with pytest.raises(ValueError, match="min_area <= max_area"):
        ChannelRandomErasing(min_area=0.5, max_area=0.4)
    with pytest.raises(ValueError, match="aspect"):
        ChannelRandomErasing(aspect=2.0)
    with pytest.raises(ValueError, match="3 values"):
        ChannelRandomErasing(fill=(0.1, 0.2))
    with pytest.raises(ValueError, match=r"\(1\|3, H, W\)"):
        ChannelRandomErasing()(torch.zeros(2, H, W))


def test_channel_random_erasing_no_fit_leaves_image():
    # a 1-pixel-high image: no rectangle with h < 1 exists, every draw fails
    x = torch.randn(3, 1, 50)
    assert ChannelRandomErasing(probability=1.0)(x) is x


def test_linear_transform_factor_and_termination():
    lt = LinearTransform(probability=1.0)
    random.seed(0)
    ones = torch.ones(3, H, W)
    for _ in range(30):
        out, factor, rects = lt.apply(ones)
        assert torch.equal(ones, torch.ones(3, H, W))  # input untouched
        assert 1 <= rects <= 50
        # on an all-ones image every rectangle scales by Beta(0.5, 0.5) <= 1: the factor is the output
        assert torch.allclose(out, factor) and factor.min() >= 0 and factor.max() <= 1
        assert factor.min() <= 1e-6 or rects == 50
    # any [0, 1] image: the output is factor * input and stays in [0, 1]
    x = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    out, factor, _ = lt.apply(x)
    assert torch.allclose(out, factor * x, atol=1e-6)
    assert out.min() >= 0 and out.max() <= 1 + 1e-6 and factor.min() >= 0


def test_linear_transform_is_bounded():
    # the reference loops for ever on an all-zero image (no rectangle changes the factor)
    zeros = torch.zeros(3, H, W)
    out, factor, rects = LinearTransform(probability=1.0, max_rects=7).apply(zeros)
    assert rects == 7 and torch.equal(out, zeros) and torch.equal(factor, torch.ones(3, H, W))
    assert LinearTransform(probability=1.0)(zeros).shape == (3, H, W)  # returns (50 rectangles)
    # no rectangle fits: stops at once
    tiny = torch.rand(3, 1, 30)
    assert LinearTransform(probability=1.0).apply(tiny)[2] == 0


def test_linear_transform_probability_and_errors():
    x = torch.rand(3, H, W)
    assert all(LinearTransform(probability=0.0)(x) is x for _ in range(10))
    with pytest.raises(ValueError, match="tmin"):
        LinearTransform(tmin=0)
    with pytest.raises(ValueError, match="max_rects"):
        LinearTransform(max_rects=0)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        LinearTransform(probability=1.0).apply(torch.rand(H, W))


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_mult_train_views_shapes(modality, stage):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (120, 50, 3), dtype=np.uint8))
    random.seed(0)
    torch.manual_seed(0)
    for view in mult_train_views(modality, H, W, stage):
        out = view(img)
        assert out.shape == (3, H, W) and out.dtype == torch.float32 and torch.isfinite(out).all()


def _types(compose):
    return [type(t) for t in compose.transforms]


def test_mult_train_views_composition():
    geo = [T.Resize, T.Pad, T.RandomCrop, T.RandomHorizontalFlip]
    v0, v1 = mult_train_views("visible", H, W, 1)
    assert _types(v0) == geo + [T.ToTensor, LinearTransform, T.Normalize, ChannelRandomErasing]
    assert _types(v1) == geo + [T.ColorJitter, T.ToTensor, T.Normalize, ChannelRandomErasing, ChannelExchange]
    assert v0.transforms[5].probability == 0.9 and v0.transforms[7].probability == 0.9
    assert v1.transforms[-1].gray == 2
    jitter = v1.transforms[4]
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.5, 1.5) and jitter.hue == (-0.5, 0.5)
    ir0, ir1 = mult_train_views("infrared", H, W, 1)
    assert ir0 is ir1
    assert _types(ir0) == geo + [T.ColorJitter, T.ToTensor, T.Normalize, ChannelRandomErasing, ChannelAdapGray]
    assert ir0.transforms[-2].probability == 0.9 and ir0.transforms[-1].probability == 0.5
    assert v0.transforms[0].interpolation == T.InterpolationMode.BILINEAR
    assert v0.transforms[1].padding == 10 and v0.transforms[2].size == (H, W)

    # stage 2: no ColorJitter, no LinearTransform, erasing at 0.5
    s0, s1 = mult_train_views("visible", H, W, 2)
    t0, t1 = mult_train_views("infrared", H, W, 2)
    assert _types(s0) == geo + [T.ToTensor, T.Normalize, ChannelRandomErasing]
    assert _types(s1) == geo + [T.ToTensor, T.Normalize, ChannelRandomErasing, ChannelExchange]
    assert _types(t0) == geo + [T.ToTensor, T.Normalize, ChannelRandomErasing, ChannelAdapGray]
    for view in (s0, s1, t0):
        kinds = _types(view)
        assert T.ColorJitter not in kinds and LinearTransform not in kinds
        assert [t.probability for t in view.transforms if isinstance(t, ChannelRandomErasing)] == [0.5]


def test_mult_train_views_errors():
    with pytest.raises(ValueError, match="modality"):
        mult_train_views("thermal", H, W, 1)
    with pytest.raises(ValueError, match="stage"):
        mult_train_views("visible", H, W, 3)
