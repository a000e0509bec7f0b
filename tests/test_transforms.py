"""Tests of DMDL's training views (docs/dmdl.md#A3): channel transforms,
pseudo-color, timm random erasing, train_views and TwoViewDataset."""

import itertools
import random

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dmdl.data.loading import ImageReadError, TwoViewDataset
from dmdl.data.transforms import (
    ChannelAdapGray,
    ChannelExchange,
    PseudoColor,
    random_erasing,
    train_views,
)


def _rgb_tensor(h=4, w=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, h, w, generator=g)


def _lum(x):
    return 0.2989 * x[0] + 0.5870 * x[1] + 0.1140 * x[2]


def _which_channel(out, x):
    """Index k with out == x[k] broadcast to 3 channels, 'gray' for luminance, None otherwise."""
    for k in range(3):
        if torch.equal(out, x[k].unsqueeze(0).repeat(3, 1, 1)):
            return k
    if torch.allclose(out, _lum(x).unsqueeze(0).repeat(3, 1, 1)):
        return "gray"
    if torch.equal(out, x):
        return "same"
    return None


def test_channel_exchange_copies_drawn_channel():
    x = _rgb_tensor()
    x_orig = x.clone()
    ce = ChannelExchange()  # gray=2 by default
    assert ce.gray == 2
    seen = set()
    for seed in range(60):
        random.seed(seed)
        expected_idx = random.randint(0, 2)
        random.seed(seed)
        out = ce(x)
        assert out.shape == x.shape
        assert _which_channel(out, x) == expected_idx
        seen.add(expected_idx)
    assert seen == {0, 1, 2}
    assert torch.equal(x, x_orig)  # input not modified


def test_channel_exchange_gray3_gives_luminance():
    x = _rgb_tensor(seed=1)
    ce = ChannelExchange(gray=3)
    kinds = set()
    for seed in range(80):
        random.seed(seed)
        idx = random.randint(0, 3)
        random.seed(seed)
        kind = _which_channel(ce(x), x)
        assert kind == (idx if idx < 3 else "gray")
        kinds.add(kind)
    assert kinds == {0, 1, 2, "gray"}
    # hand value of the luminance at one pixel
    seed = 0
    while True:
        random.seed(seed)
        if random.randint(0, 3) == 3:
            break
        seed += 1
    random.seed(seed)
    out = ce(x)
    r, g, b = x[:, 0, 0].tolist()
    assert out[:, 0, 0].tolist() == pytest.approx([0.2989 * r + 0.5870 * g + 0.1140 * b] * 3, abs=1e-6)


def test_channel_exchange_rejects_negative_gray():
    with pytest.raises(ValueError, match="gray"):
        ChannelExchange(gray=-1)


def test_channel_adap_gray_branches():
    x = _rgb_tensor(seed=2)
    cag = ChannelAdapGray(0.5)
    kinds = set()
    for seed in range(200):
        random.seed(seed)
        idx = random.randint(0, 3)
        u = random.uniform(0, 1) if idx == 3 else None
        expected = idx if idx < 3 else ("same" if u > 0.5 else "gray")
        random.seed(seed)
        assert _which_channel(cag(x), x) == expected
        kinds.add(expected)
    assert kinds == {0, 1, 2, "gray", "same"}
    # probability 1: branch 3 always luminance; probability 0: branch 3 always unchanged
    for p, want in ((1.0, "gray"), (0.0, "same")):
        c = ChannelAdapGray(p)
        for seed in range(60):
            random.seed(seed)
            if random.randint(0, 3) == 3:
                random.seed(seed)
                assert _which_channel(c(x), x) == want


def _small_ir_image(h=5, w=4):
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    g[0, 0], g[0, 1] = 0, 255
    return np.stack([g, g, g], axis=-1)


def _expected_pseudo(arr, a, b, c):
    out = np.empty_like(arr)
    for k, m in enumerate((a, b, c)):
        out[..., k] = cv2.applyColorMap(arr, m)[..., k]
    return out


def test_pseudo_color_channel_sourcing_seeded():
    arr = _small_ir_image()
    img = Image.fromarray(arr)
    pc = PseudoColor()
    for seed in range(10):
        random.seed(seed)
        a = random.choice([5, 17])
        b = random.choice([14, 0])
        c = random.choice([21, 2])
        random.seed(seed)
        out = pc(img)
        assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == img.size
        np.testing.assert_array_equal(np.asarray(out), _expected_pseudo(arr, a, b, c))


def test_pseudo_color_only_listed_maps_all_8_reachable():
    assert (cv2.COLORMAP_OCEAN, cv2.COLORMAP_CIVIDIS) == (5, 17)
    assert (cv2.COLORMAP_INFERNO, cv2.COLORMAP_AUTUMN) == (14, 0)
    assert (cv2.COLORMAP_DEEPGREEN, cv2.COLORMAP_JET) == (21, 2)
    arr = _small_ir_image(8, 6)
    img = Image.fromarray(arr)
    combos = {combo: _expected_pseudo(arr, *combo)
              for combo in itertools.product((5, 17), (14, 0), (21, 2))}
    # the 8 combinations give 8 distinct images on this input
    assert len({v.tobytes() for v in combos.values()}) == 8
    pc = PseudoColor()
    seen = set()
    for seed in range(120):
        random.seed(seed)
        out = np.asarray(pc(img))
        hits = [k for k, v in combos.items() if np.array_equal(out, v)]
        assert len(hits) == 1, f"seed {seed}: output is none of the 8 combinations"
        seen.add(hits[0])
    assert len(seen) == 8


def test_random_erasing_pixel_noise():
    re = random_erasing(0.5)
    assert (re.probability, re.min_area, re.max_area) == (0.5, 0.02, 0.5)
    assert (re.mode, re.per_pixel) == ("pixel", True)
    assert (re.min_count, re.max_count, re.device) == (1, 1, "cpu")
    assert random_erasing(0.6).max_area == 0.6
    re.probability = 1.0  # force erasing
    random.seed(0)
    torch.manual_seed(0)
    x = torch.full((3, 128, 64), 7.0)
    out = re(x)
    erased = out != 7.0
    assert erased.any()
    # one axis-aligned box, the same in all channels
    assert torch.equal(erased[0], erased[1]) and torch.equal(erased[0], erased[2])
    rows = erased[0].any(1).nonzero().flatten()
    cols = erased[0].any(0).nonzero().flatten()
    box = erased[0, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all() and int(box.sum()) == int(erased[0].sum())
    area = box.numel() / (128 * 64)
    assert 0.015 <= area <= 0.55
    vals = out[erased]
    assert vals.numel() > 300
    assert abs(vals.mean().item()) < 0.2
    assert abs(vals.std().item() - 1.0) < 0.15


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_train_views_shapes(modality):
    arr = np.random.default_rng(1).integers(0, 256, size=(50, 20, 3), dtype=np.uint8)
    if modality == "infrared":
        arr[..., 1] = arr[..., 2] = arr[..., 0]
    img = Image.fromarray(arr)
    v0, v1 = train_views(modality, 64, 32)
    random.seed(0)
    torch.manual_seed(0)
    for t in (v0, v1):
        out = t(img)
        assert out.shape == (3, 64, 32) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_train_views_composition_and_errors():
    v0, v1 = train_views("visible", 64, 32, erasing_max_area=0.6)
    names0 = [type(t).__name__ for t in v0.transforms]
    names1 = [type(t).__name__ for t in v1.transforms]
    geo = ["Resize", "Pad", "RandomCrop", "RandomHorizontalFlip"]
    assert names0 == geo + ["ToTensor", "Normalize", "RandomErasing"]
    assert names1 == geo + ["ColorJitter", "ToTensor", "Normalize", "RandomErasing", "ChannelExchange"]
    assert v0.transforms[-1].max_area == 0.6 and v1.transforms[-1].gray == 2
    i0, i1 = train_views("infrared", 64, 32)
    assert [type(t).__name__ for t in i0.transforms] == geo + [
        "ToTensor", "Normalize", "RandomErasing", "ChannelAdapGray"]
    assert [type(t).__name__ for t in i1.transforms] == geo + [
        "PseudoColor", "ToTensor", "Normalize", "RandomErasing"]
    assert i0.transforms[-1].probability == 0.5 and i0.transforms[-2].max_area == 0.5
    with pytest.raises(ValueError, match="modality"):
        train_views("thermal", 64, 32)


def _write_images(tmp_path, n=3):
    paths = []
    rng = np.random.default_rng(2)
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(12, 6, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_two_view_dataset_same_image(tmp_path):
    paths = _write_images(tmp_path)
    to_arr = np.asarray
    ds = TwoViewDataset(paths, [4, 5, 6], (to_arr, to_arr))
    assert len(ds) == 3
    v0, v1, label, index = ds[1]
    assert (label, index) == (5, 1)
    expected = np.asarray(Image.open(paths[1]).convert("RGB"))
    np.testing.assert_array_equal(v0, expected)
    np.testing.assert_array_equal(v1, expected)
    # both transforms receive the very same decoded object
    got = []
    ds2 = TwoViewDataset(paths, [0, 0, 0], (got.append, got.append), cache=True)
    ds2[0]
    assert len(got) == 2 and got[0] is got[1]


def test_two_view_dataset_random_views(tmp_path):
    paths = _write_images(tmp_path)
    ds = TwoViewDataset(paths, [0, 1, 2], train_views("visible", 16, 8), cache={})
    random.seed(3)
    torch.manual_seed(3)
    v0, v1, label, index = ds[2]
    assert v0.shape == v1.shape == (3, 16, 8)
    assert (label, index) == (2, 2)
    assert not torch.equal(v0, v1)


def test_two_view_dataset_errors(tmp_path):
    paths = _write_images(tmp_path, 1)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"not an image")
    missing = str(tmp_path / "missing.png")
    ident = (lambda x: x, lambda x: x)
    ds = TwoViewDataset([paths[0], missing, str(bad)], [0, 1, 2], ident)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ds[1]
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        ds[2]
    with pytest.raises(ValueError, match="length"):
        TwoViewDataset(paths, [0, 1], ident)
    with pytest.raises(ValueError, match="pair"):
        TwoViewDataset(paths, [0], (ident[0],))
