"""Rank-list pictures (a query, then its top-k gallery images) and the ``index.html`` that
shows them, drawn with PIL.

Layout of one row (pixels; the tests rebuild the size from these constants): a margin
:data:`MARGIN` all round; tiles of :data:`CELL` (width, height) inside a border of
:data:`BORDER`; the query tile, a gap :data:`SEPARATOR`, then the k gallery tiles
:data:`GAP` apart; under every tile a caption :data:`CAPTION` high (rank and distance, then
the modality tag and the identity when known). Width ``2 MARGIN + (k + 1) (CELL_w + 2 BORDER)
+ SEPARATOR + (k - 1) GAP``, height ``2 MARGIN + CELL_h + 2 BORDER + CAPTION``. A sheet stacks
rows under a title bar :data:`TITLE` high. Borders: blue for the query, green for a gallery
image of the query's identity, red for another identity, grey when an identity is unknown.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

CELL = (64, 128)
BORDER = 4
GAP = 4
SEPARATOR = 16
CAPTION = 28
MARGIN = 6
TITLE = 24

COLORS = {"query": (40, 90, 200), "match": (0, 160, 60), "other": (210, 30, 30), "unknown": (150, 150, 150)}
MODALITY_TAGS = {"visible": "VIS", "infrared": "IR", None: "?"}


@dataclass
class Entry:
    """One tile: an image file (or a PIL image), its modality, identity (None: unknown) and
    distance to the query (None for the query itself)."""

    image: object
    modality: Optional[str] = None
    identity: Optional[int] = None
    distance: Optional[float] = None


def row_size(k: int) -> tuple[int, int]:
    """(width, height) in pixels of a rank-list row with ``k`` gallery tiles (see the module doc)."""
    tile_w, tile_h = CELL[0] + 2 * BORDER, CELL[1] + 2 * BORDER
    return 2 * MARGIN + (k + 1) * tile_w + SEPARATOR + max(k - 1, 0) * GAP, 2 * MARGIN + tile_h + CAPTION


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def _thumbnail(image) -> Image.Image:
    if isinstance(image, Image.Image):
        img = image.convert("RGB")
    else:
        try:
            with Image.open(image) as im:
                img = im.convert("RGB")
        except (OSError, ValueError, SyntaxError):  # a file gone or unreadable: a grey tile
            img = Image.new("RGB", CELL, (200, 200, 200))
            ImageDraw.Draw(img).text((4, CELL[1] // 2 - 6), "unreadable", fill=(80, 80, 80), font=_font(10))
    return img.resize(CELL, Image.BILINEAR)


def _tile(canvas: Image.Image, draw: ImageDraw.ImageDraw, x: int, y: int, entry: Entry, color, lines) -> None:
    draw.rectangle([x, y, x + CELL[0] + 2 * BORDER - 1, y + CELL[1] + 2 * BORDER - 1], fill=color)
    canvas.paste(_thumbnail(entry.image), (x + BORDER, y + BORDER))
    font = _font()
    for i, text in enumerate(lines):
        draw.text((x + 1, y + CELL[1] + 2 * BORDER + 2 + 12 * i), text, fill=(0, 0, 0), font=font)


def _label(entry: Entry) -> str:
    tag = MODALITY_TAGS.get(entry.modality, str(entry.modality))
    return tag if entry.identity is None else f"{tag}  id {entry.identity}"


def draw_row(query: Entry, ranked: Sequence[Entry], title: Optional[str] = None) -> Image.Image:
    """One rank-list row: ``query`` then ``ranked`` (nearest first) with their distances,
    modality tags and, where both identities are known, green/red borders.

    ``title`` replaces the query caption's first line (default ``"query"``).
    Returns an RGB image of :func:`row_size` ``(len(ranked))``.
    """
    k = len(ranked)
    w, h = row_size(k)
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    tile_w = CELL[0] + 2 * BORDER
    _tile(img, draw, MARGIN, MARGIN, query, COLORS["query"], [title or "query", _label(query)])
    x = MARGIN + tile_w + SEPARATOR
    for r, e in enumerate(ranked, start=1):
        if query.identity is None or e.identity is None:
            color = COLORS["unknown"]
        else:
            color = COLORS["match" if e.identity == query.identity else "other"]
        dist = "" if e.distance is None else f"  {e.distance:.3f}"
        _tile(img, draw, x, MARGIN, e, color, [f"#{r}{dist}", _label(e)])
        x += tile_w + GAP
    return img


def draw_sheet(rows: Sequence[tuple[Entry, Sequence[Entry]]], title: str) -> Image.Image:
    """Rank-list rows stacked under a title bar: width :func:`row_size` (k)[0] of the longest
    row, height ``TITLE + sum of the rows' heights``."""
    images = [draw_row(q, r) for q, r in rows]
    w = max(i.width for i in images)
    sheet = Image.new("RGB", (w, TITLE + sum(i.height for i in images)), (255, 255, 255))
    ImageDraw.Draw(sheet).text((MARGIN, 5), title, fill=(0, 0, 0), font=_font(13))
    y = TITLE
    for i in images:
        sheet.paste(i, (0, y))
        y += i.height
    return sheet


def write_index(out_dir, queries: List[dict], title: str) -> Path:
    """``out_dir/index.html``: one section per query with its name, its picture and its ranked
    list (name and distance). ``queries``: dicts with ``query`` (name), ``picture`` (file
    relative to ``out_dir``) and ``ranked`` (dicts with ``path``, ``distance``)."""
    out = Path(out_dir) / "index.html"
    parts = [f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif} section{margin:1em 0} img{image-rendering:pixelated}"
             " li{font-size:small}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for i, q in enumerate(queries):
        items = "".join(f"<li>{html.escape(os.fspath(r['path']))} ({r['distance']:.4f})</li>" for r in q["ranked"])
        parts.append(f"<section id='q{i}'><h2>{i + 1}. {html.escape(os.fspath(q['query']))}</h2>"
                     f"<img src='{html.escape(q['picture'])}' alt='rank list of query {i + 1}'>"
                     f"<ol>{items}</ol></section>")
    parts.append("</body></html>\n")
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
