"""GSN (Geometric Shape Numbers, seed 003's data set) generated afresh, in its published format.

GSN cannot be fetched here, so this draws images that look like the six real ones in
`docs/images/gsn_reference.png`: binary 28x28, exactly two of the six shape types per
image with counts a and 10 - a (a in 1..9), every one of the 135 classes possible (the pair
and a are drawn uniformly). The types, in the csv's column order:

- squares: filled, axis-aligned;
- circles: filled discs;
- up, right, down, left: filled right-angled isoceles triangles, named by where the apex
  (the right angle) points: "up" has its base (the hypotenuse) at the bottom and its apex
  above it, "right" its base on the left and its apex to the right, and so on (as in the
  reference picture).

Each shape's size is drawn uniformly from 3 to 10 pixels: a square's side, a circle's
diameter, a triangle's leg (so its base is size * 1.41 and its height size * 0.71, as the
reference's triangles, wider than its squares, look). Centres are uniform anywhere on the
image, so shapes near the edge are cut by it.
Overlapping shapes are combined by XOR (overlaps are inverted, as in the real images).

Deterministic: image i of seed s is drawn from its own numpy Generator seeded with (s, i),
so any chunking (serial, a thread pool) writes the same bytes. Written as the original:
`img_00000.png ...` (mode "L", values 0 and 255) and then `labels.csv` with the header
`name,squares,circles,up,right,down,left`, last, so an interrupted run never leaves a
labels.csv that names missing images.
"""

from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.errors import CnnlabError

SIZE = 28
TYPES = ("squares", "circles", "up", "right", "down", "left")  # the csv's column order
HEADER = ("name", *TYPES)
PAIRS = list(combinations(range(len(TYPES)), 2))  # 15 unordered pairs, lexicographic
SHAPES_PER_IMAGE = 10
MIN_ACROSS, MAX_ACROSS = 3.0, 10.0  # a shape's size in pixels (side, diameter, leg)
CHUNK = 250  # images drawn together as one (chunk, 10, 28, 28) mask array
# Threads over chunks are possible (image i depends on (seed, i) only) but measured no gain
# on the shared 2-core machine, 10,000 images: drawing 1.35 / 1.50 s with 1 thread, 1.42 /
# 1.73 s with 2; drawing + writing the PNGs 3.0 / 7.7 s with 1, 7.3 / 9.0 s with 2 (the
# files and PNG encoding hold the GIL). So one thread by default.
THREADS = 1
LABELS = "labels.csv"


def image_name(index: int) -> str:
    return f"img_{index:05d}.png"


@dataclass
class Shapes:
    """The drawn shapes of N images, (N, 10) each: type (0..5), centre (x, y), size."""

    kind: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    across: np.ndarray

    def cut(self) -> np.ndarray:
        """(N, 10) bool: the shape reaches past the image's border."""
        half = self.across / 2
        base, height = half * np.sqrt(2), half / np.sqrt(2)  # a triangle's half base, half height
        tall = np.select(
            [np.isin(self.kind, (2, 4)), np.isin(self.kind, (3, 5))], [height, base], half
        )
        wide = np.select(
            [np.isin(self.kind, (2, 4)), np.isin(self.kind, (3, 5))], [base, height], half
        )
        return (
            (self.cx - wide < 0)
            | (self.cx + wide > SIZE)
            | (self.cy - tall < 0)
            | (self.cy + tall > SIZE)
        )


def draw_params(seed: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image `index` of `seed`: (counts (6,), shape types (10,), params (10, 3) = cx, cy,
    across), from its own Generator so the chunking never changes the result."""
    rng = np.random.default_rng([seed, index])
    i, j = PAIRS[int(rng.integers(len(PAIRS)))]
    a = int(rng.integers(1, 10))
    counts = np.zeros(len(TYPES), dtype=np.int64)
    counts[i], counts[j] = a, SHAPES_PER_IMAGE - a
    kinds = np.repeat(np.array([i, j]), [a, SHAPES_PER_IMAGE - a])
    params = np.empty((SHAPES_PER_IMAGE, 3))
    params[:, :2] = rng.uniform(0.0, SIZE, size=(SHAPES_PER_IMAGE, 2))
    params[:, 2] = rng.uniform(MIN_ACROSS, MAX_ACROSS, size=SHAPES_PER_IMAGE)
    return counts, kinds, params


def masks(kind: np.ndarray, cx: np.ndarray, cy: np.ndarray, across: np.ndarray) -> np.ndarray:
    """Bool (..., 28, 28) masks of shapes given as arrays of the same shape (...): pixel
    (row y, column x) is on when its centre (x + 0.5, y + 0.5) lies inside the shape."""
    grid = np.arange(SIZE) + 0.5
    k = kind[..., None, None]
    dx = grid[None, :] - cx[..., None, None]  # (..., 1, 28): columns
    dy = grid[:, None] - cy[..., None, None]  # (..., 28, 1): rows
    r = across[..., None, None] / 2  # half the side or diameter
    square = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    circle = dx * dx + dy * dy <= r * r
    # Triangles centred on their bounding box, legs of length `across`: base (hypotenuse)
    # 2r with r = across / sqrt(2), apex r away from it (the right angle).
    r = r * np.sqrt(2)
    # "up": rows from cy - r/2 (apex) to cy + r/2 (base); half-width grows from 0 to r.
    up = (dy <= r / 2) & (np.abs(dx) <= dy + r / 2)
    down = (dy >= -r / 2) & (np.abs(dx) <= r / 2 - dy)
    right = (dx >= -r / 2) & (np.abs(dy) <= r / 2 - dx)  # base on the left, apex right
    left = (dx <= r / 2) & (np.abs(dy) <= dx + r / 2)
    out = np.select(
        [k == 0, k == 1, k == 2, k == 3, k == 4], [square, circle, up, right, down], left
    )
    return out


def draw_chunk(seed: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, Shapes]:
    """Images start..stop-1 as uint8 (n, 28, 28) of 0/255, counts (n, 6), their shapes."""
    drawn = [draw_params(seed, i) for i in range(start, stop)]
    counts = np.stack([d[0] for d in drawn])
    kinds = np.stack([d[1] for d in drawn])
    params = np.stack([d[2] for d in drawn])
    shapes = Shapes(kinds, params[..., 0], params[..., 1], params[..., 2])
    on = np.bitwise_xor.reduce(masks(kinds, shapes.cx, shapes.cy, shapes.across), axis=1)
    return on.astype(np.uint8) * 255, counts, shapes


def generate(n: int, seed: int, threads: int = THREADS) -> tuple[np.ndarray, np.ndarray, Shapes]:
    """n images in memory: uint8 (n, 28, 28), counts int (n, 6), their shapes."""
    starts = list(range(0, n, CHUNK))
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda s: draw_chunk(seed, s, min(n, s + CHUNK)), starts))
    if not parts:
        return np.zeros((0, SIZE, SIZE), np.uint8), np.zeros((0, 6), np.int64), _no_shapes()
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        Shapes(*(np.concatenate([getattr(p[2], f) for p in parts]) for f in _FIELDS)),
    )


_FIELDS = ("kind", "cx", "cy", "across")


def _no_shapes() -> Shapes:
    return Shapes(*(np.zeros((0, SHAPES_PER_IMAGE)) for _ in _FIELDS))


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def is_gsn_output(folder: Path) -> bool:
    """A folder this generator may overwrite: empty, or holding only its own files (a
    labels.csv with the GSN header, img_*.png, and temporary files of an interrupted run)."""
    if not folder.exists():
        return True
    names = [p.name for p in folder.iterdir()]
    for name in names:
        ours = name == LABELS or (name.startswith("img_") and name.endswith(".png"))
        if not ours and not name.startswith(f".{LABELS}."):
            return False
    if LABELS in names:
        try:
            with open(folder / LABELS, newline="") as f:
                first = next(csv.reader(f), None)
        except (OSError, UnicodeDecodeError):
            return False
        return first is not None and tuple(first) == HEADER
    return True


def write(out: Path, n: int, seed: int, threads: int = THREADS) -> tuple[np.ndarray, Shapes]:
    """Write n images and labels.csv (last) into `out`; returns (images, shapes) for stats.
    Refuses a folder that holds anything but a previous GSN output."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"gsn: {out} is a file; give --out a folder")
    if not is_gsn_output(out):
        raise CnnlabError(
            f"gsn: {out} is not empty and not a previous GSN output; give --out a new or "
            "empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / LABELS).unlink(missing_ok=True)  # no labels.csv names images of another run
    for old in out.glob("img_*.png"):
        old.unlink()
    images, counts, shapes = generate(n, seed, threads)

    def save(start: int) -> None:
        for i in range(start, min(n, start + CHUNK)):
            (out / image_name(i)).write_bytes(png_bytes(images[i]))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(save, range(0, n, CHUNK)))
    tmp = out / f".{LABELS}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(HEADER)
            for i in range(n):
                w.writerow([image_name(i), *counts[i].tolist()])
        os.replace(tmp, out / LABELS)
    finally:
        tmp.unlink(missing_ok=True)
    return images, shapes


def stats(images: np.ndarray, shapes: Shapes) -> dict[str, float]:
    """The generator's statistics: shape sizes in pixels (side, diameter, triangle leg),
    share of pixels on, share of shapes cut by the border."""
    if len(images) == 0:
        return {}
    across = shapes.across
    return {
        "images": float(len(images)),
        "shape size mean (px)": float(across.mean()),
        "shape size min (px)": float(across.min()),
        "shape size max (px)": float(across.max()),
        "pixels on": float((images > 0).mean()),
        "shapes cut by the border": float(shapes.cut().mean()),
    }
