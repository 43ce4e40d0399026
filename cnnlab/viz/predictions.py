"""The prediction grid (seed 002): test images with true and predicted labels, errors marked."""

from __future__ import annotations

import re

import torch

from cnnlab.errors import CnnlabError
from cnnlab.viz.base import Chart, new_figure, shorten, show_image
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
    """Lines under image i: per classification task true/pred, per regression task values."""
    preds, lines, wrong = view.test_predictions, [], False
    for task in view.recipe.tasks:
        t, p = preds.truth[task][i], preds.pred[task][i]
        if view.recipe.tasks[task].type == "classification":
            names = view.task_classes(task)
            ok = int(t) == int(p)
            wrong |= not ok
            lines.append(
                f"{shorten(names[int(t)])}"
                if ok
                else f"✗ {shorten(names[int(p)])}\n(true {shorten(names[int(t)])})"
            )
        else:
            lines.append(f"{task} {float(t):.3g} → {float(p):.3g}")
    return "\n".join(lines), wrong


def predictions(view: RunView, grid: str = "10x3") -> list[Chart]:
    rows, cols = parse_grid(grid)
    test = view.split("test")
    index = pick(len(test), rows * cols, view.recipe.seed)
    rows = (len(index) + cols - 1) // cols
    fig = new_figure(2.0 * cols, 2.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    n_wrong = 0
    for ax, i in zip(axes, index.tolist(), strict=False):
        text, wrong = _label(view, i)
        n_wrong += wrong
        show_image(ax, test.images[i])
        ax.set_xlabel(text, color=WRONG if wrong else RIGHT, fontsize=7)
        for side in ax.spines.values():
            side.set(color=WRONG if wrong else RIGHT, linewidth=2.5 if wrong else 0.8)
    for ax in axes[len(index) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"{len(index)} test images: predicted class\n(✗ and red = wrong, true class "
        f"in brackets)\nregression: true → predicted"
    )
    return [
        Chart(
            "predictions",
            f"Predictions ({rows}×{cols} test images)",
            fig,
            f"{n_wrong} of {len(index)} shown are wrong.",
            extra={"index": index.tolist()},
        )
    ]
