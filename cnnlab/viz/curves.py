"""Learning curves: total loss, then one row per task (its loss | its metrics), per epoch."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cnnlab.errors import CnnlabError
from cnnlab.viz.base import Chart, new_figure
from cnnlab.viz.run_view import RunView

SPLITS = {"train": "--", "val": "-"}  # line style per split (matplotlib)


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _panels(view: RunView) -> list[tuple[str, list[str]]]:
    """(panel title, metric suffixes) — "loss" first, then each task's loss and metrics."""
    panels = [("total loss", ["loss"])]
    for name, task in view.recipe.tasks.items():
        metrics = [m for m in task.metric_names() if m != "loss"]
        panels += [
            (f"{name}: loss", [f"{name}.loss"]),
            (f"{name}: metrics", [f"{name}.{m}" for m in metrics]),
        ]
    return panels


def curves(view: RunView) -> list[Chart]:
    rows = view.metrics()
    if not rows:
        raise CnnlabError(f"{view.run.metrics_path} holds no epochs yet")
    panels = _panels(view)
    ncols, nrows = 2, (len(panels) + 1) // 2
    fig = new_figure(9, 2.8 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    pfig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[p[0] for p in panels])
    for i, (title, keys) in enumerate(panels):
        ax = axes[i]
        for key in keys:
            for split, style in SPLITS.items():
                x, y = _series(rows, f"{split}.{key}")
                if not x:
                    continue
                label = f"{split} {key.rsplit('.', 1)[-1]}"
                ax.plot(x, y, style, marker="o", markersize=3, label=label)
                pfig.add_trace(
                    go.Scatter(
                        x=x,
                        y=y,
                        mode="lines+markers",
                        name=label,
                        legendgroup=title,
                        line={"dash": "dash" if split == "train" else "solid"},
                    ),
                    row=i // ncols + 1,
                    col=i % ncols + 1,
                )
        ax.set(title=title, xlabel="epoch", ylabel=title.rsplit(": ", 1)[-1])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    # No legend (it would repeat per panel): hovering shows every series of an epoch.
    pfig.update_layout(
        height=300 * nrows, showlegend=False, hovermode="x unified", margin={"t": 40, "b": 30}
    )
    pfig.update_xaxes(title_text="epoch")
    return [
        Chart(
            "curves",
            "Learning curves",
            fig,
            "Train (dashed) and validation (solid) loss and metrics per epoch.",
            plotly=pfig,
        )
    ]
