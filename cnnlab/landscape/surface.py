"""The loss (and accuracy) at every point of a grid around trained weights.

At a point (a, b) the weights are set in place to w + a·d1 (+ b·d2): no model is rebuilt,
nothing accumulates rounding (each point starts again from the saved w), and the saved
weights and buffers are copied back bit for bit when the work ends, however it ends. The
data is a fixed batch set held in memory; every point is one pass over it in inference
mode, BatchNorm in evaluation mode unless asked otherwise (then its running statistics are
restored with the weights).

The grid is saved as it is filled (`Surface.save`), so an interrupted or budgeted run
keeps its points and a re-run with the same settings fills only the missing ones.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnlab.landscape.directions import Direction, parameters

# model -> (mean loss, accuracy) over the fixed batches (accuracy NaN without a class task)
Evaluate = Callable[[nn.Module], tuple[float, float]]


@dataclass
class Settings:
    """What a surface was computed with: a re-run continues only a surface of the same."""

    dims: int
    points: int
    span: float
    samples: int
    seed: int
    bn: str = "eval"  # eval: running statistics; train: each batch's own
    include_1d: bool = False
    directions: str = "random"  # random (filter-normalized) | pca (of a training path)


@dataclass
class Surface:
    settings: Settings
    coords: list[float]  # the axis values, the same on each axis
    loss: list[list[float]]  # (points, points) for 2-D, (1, points) for 1-D; NaN: not yet
    accuracy: list[list[float]]
    seconds: float = 0.0  # evaluation time so far
    extra: dict = field(default_factory=dict)  # e.g. the training path's coordinates

    @classmethod
    def empty(cls, s: Settings) -> Surface:
        coords = torch.linspace(-s.span, s.span, s.points).tolist()
        rows = s.points if s.dims == 2 else 1
        nan = [[math.nan] * s.points for _ in range(rows)]
        return cls(s, coords, nan, [row[:] for row in nan])

    def missing(self) -> list[tuple[int, int]]:
        return [
            (i, j) for i, row in enumerate(self.loss) for j, v in enumerate(row) if math.isnan(v)
        ]

    def save(self, path: Path) -> None:
        """Atomically: a crash mid-write leaves the previous file whole."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), allow_nan=True))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Surface:
        raw = json.loads(path.read_text())
        return cls(Settings(**raw.pop("settings")), **raw)

    def point(self, i: int, j: int) -> tuple[float, float]:
        """(a, b) of grid cell (row i, column j); 1-D: (a, 0). Rows follow d2, columns d1."""
        b = self.coords[i] if self.settings.dims == 2 else 0.0
        return self.coords[j], b


@contextmanager
def restored(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Yields copies of the weights; puts weights and buffers back exactly on exit."""
    weights = [p.detach().clone() for p in parameters(model)]
    buffers = [b.detach().clone() for b in model.buffers()]
    try:
        yield weights
    finally:
        with torch.no_grad():
            for p, w in zip(parameters(model), weights, strict=True):
                p.copy_(w)
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)


def fill(
    model: nn.Module,
    surface: Surface,
    dirs: list[Direction],
    evaluate: Evaluate,
    save: Callable[[Surface], None] | None = None,
    budget_s: float | None = None,
    on_point: Callable[[], None] | None = None,
) -> bool:
    """Evaluate every missing point (saving as it goes); False if the budget ran out."""
    started, last_save = time.monotonic(), time.monotonic()
    done_before, complete = surface.seconds, True
    with restored(model) as w, torch.no_grad():
        model.eval()  # dropout off; with bn=train only BatchNorm uses each batch's statistics
        if surface.settings.bn == "train":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        params = parameters(model)
        for n, (i, j) in enumerate(surface.missing()):
            if n and budget_s is not None and time.monotonic() - started > budget_s:
                complete = False  # (every call does one point at least: a re-run advances)
                break
            a, b = surface.point(i, j)
            for k, p in enumerate(params):
                step = a * dirs[0][k]
                if len(dirs) > 1:
                    step = step + b * dirs[1][k]
                p.copy_(w[k] + step)
            surface.loss[i][j], surface.accuracy[i][j] = evaluate(model)
            surface.seconds = done_before + time.monotonic() - started
            if on_point:
                on_point()
            if save and time.monotonic() - last_save > 10:
                save(surface)
                last_save = time.monotonic()
    model.eval()
    if save:
        save(surface)
    return complete
