"""Procedurally generated toy VI-ReID datasets in the exact raw layouts.

:func:`make_toy_dataset` writes a small synthetic dataset laid out exactly
like RegDB, SYSU-MM01 or LLCM (docs/datasets.md#sysu-layout, #regdb-layout, #llcm-layout), so
readers, protocols and training loops can be exercised without the real
data.  Nothing here derives from real images.

Rendering: each identity gets a body build, clothing colours, a torso
pattern (solid / horizontal stripes / vertical stripes / checks), hair,
optional bag, shorts and short sleeves.  Every image jitters position,
scale, stride, arm swing and head pose; each camera has its own background
scenery, floor, colour cast and brightness, and every image gets sensor
noise.  The body is first drawn as a part-label map, then coloured:

* visible: clothing RGB under the camera's lighting;
* infrared: the same label map coloured by a fixed, non-linear
  "material" mapping of the clothing colour to a grey level (deliberately
  unlike the RGB luminance, so the modality gap is real); thermal (RegDB)
  renders skin hot and backgrounds cold, NIR (SYSU/LLCM) renders reflectance.
  Infrared images are saved as 3 identical channels.

Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["make_toy_dataset", "toy_default_root", "ensure_toy_dataset",
           "TOY_LAYOUTS", "render_person"]

TOY_LAYOUTS = ("regdb", "sysu", "llcm")
_LAYOUT_CODE = {"regdb": 11, "sysu": 23, "llcm": 37}
_DEFAULT_IDS = {"regdb": 48, "sysu": 24, "llcm": 24}
_MARKER = ".dmdl_toy.json"

# part labels of the body map
_BG, _SKIN, _HAIR, _SHIRT, _PANTS, _SHOES, _BAG, _SLEEVE = range(8)


# ---------------------------------------------------------------------------
# appearance, pose, cameras
# ---------------------------------------------------------------------------
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255.0


def _ir_grey(rgb: np.ndarray) -> float:
    """Fixed 'material' mapping colour -> infrared grey (0..255).

    Non-linear and not monotone in luminance: two garments with the same
    RGB brightness can look very different in IR, and vice versa.
    """
    r, g, b = (float(c) / 255.0 for c in rgb)
    v = 0.5 + 0.5 * math.sin(2.0 * math.pi * (0.9 * r - 0.6 * g + 0.45 * b) + 1.3)
    return 35.0 + 200.0 * v


@dataclass
class _Appearance:
    colors: np.ndarray     # (8, 3) RGB per part label
    ir: np.ndarray         # (8,) grey per part label (NIR reflectance)
    shirt2: np.ndarray     # pattern colour (RGB)
    shirt2_ir: float
    pattern: int           # 0 solid, 1 h-stripes, 2 v-stripes, 3 checks
    period: float          # pattern period as a fraction of person height
    width: float
    height: float
    back_view: bool
    long_hair: bool
    shorts: bool
    short_sleeves: bool
    bag: bool


def _appearance(rng: np.random.Generator, back_view: Optional[bool] = None) -> _Appearance:
    colors = np.zeros((8, 3), np.float32)
    skin_tones = [(236, 198, 170), (210, 160, 120), (170, 120, 85), (120, 80, 55)]
    hair_tones = [(25, 20, 18), (70, 45, 25), (120, 85, 50), (200, 170, 110), (140, 140, 140)]
    colors[_SKIN] = skin_tones[rng.integers(len(skin_tones))]
    colors[_HAIR] = hair_tones[rng.integers(len(hair_tones))]
    shirt = _hsv(rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.3, 1.0))
    colors[_SHIRT] = shirt
    colors[_SLEEVE] = shirt
    colors[_PANTS] = _hsv(rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.15, 0.8))
    colors[_SHOES] = _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.1, 0.9))
    colors[_BAG] = _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.9))
    shirt2 = _hsv(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.2, 1.0))
    ir = np.array([0.0, 200.0, 90.0] + [_ir_grey(colors[k]) for k in range(3, 8)], np.float32)
    return _Appearance(
        colors=colors, ir=ir, shirt2=shirt2, shirt2_ir=_ir_grey(shirt2),
        pattern=int(rng.integers(4)), period=float(rng.uniform(0.035, 0.08)),
        width=float(rng.uniform(0.82, 1.18)), height=float(rng.uniform(0.9, 1.04)),
        back_view=bool(rng.random() < 0.4) if back_view is None else back_view,
        long_hair=bool(rng.random() < 0.35), shorts=bool(rng.random() < 0.25),
        short_sleeves=bool(rng.random() < 0.4), bag=bool(rng.random() < 0.3))


@dataclass
class _Pose:
    dx: float
    dy: float
    scale: float
    stride: float
    swing: float
    head_dx: float


def _pose(rng: np.random.Generator) -> _Pose:
    return _Pose(dx=float(rng.uniform(-0.06, 0.06)), dy=float(rng.uniform(-0.25, 0.25)),
                 scale=float(rng.uniform(0.86, 1.0)), stride=float(rng.uniform(-1.0, 1.0)),
                 swing=float(rng.uniform(-1.0, 1.0)), head_dx=float(rng.uniform(-0.012, 0.012)))


def _jitter_pose(p: _Pose, rng: np.random.Generator) -> _Pose:
    """Small misalignment between the two sensors of a dual camera."""
    return _Pose(dx=p.dx + float(rng.uniform(-0.02, 0.02)), dy=p.dy + float(rng.uniform(-0.04, 0.04)),
                 scale=p.scale * float(rng.uniform(0.97, 1.03)), stride=p.stride,
                 swing=p.swing, head_dx=p.head_dx)


@dataclass
class _Camera:
    gain: np.ndarray           # RGB colour cast
    brightness: float
    sky: np.ndarray            # background colour (upper part)
    floor: np.ndarray          # floor colour
    horizon: float             # floor line, fraction of height
    rects: List[Tuple[float, float, float, float, np.ndarray]]
    ir_level: float            # thermal background level / NIR gain
    thermal: bool
    noise: float


def _camera(rng: np.random.Generator, thermal: bool = False, dark: bool = False) -> _Camera:
    rects = []
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.uniform(-0.2, 0.9), rng.uniform(0.0, 0.6)
        rects.append((x0, y0, x0 + rng.uniform(0.1, 0.6), y0 + rng.uniform(0.05, 0.4),
                      _hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.95))))
    return _Camera(
        gain=np.array([rng.uniform(0.8, 1.2), rng.uniform(0.85, 1.15), rng.uniform(0.75, 1.25)],
                      np.float32),
        brightness=float(rng.uniform(0.45, 0.7) if dark else rng.uniform(0.75, 1.1)),
        sky=_hsv(rng.random(), rng.uniform(0, 0.4), rng.uniform(0.4, 0.95)),
        floor=_hsv(rng.random(), rng.uniform(0, 0.4), rng.uniform(0.2, 0.7)),
        horizon=float(rng.uniform(0.55, 0.8)), rects=rects,
        ir_level=float(rng.uniform(25, 70) if thermal else rng.uniform(0.7, 1.15)),
        thermal=thermal, noise=float(rng.uniform(3.0, 8.0)))


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------
def _label_map(w: int, h: int, app: _Appearance, pose: _Pose) -> Tuple[np.ndarray, dict]:
    canvas = Image.new("L", (w, h), _BG)
    d = ImageDraw.Draw(canvas)
    hp = h * 0.86 * pose.scale * app.height
    top = (h - hp) * (0.5 + pose.dy)
    cx = w * (0.5 + pose.dx)
    sw, ww = 0.14 * hp * app.width, 0.12 * hp * app.width
    y = lambda f: top + f * hp  # noqa: E731

    if app.long_hair:
        d.rectangle([cx - 0.07 * hp, y(0.05), cx + 0.07 * hp, y(0.24)], fill=_HAIR)
    # legs
    lw = 0.05 * hp * app.width
    for side in (-1, 1):
        hx = cx + side * 0.055 * hp * app.width
        fx = hx + side * pose.stride * 0.06 * hp
        yk = y(0.74)
        kx = (hx + fx) / 2
        d.polygon([(hx - lw, y(0.5)), (hx + lw, y(0.5)), (kx + 0.9 * lw, yk), (kx - 0.9 * lw, yk)],
                  fill=_PANTS)
        d.polygon([(kx - 0.9 * lw, yk), (kx + 0.9 * lw, yk), (fx + 0.8 * lw, y(0.96)),
                   (fx - 0.8 * lw, y(0.96))], fill=_SKIN if app.shorts else _PANTS)
        d.ellipse([fx - 0.045 * hp, y(0.94), fx + 0.045 * hp, y(0.985)], fill=_SHOES)
    # torso
    d.polygon([(cx - sw, y(0.16)), (cx + sw, y(0.16)), (cx + ww, y(0.54)), (cx - ww, y(0.54))],
              fill=_SHIRT)
    # arms
    aw = max(1, int(round(0.055 * hp * app.width)))
    for side in (-1, 1):
        sx, sy = cx + side * (sw - 0.01 * hp), y(0.18)
        hx = cx + side * (sw + 0.025 * hp) + side * pose.swing * 0.05 * hp
        hy = y(0.5)
        mx, my = (sx + hx) / 2, (sy + hy) / 2
        d.line([(sx, sy), (mx, my)], fill=_SLEEVE, width=aw)
        d.line([(mx, my), (hx, hy)], fill=_SKIN if app.short_sleeves else _SLEEVE, width=aw)
        d.ellipse([hx - 0.022 * hp, hy - 0.022 * hp, hx + 0.022 * hp, hy + 0.022 * hp],
                  fill=_SKIN)
    if app.bag:
        bx = cx + sw
        d.line([(cx - sw * 0.6, y(0.17)), (bx + 0.02 * hp, y(0.36))], fill=_BAG, width=max(1, aw // 3))
        d.rectangle([bx - 0.01 * hp, y(0.34), bx + 0.07 * hp, y(0.46)], fill=_BAG)
    # head
    hcx = cx + pose.head_dx * hp
    box = [hcx - 0.055 * hp, y(0.005), hcx + 0.055 * hp, y(0.145)]
    if app.back_view:
        d.ellipse(box, fill=_HAIR)
    else:
        d.ellipse(box, fill=_SKIN)
        d.pieslice(box, 180, 360, fill=_HAIR)
    geom = {"cx": cx, "sw": sw, "top": y(0.16), "hp": hp}
    return np.asarray(canvas), geom


def _background(w: int, h: int, cam: _Camera, rng: np.random.Generator) -> np.ndarray:
    img = Image.new("RGB", (w, h), tuple(int(c) for c in cam.sky))
    d = ImageDraw.Draw(img)
    for x0, y0, x1, y1, col in cam.rects:
        d.rectangle([x0 * w, y0 * h, x1 * w, y1 * h], fill=tuple(int(c) for c in col))
    d.rectangle([0, cam.horizon * h, w, h], fill=tuple(int(c) for c in cam.floor))
    bg = np.asarray(img, dtype=np.float32)
    ramp = np.linspace(1.08, 0.85, h, dtype=np.float32)[:, None, None]
    return bg * ramp * float(rng.uniform(0.9, 1.1))


def render_person(app: _Appearance, pose: _Pose, cam: _Camera, size: Tuple[int, int],
                  infrared: bool, rng: np.random.Generator) -> Image.Image:
    """Render one image (PIL RGB) of a person under a camera.

    ``size`` is ``(width, height)``; infrared images have 3 equal channels.
    """
    w, h = size
    labels, g = _label_map(w, h, app, pose)
    person = labels > 0
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    period = max(2.0, app.period * g["hp"])
    if app.pattern == 1:
        pat = ((yy - g["top"]) // period) % 2 == 1
        pat = np.broadcast_to(pat, (h, w))
    elif app.pattern == 2:
        pat = np.broadcast_to(((xx - g["cx"]) // period) % 2 == 1, (h, w))
    elif app.pattern == 3:
        pat = (((yy - g["top"]) // period) + ((xx - g["cx"]) // period)) % 2 == 1
    else:
        pat = np.zeros((h, w), bool)
    pat = pat & (labels == _SHIRT)
    # cylindrical shading across the body
    shade = 1.0 - 0.3 * np.clip(((xx - g["cx"]) / max(g["sw"] * 1.4, 1.0)) ** 2, 0, 1)
    shade = np.broadcast_to(shade, (h, w))

    if not infrared:
        col = app.colors[labels]
        col[pat] = app.shirt2
        col *= shade[..., None]
        bg = _background(w, h, cam, rng)
        img = np.where(person[..., None], col, bg)
        img = img * cam.gain[None, None, :] * cam.brightness * float(rng.uniform(0.88, 1.12))
        img += rng.normal(0.0, cam.noise, size=img.shape).astype(np.float32)
        out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
        return out.filter(ImageFilter.GaussianBlur(0.5))

    if cam.thermal:
        # body heat: skin hottest, clothing warm, modulated by material
        grey = np.array([0, 235, 170] + [0.0] * 5, np.float32)
        grey[3:] = 110.0 + 0.45 * app.ir[3:]
        col = grey[labels]
        col[pat] = 110.0 + 0.45 * app.shirt2_ir
        bg = np.full((h, w), cam.ir_level, np.float32)
        bg += 0.15 * _background(w, h, cam, rng).mean(axis=2)
        blur = 1.2
    else:
        col = app.ir[labels].copy()
        col[pat] = app.shirt2_ir
        bg = _background(w, h, cam, rng).mean(axis=2) * 0.8
        blur = 0.7
    col = col * shade
    img = np.where(person, col, bg)
    gain = 1.0 if cam.thermal else cam.ir_level
    img = img * gain * float(rng.uniform(0.9, 1.1))
    img += rng.normal(0.0, cam.noise, size=img.shape).astype(np.float32)
    grey_img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L")
    grey_img = grey_img.filter(ImageFilter.GaussianBlur(blur))
    return Image.merge("RGB", (grey_img, grey_img, grey_img))


# ---------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------
def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def _pick_ids(rng: np.random.Generator, num_ids: int, lo: int, hi: int) -> List[int]:
    if num_ids <= hi - lo + 1:
        return sorted(int(x) for x in rng.choice(np.arange(lo, hi + 1), num_ids, replace=False))
    return list(range(lo, lo + num_ids))


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".bmp":
        img.save(path, format="BMP")
    else:
        img.save(path, format="JPEG", quality=90)


def _make_regdb(root: Path, num_ids: int, seed: int, images_per_id: int,
                trials: int, image_size: Tuple[int, int]) -> dict:
    code = _LAYOUT_CODE["regdb"]
    if num_ids < 2:
        raise ValueError("a RegDB toy needs at least 2 ids")
    pids = _pick_ids(_rng(seed, code, 0), num_ids, 1, 412)
    cam_v = _camera(_rng(seed, code, 1, 1))
    cam_t = _camera(_rng(seed, code, 1, 2), thermal=True)
    frames: Dict[int, List[int]] = {}
    names: Dict[int, Tuple[List[str], List[str]]] = {}
    for i, pid in enumerate(pids):
        rng = _rng(seed, code, 2, pid)
        app = _appearance(rng)
        gender = "female" if rng.random() < 0.38 else "male"
        view = "back" if app.back_view else "front"
        start = 100 + i * (3 * images_per_id + 10) + int(rng.integers(0, 5))
        step = int(rng.integers(2, 4))
        fr = [start + k * step for k in range(images_per_id)]
        frames[pid] = fr
        vis, thr = [], []
        for f in fr:
            pose = _pose(rng)
            vname = f"Visible/{pid}/{gender}_{view}_v_{f:05d}_{pid}.bmp"
            tname = f"Thermal/{pid}/{gender}_{view}_t_{f:05d}_{pid}.bmp"
            _save(render_person(app, pose, cam_v, image_size, False, rng), root / vname)
            _save(render_person(app, _jitter_pose(pose, rng), cam_t, image_size, True, rng),
                  root / tname)
            vis.append(vname)
            thr.append(tname)
        names[pid] = (vis, thr)
    idx = root / "idx"
    idx.mkdir(parents=True, exist_ok=True)
    n_train = num_ids // 2 + num_ids % 2
    for t in range(1, trials + 1):
        order = [int(p) for p in _rng(seed, code, 3, t).permutation(pids)]
        for split, ids in (("train", order[:n_train]), ("test", order[n_train:])):
            for mod_i, tag in ((0, "visible"), (1, "thermal")):
                lines = [f"{name} {label}" for label, pid in enumerate(ids)
                         for name in names[pid][mod_i]]
                (idx / f"{split}_{tag}_{t}.txt").write_text("\n".join(lines) + "\n")
    return {"pids": pids}


def _split_ids(rng: np.random.Generator, pids: Sequence[int], fractions: Sequence[float],
               minimum: Sequence[int]) -> List[List[int]]:
    perm = [int(p) for p in rng.permutation(pids)]
    n = len(perm)
    sizes = [max(m, int(round(f * n))) for f, m in zip(fractions, minimum)]
    sizes.append(n - sum(sizes))
    if sizes[-1] < 1:
        raise ValueError(f"num_ids={n} too small for this layout")
    out, k = [], 0
    for s in sizes:
        out.append(perm[k:k + s])
        k += s
    return out


def _subset(rng: np.random.Generator, cams: Sequence[int], lo: int, hi: int) -> List[int]:
    k = int(rng.integers(lo, min(hi, len(cams)) + 1))
    return sorted(int(c) for c in rng.choice(np.asarray(cams), k, replace=False))


def _size(rng: np.random.Generator, image_size: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    if image_size is not None:
        return image_size
    return int(rng.integers(52, 77)), int(rng.integers(120, 161))


def _make_sysu(root: Path, num_ids: int, seed: int, per_cam: Tuple[int, int],
               image_size: Optional[Tuple[int, int]], ori_data: bool) -> dict:
    code = _LAYOUT_CODE["sysu"]
    if num_ids < 4:
        raise ValueError("a SYSU toy needs at least 4 ids")
    base = root / "ori_data" if ori_data else root
    pids = _pick_ids(_rng(seed, code, 0), num_ids, 1, 533)
    test, val, train = _split_ids(_rng(seed, code, 1), pids, (0.3, 0.2), (2, 1))
    cams = {k: _camera(_rng(seed, code, 2, k), dark=(k == 3)) for k in (1, 2, 4, 5, 3, 6)}
    for pid in pids:
        rng = _rng(seed, code, 3, pid)
        app = _appearance(rng)
        present = _subset(rng, (1, 2, 4, 5), 1, 4) + _subset(rng, (3, 6), 1, 2)
        for cam in sorted(present):
            for j in range(1, int(rng.integers(per_cam[0], per_cam[1] + 1)) + 1):
                img = render_person(app, _pose(rng), cams[cam], _size(rng, image_size),
                                    cam in (3, 6), rng)
                _save(img, base / f"cam{cam}" / f"{pid:04d}" / f"{j:04d}.jpg")
    for k in range(1, 7):
        (base / f"cam{k}").mkdir(parents=True, exist_ok=True)
    exp = base / "exp"
    exp.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train_id", train), ("val_id", val), ("test_id", test),
                      ("available_id", pids)):
        (exp / f"{name}.txt").write_text(",".join(str(i) for i in sorted(ids)) + "\n")
    return {"pids": pids, "train": sorted(train), "val": sorted(val), "test": sorted(test)}


def _make_llcm(root: Path, num_ids: int, seed: int, per_cam: Tuple[int, int],
               image_size: Optional[Tuple[int, int]]) -> dict:
    code = _LAYOUT_CODE["llcm"]
    if num_ids < 3:
        raise ValueError("an LLCM toy needs at least 3 ids")
    vis_cams, nir_cams = tuple(range(1, 10)), (1, 2, 4, 5, 6, 7, 8, 9)
    pids = _pick_ids(_rng(seed, code, 0), num_ids, 0, 1149)
    test_order, train_order = _split_ids(_rng(seed, code, 1), pids, (1 / 3,), (2,))
    test_set = set(test_order)
    cams_v = {k: _camera(_rng(seed, code, 2, k), dark=True) for k in vis_cams}
    cams_n = {k: _camera(_rng(seed, code, 2, k)) for k in nir_cams}  # same scene as VIS cam k
    files: Dict[int, Tuple[List[str], List[str]]] = {}
    for pid in pids:
        rng = _rng(seed, code, 3, pid)
        app = _appearance(rng)
        out: Tuple[List[str], List[str]] = ([], [])
        for mi, (tag, cam_ids, cams) in enumerate((("vis", vis_cams, cams_v),
                                                   ("nir", nir_cams, cams_n))):
            for cam in _subset(rng, cam_ids, 1, 3):
                stamp = int(rng.integers(100000, 240000))
                frame = int(rng.integers(1, 5000))
                for _ in range(int(rng.integers(per_cam[0], per_cam[1] + 1))):
                    frame += int(rng.integers(3, 40))
                    name = f"{pid:04d}_c{cam:02d}_s{stamp:06d}_f{frame}_{tag}.jpg"
                    img = render_person(app, _pose(rng), cams[cam], _size(rng, image_size),
                                        tag == "nir", rng)
                    path = root / tag / f"{pid:04d}" / name
                    _save(img, path)
                    if pid in test_set:
                        dst = root / f"test_{tag}" / f"cam{cam}" / f"{pid:04d}" / name
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, dst)
                    out[mi].append(f"{tag}/{pid:04d}/{name}")
        files[pid] = (sorted(out[0]), sorted(out[1]))
    idx = root / "idx"
    idx.mkdir(parents=True, exist_ok=True)
    for split, ids in (("train", train_order), ("test", test_order)):
        for mi, tag in ((0, "vis"), (1, "nir")):
            lines = [f"{n} {label}" for label, pid in enumerate(ids) for n in files[pid][mi]]
            (idx / f"{split}_{tag}.txt").write_text("\n".join(lines) + "\n")
    (idx / "test_id.txt").write_text(",".join(f"{p:04d}" for p in test_order) + "\n")
    for tag in ("vis", "nir"):
        (root / f"test_{tag}").mkdir(exist_ok=True)
    return {"pids": pids, "train": sorted(train_order), "test": sorted(test_order)}


def _params(layout: str, num_ids: Optional[int] = None, seed: int = 0,
            images_per_id: int = 10, images_per_camera: Tuple[int, int] = (2, 4),
            image_size: Optional[Tuple[int, int]] = None, trials: int = 10,
            ori_data: bool = False) -> dict:
    """The generation arguments that matter for ``layout``, JSON-normalised."""
    if layout not in TOY_LAYOUTS:
        raise ValueError(f"layout must be one of {TOY_LAYOUTS}, got {layout!r}")
    p = {"layout": layout, "num_ids": _DEFAULT_IDS[layout] if num_ids is None else int(num_ids),
         "seed": int(seed)}
    size = list(image_size) if image_size is not None else None
    if layout == "regdb":
        p.update(images_per_id=int(images_per_id), trials=int(trials),
                 image_size=size or [64, 128])
    else:
        p.update(images_per_camera=list(images_per_camera), image_size=size)
        if layout == "sysu":
            p["ori_data"] = bool(ori_data)
    return p


def make_toy_dataset(out_dir, layout: str = "regdb", num_ids: Optional[int] = None,
                     seed: int = 0, *, images_per_id: int = 10,
                     images_per_camera: Tuple[int, int] = (2, 4),
                     image_size: Optional[Tuple[int, int]] = None,
                     trials: int = 10, ori_data: bool = False) -> Path:
    """Write a generated dataset in the raw layout of ``layout``; return its root.

    ``out_dir`` becomes the dataset root (the folder a reader is given); it
    is created and must be empty if it exists.

    Args:
        layout: ``"regdb"``, ``"sysu"`` or ``"llcm"``.
        num_ids: identities (default 48 / 24 / 24).  Pids are drawn from the
            real datasets' ranges (RegDB 1..412, SYSU 1..533, LLCM 0..1149).
        seed: everything is a deterministic function of the arguments.
        images_per_id: RegDB only -- visible (= thermal) images per id
            (64x128 24-bit BMP unless ``image_size`` is given).
        images_per_camera: SYSU/LLCM -- inclusive range of images per
            (id, camera) folder (jpg, sizes vary unless ``image_size``).
        trials: RegDB only -- number of idx trial splits (50/50, seeded).
        ori_data: SYSU only -- put ``cam*/`` and ``exp/`` under ``ori_data/``.

    Layout specifics: RegDB writes ``idx/{train,test}_{visible,thermal}_<t>.txt``
    for t = 1..trials (labels renumbered in order of appearance, visible and
    thermal lists line-paired by frame).  SYSU writes cams 1..6 (not every id
    in every camera) and ``exp/{train,val,test,available}_id.txt`` (disjoint
    sets).  LLCM writes ``vis/``, ``nir/``, ``test_vis/cam<k>/``,
    ``test_nir/cam<k>/`` (no NIR camera 3) and ``idx/{train,test}_{vis,nir}.txt``
    plus ``idx/test_id.txt`` (zero-padded, shuffled order).
    """
    params = _params(layout, num_ids, seed, images_per_id, images_per_camera, image_size,
                     trials, ori_data)
    num_ids = params["num_ids"]
    root = Path(out_dir).expanduser()
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"toy dataset target is not empty: {root}")
    root.mkdir(parents=True, exist_ok=True)
    size = tuple(image_size) if image_size is not None else None
    if layout == "regdb":
        info = _make_regdb(root, num_ids, seed, images_per_id, trials, size or (64, 128))
    elif layout == "sysu":
        info = _make_sysu(root, num_ids, seed, tuple(images_per_camera), size, ori_data)
    else:
        info = _make_llcm(root, num_ids, seed, tuple(images_per_camera), size)
    (root / "README.txt").write_text(
        f"Synthetic toy dataset in the {layout} layout, generated by dmdl.data.toy "
        f"(seed={seed}, num_ids={num_ids}). Procedurally drawn people; no real images.\n")
    (root / _MARKER).write_text(json.dumps({"params": params, "pids": info["pids"]}) + "\n")
    return root


def toy_default_root(layout: str = "regdb") -> Path:
    """Cache location of the default toy dataset: ``$DMDL_HOME/toy-<layout>``
    (``$DMDL_HOME`` defaults to ``~/.cache/dmdl``)."""
    home = os.environ.get("DMDL_HOME") or os.path.join("~", ".cache", "dmdl")
    return Path(home).expanduser() / f"toy-{layout}"


def ensure_toy_dataset(layout: str = "regdb", root=None, **kwargs) -> Path:
    """Return a toy dataset root, generating it on first use.

    Generation goes to a temporary sibling folder that is then renamed into
    place, so concurrent or interrupted runs never leave a half-written
    dataset at ``root``.  An existing complete dataset (marker file present,
    same layout and the same arguments, defaults included) is reused; one
    made with other arguments is replaced.  ``kwargs`` are passed to :func:`make_toy_dataset`.
    """
    root = Path(root).expanduser() if root is not None else toy_default_root(layout)
    marker = root / _MARKER

    wanted = _params(layout, **kwargs)

    def matches() -> bool:
        if not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text())["params"] == wanted
        except (ValueError, KeyError, OSError):
            return False

    if matches():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        make_toy_dataset(tmp / "data", layout=layout, **kwargs)
        old = None
        if root.exists():
            old = root.parent / f"{tmp.name}-old"
            os.replace(root, old)
        try:
            os.replace(tmp / "data", root)
        except OSError:
            if not matches():  # someone else won the race with different content
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
