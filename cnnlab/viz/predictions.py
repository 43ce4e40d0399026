"""The prediction grid (seed 002): test images with true and predicted labels, errors marked."""

from __future__ import annotations

import re

import torch

from cnnlab.errors import CnnlabError
from cnnlab.viz.base import Chart, shorten
from cnnlab.viz.mosaic import Tile, mosaic, rgb, rows_of, side_for
from cnnlab.viz.run_view import RunView

WRONG, RIGHT = "#c0392b", "#1e6b34"


def parse_grid(text: str) -> tuple[int, int]:
    """ "10x3" -> (10 rows, 3 columns)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text or "")
    if not match or not all(0 < int(g) <= 50 for g in match.groups()):
        raise CnnlabError(f"--grid {text!r}: expected ROWSxCOLS with 1-50 each, e.g. 10x3")
    return int(match.group(1)), int(match.group(2))


def pick(n_total: int, n: int, seed: int) -> torch.Tensor:
    """A seeded sample of test indices, sorted, so every report shows the same images."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=gen)[: min(n, n_total)].sort().values


def _label(view: RunView, i: int) -> tuple[str, bool]:
    """Lines under image i, one per task (each task words its own), and whether any is wrong."""
    preds, lines, wrong = view.test_predictions, [], False
    for name, task in view.tasks.items():
        text, bad = task.caption(preds.truth[name][i], preds.pred[name][i], shorten)
        lines.append(text)
        wrong |= bad
    return "\n".join(lines), wrong


def predictions(view: RunView, grid: str = "10x3") -> list[Chart]:
    rows, cols = parse_grid(grid)
    test = view.split("test")
    index = pick(len(test), rows * cols, view.recipe.seed)
    rows = (len(index) + cols - 1) // cols
    tiles, n_wrong = [], 0
    for i in index.tolist():
        text, wrong = _label(view, i)
        n_wrong += wrong
        colour = WRONG if wrong else RIGHT
        tiles.append(Tile(rgb(test.images[i]), label=text, color=colour, frame=4 if wrong else 1))
    legends = [f"{name}: {task.legend}" for name, task in view.tasks.items() if task.legend]
    title = "\n".join([f"{len(index)} test images (red and framed: wrong)", *legends])
    fig = mosaic(rows_of(tiles, cols), side_for(test.images.shape[-2], 200), title)
    return [
        Chart(
            "predictions",
            f"Predictions ({rows}×{cols} test images)",
            fig,
            f"{n_wrong} of {len(index)} shown are wrong.",
            extra={"index": index.tolist()},
        )
    ]
