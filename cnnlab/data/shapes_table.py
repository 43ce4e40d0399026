"""A generated table of images and targets: the layout `data.source: table` reads, with every
kind of target in it.

Each RGB image holds one to three shapes (discs, squares, triangles) in random colours on a
noisy background, placed apart. `labels.csv` beside `images/` and `masks/`:

    image,mask,kind,area,discs,squares,triangles,split
    images/00000.png,masks/00000.png,square,0.183,0,2,0,train

- kind: the type of the largest shape (a category);
- area: the share of the image the shapes cover (a number);
- discs, squares, triangles: how many of each (a vector target; a flip or a turn keeps them);
- mask: a palette PNG of class indices, 0 background, 1 disc, 2 square, 3 triangle;
- split: train (80 %), val (10 %), test (10 %).

Deterministic: image i of seed s is drawn from its own numpy Generator seeded with (s, i).
labels.csv is written last, so an interrupted run never leaves a table naming missing files.
`cnnlab data shapes --out FOLDER` writes one; cnnlab/recipes/table_example.yaml trains on it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.errors import CnnlabError

TYPES = ("disc", "square", "triangle")
MASK_CLASSES = ["background", *TYPES]  # mask index k names MASK_CLASSES[k]
COLUMNS = ("image", "mask", "kind", "area", "discs", "squares", "triangles", "split")
PALETTE = [(0, 0, 0), (230, 80, 60), (60, 140, 230), (240, 200, 40)]  # what a viewer shows
LABELS = "labels.csv"


def _shape(kind: int, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    """(size, size) bool: a disc, an axis-aligned square or an upward triangle."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    if kind == 0:
        return (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    if kind == 1:
        return (abs(y - cy) <= r * 0.85) & (abs(x - cx) <= r * 0.85)
    top, bottom = cy - r, cy + r
    half = (y - top) / (2 * r) * r  # the half-width grows from the apex to the base
    return (y >= top) & (y <= bottom) & (abs(x - cx) <= half)


def draw(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """(uint8 RGB (size, size, 3), uint8 mask (size, size), counts per type, kind)."""
    rng = np.random.default_rng([seed, index])
    image = rng.integers(0, 90, (size, size, 3)).astype(np.int16)
    image += rng.integers(0, 80, 3).astype(np.int16)  # a tinted background
    mask = np.zeros((size, size), dtype=np.uint8)
    counts, placed, largest = [0, 0, 0], [], (0.0, 0)
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):  # shapes apart: rejection on their circles
            r = float(rng.uniform(size * 0.1, size * 0.22))
            cy, cx = rng.uniform(r, size - r, 2)
            if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + 1) ** 2 for y, x, q in placed):
                break
        else:
            continue
        kind = int(rng.integers(0, 3))
        where = _shape(kind, size, cy, cx, r)
        image[where] = rng.integers(120, 256, 3)
        mask[where] = kind + 1
        counts[kind] += 1
        placed.append((cy, cx, r))
        largest = max(largest, (r, kind))
    return np.clip(image, 0, 255).astype(np.uint8), mask, counts, largest[1]


def _split(index: int, n: int) -> str:
    share = index / n
    return "train" if share < 0.8 else "val" if share < 0.9 else "test"


def write(out: Path, n: int = 2000, size: int = 32, seed: int = 0) -> Path:
    """Write `n` rows into `out` (new, empty, or one this wrote before); returns labels.csv."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / LABELS).is_file():
        raise CnnlabError(f"{out} holds other files; write the table into a new or empty folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    palette = [v for rgb in PALETTE for v in rgb]
    rows = []
    for i in range(n):
        image, mask, counts, kind = draw(i, size, seed)
        name = f"{i:05d}.png"
        Image.fromarray(image, "RGB").save(out / "images" / name)
        m = Image.frombytes("P", (size, size), mask.tobytes())  # indices, shown in colour
        m.putpalette(palette)
        m.save(out / "masks" / name)
        area = round(float((mask > 0).mean()), 4)
        rows.append([f"images/{name}", f"masks/{name}", TYPES[kind], area, *counts, _split(i, n)])
    tmp = out / f".{LABELS}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    tmp.replace(out / LABELS)
    return out / LABELS
