"""Grids of images drawn as one picture: the prediction grid, feature maps, filters, saliency.

A grid of many small matplotlib axes spends its time on the axes, not the pixels: seed
002's report drew 265 of them, and creating them, laying them out (the constrained layout
draws a figure once more to measure it) and drawing their ticks and spines took about 5 s
of its 19. Here the tiles are pasted into one RGB array, shown by one borderless axes at
one screen pixel per array pixel, with the texts placed at computed positions: the same
picture for a fraction of the time, and still a matplotlib `Figure` (a PNG for papers,
`savefig` at any dpi).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from cnnlab.viz.base import RC, unit_range

DPI = RC["savefig.dpi"]
Colour = tuple[float, float, float]  # RGB in [0, 1]
GAP = 10  # pixels between tiles
MARGIN = 8  # pixels around the grid


@dataclass
class Tile:
    """One image of a grid, with its texts: a title above, a label below."""

    pixels: np.ndarray  # (h, w, 3) uint8
    title: str = ""
    label: str = ""
    color: str = "black"  # the label's colour, and the frame's
    frame: int = 0  # frame width in pixels; 0 for none


def rgb(image: torch.Tensor) -> np.ndarray:
    """A uint8 or [0, 1] float image (C, H, W) as (H, W, 3) uint8: C = 3 is RGB, any other
    count shows channel 0 in gray."""
    img = image.detach().cpu()
    img = img.float().div(255) if img.dtype == torch.uint8 else img.float()
    img = img if img.shape[0] == 3 else img[:1].expand(3, -1, -1)
    return img.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def colored(fmap: torch.Tensor, cmap: str = "viridis", lo: float | None = None,
            hi: float | None = None) -> np.ndarray:  # fmt: skip
    """One map (H, W) through a colour map, scaled from lo to hi (its own range when None),
    as (H, W, 3) uint8."""
    m = fmap.detach().float().cpu()
    scaled = unit_range(m) if lo is None or hi is None else ((m - lo) / (hi - lo)).clamp(0, 1)
    colours = matplotlib.colormaps[cmap](scaled.numpy(), bytes=True)
    return np.ascontiguousarray(colours[..., :3])


def rows_of(tiles: Sequence[Tile], cols: int) -> list[list[Tile]]:
    """A flat list of tiles as rows of `cols` (the last one shorter)."""
    return [list(tiles[r : r + cols]) for r in range(0, len(tiles), cols)]


def side_for(native: int, target: int) -> int:
    """The tile side for images `native` pixels high, near `target`, so that tiles need no
    resampling or a whole-number one where that is close: the images' own size, a multiple
    of it (a 3x3 filter shown as 9 crisp squares) or a whole fraction of it (a 224 px image
    at 112 px, and its block maps of 56, 28 and 14 px at 2, 4 and 8 times); else target."""
    near = lambda side: target / 1.4 <= side <= target * 1.4  # noqa: E731
    if near(native):
        return native
    side = native * round(target / native) if native < target else native // round(native / target)
    return side if near(side) else target


def fit(pixels: np.ndarray, side: int) -> np.ndarray:
    """The image scaled to fit a side x side square, its aspect kept: whole pixels when
    enlarged twice or more (a 3x3 filter stays 9 squares), smoothed otherwise."""
    h, w = pixels.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return pixels
    t = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
    if scale >= 2:
        t = F.interpolate(t, size=size, mode="nearest-exact")
    else:
        t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return t[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _line(points: float) -> int:
    """Pixels one line of text at `points` takes, spacing included."""
    return int(np.ceil(points * 1.3 * DPI / 72))


def _lines(texts: Sequence[str]) -> int:
    return max((t.count("\n") + 1 for t in texts if t), default=0)


@cache
def _measure(points: float) -> tuple[RendererAgg, FontProperties]:
    return RendererAgg(1, 1, DPI), FontProperties(size=points)


def _width(text: str, points: float) -> float:
    """Pixels `text` takes on one line at `points` (matplotlib's own measure)."""
    renderer, font = _measure(points)
    return renderer.get_text_width_height_descent(text, font, ismath=False)[0]


def _fill(line: str, pieces: str, pixels: float, points: float) -> list[str]:
    """`line` as lines of whole pieces (the regular expression `pieces` cuts it into), as
    many on each as fit `pixels`."""
    out, current = [], ""
    for piece in filter(None, re.findall(pieces, line)):
        if current and _width((current + piece).rstrip(), points) > pixels:
            out.append(current.rstrip())
            current = ""
        current += piece if current or piece.strip() else ""  # no line opens with a space
    return [*out, current.rstrip()]


def wrap(text: str, pixels: float, points: float) -> str:
    """`text` with each line broken where it would be wider than `pixels`: after a space,
    or where a word is wider still, after a + , / or _ (a caption of several tags or
    numbers); a piece that still does not fit stays whole."""
    em = points * DPI / 72  # no character is wider: a line this short needs no measuring
    out = []
    for line in text.split("\n"):
        if len(line) * em <= pixels:
            out.append(line)
            continue
        for part in _fill(line, r"[^ ]*(?: |$)", pixels, points):
            wide = _width(part, points) > pixels
            out += _fill(part, r"[^+,/_]*(?:[+,/_]|$)", pixels, points) if wide else [part]
    return "\n".join(out)


def mosaic(
    tiles: Sequence[Sequence[Tile | None]], side: int, title: str = "",
    row_labels: Sequence[str] = (), font: float = 7, key: Sequence[tuple[str, Colour]] = (),
) -> Figure:  # fmt: skip
    """A figure of `tiles` (rows of tiles; None leaves a place empty), each fitted into a
    side x side square, with the grid's title above, a label left of each row and a `key`
    under it: (name, RGB in [0, 1]) pairs, a swatch and a name each, in lines."""
    cols = max(len(r) for r in tiles)
    room = side + GAP - 2  # a text's width under (or above) its tile
    tiles = [
        [t and replace(t, title=wrap(t.title, room, font), label=wrap(t.label, room, font))
         for t in row]
        for row in tiles
    ]  # fmt: skip
    every = [t for r in tiles for t in r if t is not None]
    pad = 2 + max((t.frame for t in every), default=0)  # between a text and its image
    band = lambda texts: _lines(texts) * _line(font) + pad  # noqa: E731  (a row's texts)
    above = [band([t.title for t in row if t is not None]) for row in tiles]
    below = [band([t.label for t in row if t is not None]) for row in tiles]
    left = _lines(row_labels) * _line(font) + (GAP if row_labels else 0)
    cell_w = side + GAP
    width = 2 * MARGIN + left + cols * cell_w
    title = wrap(title, width - 2 * MARGIN, 9)
    top = _lines([title]) * _line(9) + (GAP if title else 0)
    heights = [a + side + b + GAP for a, b in zip(above, below, strict=True)]
    starts = np.cumsum([MARGIN + top, *heights]).tolist()  # each row's top edge
    entries = _key_lines(key, width - 2 * MARGIN, font)
    height = starts[-1] + len(entries) * _line(font) + MARGIN
    canvas = np.full((height, width, 3), 255, np.uint8)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    texts: list[tuple[float, float, str, dict]] = []
    if title:
        texts.append((width / 2, MARGIN, title, {"va": "top", "fontsize": 9}))
    for r, row in enumerate(tiles):
        y0 = starts[r] + above[r]
        if r < len(row_labels) and row_labels[r]:
            x = MARGIN + left - GAP
            texts.append((x, y0 + side / 2, row_labels[r], {"rotation": 90, "va": "center",
                                                          "ha": "right"}))  # fmt: skip
        for c, tile in enumerate(row):
            if tile is None:
                continue
            x0 = MARGIN + left + c * cell_w + GAP // 2
            _paste(canvas, tile, x0, y0, side)
            if tile.title:
                texts.append((x0 + side / 2, y0 - pad, tile.title, {"va": "bottom"}))
            if tile.label:
                texts.append((x0 + side / 2, y0 + side + pad, tile.label,
                              {"va": "top", "color": tile.color}))  # fmt: skip
    texts += _draw_key(canvas, entries, starts[-1], font)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(canvas, aspect="auto", interpolation="antialiased")
    for x, y, text, kw in texts:
        kw = {"ha": "center", "fontsize": font, **kw}
        fig.text(x / width, 1 - y / height, text, parse_math=False, **kw)
    return fig


def _key_lines(
    key: Sequence[tuple[str, Colour]], width: float, font: float
) -> list[list[tuple[str, Colour, float]]]:
    """The key's entries as lines that fit `width` pixels: (name, colour, its x) each."""
    lines: list[list[tuple[str, Colour, float]]] = []
    x = width  # the first entry opens a line
    for name, colour in key:
        room = _line(font) + _width(name, font) + 2 * GAP  # swatch, name, space after
        if x + room > width and (x > 0 or not lines):
            lines.append([])
            x = 0.0
        lines[-1].append((name, colour, x))
        x += room
    return lines


def _draw_key(
    canvas: np.ndarray, lines: list[list[tuple[str, Colour, float]]], top: int, font: float
) -> list[tuple[float, float, str, dict]]:
    """Each entry's swatch painted into `canvas` (framed in grey, so that white shows), from
    `top` down a line at a time; the names' texts to place beside them."""
    line, texts = _line(font), []
    swatch = line - 4
    for i, entries in enumerate(lines):
        y = top + i * line + 2
        for name, colour, x in entries:
            x0 = MARGIN + round(x)
            canvas[y : y + swatch, x0 : x0 + swatch] = 128
            inner = (np.array(colour) * 255).round().astype(np.uint8)
            canvas[y + 1 : y + swatch - 1, x0 + 1 : x0 + swatch - 1] = inner
            texts.append((x0 + swatch + 4, y + swatch / 2, name, {"ha": "left", "va": "center"}))
    return texts


def _paste(canvas: np.ndarray, tile: Tile, x0: int, y0: int, side: int) -> None:
    """The tile's image centred in its square, inside its frame."""
    image = fit(tile.pixels, side)
    h, w = image.shape[:2]
    y, x = y0 + (side - h) // 2, x0 + (side - w) // 2
    if tile.frame:
        f = tile.frame
        colour = np.array(to_rgb(tile.color)) * 255
        canvas[y - f : y + h + f, x - f : x + w + f] = colour.round().astype(np.uint8)
    canvas[y : y + h, x : x + w] = image
