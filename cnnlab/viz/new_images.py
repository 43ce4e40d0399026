"""A run's answers on images it has never seen (`cnnlab predict RUN IMAGES`): each image with
every task's answer under it, and each per-pixel task's map beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnlab.data.decoded import as_read, open_image
from cnnlab.inference import Predictions
from cnnlab.viz.mosaic import Tile, mosaic, rgb, rows_of
from cnnlab.viz.pixels import class_colours, paint

SHOWN = 16  # images drawn; the CSV holds them all
SIDE = 200  # pixels


def caption(predictions: Predictions, i: int) -> str:
    """Image i's answers, one task per line."""
    lines = []
    for name, p in predictions.items():
        if p.labels is not None:
            lines.append(f"{name}: {p.labels[i]} ({p.probabilities[i].max():.0%})")
        elif p.values is not None:
            v = np.atleast_1d(p.values[i])
            names = [f"{c} " for c in p.components or []] or [""] * len(v)  # a vector's parts
            said = ", ".join(f"{c}{x:.3g}" for c, x in zip(names[:4], v[:4], strict=True))
            lines.append(f"{name}: {said}" + (" …" if len(v) > 4 else ""))
    return "\n".join(lines)


def draw_predictions(files: list[Path], predictions: Predictions, out: Path, title: str) -> Path:
    """The first SHOWN images, each with its answers (and its per-pixel maps), as a PNG."""
    maps = [n for n, p in predictions.items() if p.index is not None and p.index.ndim == 3]
    n = min(len(files), SHOWN)
    cols = 1 + len(maps)
    per_row = max(1, 4 // cols)
    tiles: list[Tile] = []
    for i in range(n):
        with open_image(files[i]) as im:
            im = as_read(im).convert("RGB")  # as the model read it: upright, 8 bits
            im.thumbnail((SIDE, SIDE))  # a photo's megapixels shrink here, not in the grid
            image = np.array(im)
        tiles.append(Tile(image, files[i].name, caption(predictions, i)))
        for name in maps:
            p = predictions[name]
            painted = paint(torch.from_numpy(p.index[i]), class_colours(p.classes))
            tiles.append(Tile(rgb(painted), f"{name} (predicted)"))
    width = cols * per_row
    fig = mosaic(rows_of(tiles, width), SIDE, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
