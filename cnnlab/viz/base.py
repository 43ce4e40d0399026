"""What every figure function returns, and the small drawing helpers they share.

Figures are drawn on `matplotlib.figure.Figure` objects directly (no pyplot, no display):
they render with the Agg canvas, hold no global state and are safe in tests and servers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot; we never open a window

import numpy as np
import torch
from matplotlib.figure import Figure

from cnnlab.errors import CnnlabError

# Class names and run names are user text: never let "$" start matplotlib's mathtext.
RC = {"text.parse_math": False, "font.size": 9, "axes.titlesize": 9, "savefig.dpi": 130}
# zlib level 3 instead of Pillow's 6: a report's PNGs (3 MB for seed 002's prediction grid)
# were written in 4.8 s instead of 6.8, a little larger. No bbox_inches="tight": finding the
# box measures every artist once more, on top of the layout pass the constrained layout
# already makes, which keeps titles and labels inside (seed 002's PNGs: 20-30 % less time)
PNG = {"pil_kwargs": {"compress_level": 3}}


@dataclass
class Chart:
    """One figure of a run: a PNG for papers, optionally an interactive version and a table."""

    key: str  # file stem under figures/, e.g. "confusion_cls"
    title: str
    figure: Figure = field(repr=False)
    caption: str = ""
    plotly: Any | None = field(default=None, repr=False)  # a plotly Figure for report.html
    table: list[dict] | None = field(default=None, repr=False)  # rows under it in report.html
    extra: dict = field(default_factory=dict, repr=False)  # numbers tests and the report read

    def _repr_png_(self) -> bytes:
        """The picture Jupyter shows when a chart is the value of a cell."""
        buffer = io.BytesIO()
        with matplotlib.rc_context(RC):
            self.figure.savefig(buffer, format="png", **PNG)
        return buffer.getvalue()

    def save(self, folder: Path) -> Path:
        return write_png(self.pixels(), folder / f"{self.key}.png")

    def pixels(self) -> np.ndarray:
        """(H, W, 4) uint8: the chart drawn as `savefig` draws its PNG, not yet encoded."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        own = self.figure.canvas  # a figure of one's own may belong to pyplot: given back
        canvas = FigureCanvasAgg(self.figure)
        try:
            with matplotlib.rc_context(RC):
                canvas.print_figure(io.BytesIO(), format="raw")
            return np.asarray(canvas.renderer.buffer_rgba()).copy()
        finally:
            self.figure.set_canvas(own)


def write_png(pixels: np.ndarray, path: Path) -> Path:
    """`Chart.pixels` encoded as `savefig` encodes a PNG (the same bytes: tests/test_viz).
    Apart from drawing, so that the report compresses one chart while it draws the next:
    Pillow lets the other thread run while it compresses (0.4 s of seed 002's report)."""
    import matplotlib.image

    path.parent.mkdir(parents=True, exist_ok=True)
    dpi = RC["savefig.dpi"]
    kwargs = dict(PNG["pil_kwargs"])
    matplotlib.image.imsave(path, pixels, format="png", origin="upper", dpi=dpi, pil_kwargs=kwargs)
    return path


def new_figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(RC):
        return Figure(figsize=(width, height), layout="constrained")


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1] over the whole tensor (flat tensors become 0.5)."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.full_like(x, 0.5)


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns of a near-square grid: 64 -> 8x8, 32 -> 4x8, 10 -> 3x4."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    return rows, cols


def check_count(option: str, value: int, limit: int) -> None:
    """A figure option counting things (images, channels, neurons) must be 1..limit."""
    if not 1 <= value <= limit:
        raise CnnlabError(f"--{option} {value}: choose 1 to {limit}")


def shorten(text: str, n: int = 18) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
