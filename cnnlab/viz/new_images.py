"""A run's answers on images it has never seen (`cnnlab predict RUN IMAGES`): each image with
every task's answer under it, and each per-pixel task's map beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.inference import Predictions
from cnnlab.viz.base import new_figure, show_image
from cnnlab.viz.pixels import class_colours, paint

SHOWN = 16  # images drawn; the CSV holds them all


def caption(predictions: Predictions, i: int) -> str:
    """Image i's answers, one task per line."""
    lines = []
    for name, p in predictions.items():
        if p.labels is not None:
            lines.append(f"{name}: {p.labels[i]} ({p.probabilities[i].max():.0%})")
        elif p.values is not None:
            v = np.atleast_1d(p.values[i])
            lines.append(
                f"{name}: " + ", ".join(f"{x:.3g}" for x in v[:4]) + (" …" if len(v) > 4 else "")
            )
    return "\n".join(lines)


def draw_predictions(files: list[Path], predictions: Predictions, out: Path, title: str) -> Path:
    """The first SHOWN images, each with its answers (and its per-pixel maps), as a PNG."""
    maps = [n for n, p in predictions.items() if p.index is not None and p.index.ndim == 3]
    n = min(len(files), SHOWN)
    cols = 1 + len(maps)
    per_row = max(1, 4 // cols)
    rows = (n + per_row - 1) // per_row
    lines = max(1, caption(predictions, 0).count("\n") + 1)
    fig = new_figure(2.2 * cols * per_row, (2.2 + 0.28 * lines) * rows)
    axes = fig.subplots(rows, cols * per_row, squeeze=False).flatten()
    for ax in axes:
        ax.axis("off")
    for i in range(n):
        with Image.open(files[i]) as im:
            image = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        ax = axes[i * cols]
        show_image(ax, image)
        ax.set_title(files[i].name, fontsize=7)
        ax.set_xlabel(caption(predictions, i), fontsize=7)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for k, name in enumerate(maps):
            p = predictions[name]
            show_image(
                axes[i * cols + 1 + k],
                paint(torch.from_numpy(p.index[i]), class_colours(p.classes)),
            )
            axes[i * cols + 1 + k].set_title(f"{name} (predicted)", fontsize=7)
    fig.suptitle(title, fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out
