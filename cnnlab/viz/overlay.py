"""Curves of several runs on shared axes, one colour per label: a sweep's learning curves
(a label per group of trials) and `cnnlab compare`'s (a label per run) are both this chart.

Each panel holds, per label, the curves of that label's runs; a label keeps its colour in
every panel, and the legend names each label once. In plotly one trace per label and panel
(its runs' curves joined by gaps), so thousands of trials stay fast, and a click on a label
in the legend hides it in every panel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from plotly.subplots import make_subplots

from cnnlab.viz.base import Chart, new_figure

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]

Curve = list[tuple[float, float]]  # (epoch, value) points of one run


@dataclass
class Panel:
    title: str  # also the y axis's label: a metric's name
    lines: dict[str, list[Curve]]  # label -> the curves of its runs (empty ones left out)


def curve(rows: list[dict], key: str) -> Curve:
    """A metric's (epoch, value) points over a run's metrics rows (epochs that lack it
    skipped: validation every few epochs)."""
    return [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]


def overlaid(key: str, title: str, panels: list[Panel], labels: list[str], caption="") -> Chart:
    """One chart of `panels` (two columns when there are several); `labels` give the colours
    (in this order) and the legend's order."""
    colour = {label: COLOURS[i % len(COLOURS)] for i, label in enumerate(labels)}
    ncols = 1 if len(panels) == 1 else 2
    nrows = (len(panels) + ncols - 1) // ncols
    fig = new_figure(7, 4) if len(panels) == 1 else new_figure(9, 2.8 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    pfig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[p.title for p in panels])
    shown: set[str] = set()  # labels already in plotly's legend
    for i, panel in enumerate(panels):
        _draw(axes[i], panel, labels, colour)
        for label in (label for label in labels if panel.lines.get(label)):
            group = panel.lines[label]
            xs = [x for pts in group for x in [*(p[0] for p in pts), None]]
            ys = [y for pts in group for y in [*(p[1] for p in pts), None]]
            pfig.add_scatter(
                x=xs, y=ys, mode="lines+markers", name=label, legendgroup=label,
                showlegend=label not in shown, line={"color": colour[label]},
                row=i // ncols + 1, col=i % ncols + 1,
            )  # fmt: skip
            shown.add(label)
        pfig.update_yaxes(title_text=panel.title, row=i // ncols + 1, col=i % ncols + 1)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=colour[label], marker="o", ms=3, label=label) for label in labels
    ]
    axes[0].legend(handles=handles, fontsize=7 if len(panels) > 1 else 8)
    last = max((x for p in panels for g in p.lines.values() for c in g for x, _ in c), default=0)
    pfig.update_xaxes(title_text="epoch", dtick=1 if last <= 12 else None)  # no epoch 1.5
    pfig.update_layout(height=420 if nrows == 1 else 300 * nrows, margin={"t": 40, "b": 30})
    return Chart(key, title, fig, caption, plotly=pfig)


def _draw(ax, panel: Panel, labels: list[str], colour: dict[str, str]) -> None:
    for label in labels:
        group = panel.lines.get(label)
        if not group:
            continue
        ax.add_collection(LineCollection(group, colors=colour[label], alpha=0.7, linewidths=1))
        flat = np.asarray([p for pts in group for p in pts], float)  # (points, 2)
        ax.plot(flat[:, 0], flat[:, 1], "o", ms=3, color=colour[label])  # 1-epoch runs too
    ax.autoscale()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5
    ax.set(xlabel="epoch", ylabel=panel.title, title=panel.title)
    ax.grid(alpha=0.3)
