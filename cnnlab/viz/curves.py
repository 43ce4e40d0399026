"""Learning curves: total loss, then one row per task (its loss | its metrics), per epoch."""

from __future__ import annotations

import plotly.colors
import plotly.graph_objects as go
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator
from plotly.subplots import make_subplots

from cnnlab.errors import CnnlabError
from cnnlab.viz.base import Chart, new_figure
from cnnlab.viz.run_view import RunView

# Line style per split, (matplotlib, plotly): the caption and both charts say the same.
SPLITS = {"train": ("--", "dash"), "val": ("-", "solid")}
# Plotly: one colour per metric in a panel, shared by its train and val lines (the dash
# tells them apart), so the legend pairs them.
COLORS = plotly.colors.qualitative.Plotly
SWITCH_LABEL = "backbone trains from here"  # the marker at model.unfreeze_at


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _panels(view: RunView) -> list[tuple[str, list[str]]]:
    """(panel title, metric suffixes) — "loss" first, then each task's loss (of several
    tasks) and metrics (a task of one's own may have none but its loss)."""
    panels = [("total loss", ["loss"])]
    for name, task in view.tasks.items():
        if len(view.tasks) > 1:  # one task's loss is the total (times its weight): once
            panels.append((f"{name}: loss", [f"{name}.loss"]))
        metrics = [f"{name}.{m}" for m in task.metrics if m != "loss"]
        panels += [(f"{name}: metrics", metrics)] if metrics else []
    return panels


def unfrozen_at(view: RunView, rows: list[dict]) -> int | None:
    """The epoch the backbone began to train (`model.unfreeze_at`), when the run reached it."""
    at = getattr(view.recipe.model, "unfreeze_at", None)
    return at if at is not None and any(r["epoch"] >= at for r in rows) else None


def switch_caption(view: RunView, rows: list[dict]) -> str:
    """What the marker means, and which phase the tested model (best.pt) comes from: a
    reader assumes the fine-tuned network was tested, while the best validation epoch may
    come before the switch. Empty for a run without `model.unfreeze_at`."""
    cfg = view.recipe.model
    at = getattr(cfg, "unfreeze_at", None)
    if at is None:
        return ""
    heads_only = cfg.freeze == "all_but_head"
    before = "only the heads" if heads_only else f"the heads and the last {cfg.train_stages} stages"
    if heads_only and cfg.cache_features:
        before += ", on cached pooled features without augmentation,"
    best = view.checkpoint["loop"]["epoch"]
    phase = "heads-only" if heads_only else "partly frozen"
    tested = f"the tested model (best.pt, epoch {best}) is from the {phase} phase"
    if unfrozen_at(view, rows) is None:
        return f" The run ended before epoch {at} (model.unfreeze_at): {tested}."
    rate = f"{cfg.backbone_lr:g} × lr" if cfg.backbone_lr != 1.0 else "lr"
    said = (
        f" The dotted line marks model.unfreeze_at: before it {before} trained; from epoch "
        f"{at} on the whole network trains, the backbone at {rate}."
    )
    return said + (f" The best epoch is before it: {tested}." if best < at else "")


def _draw_panel(
    ax: Axes, rows: list[dict], title: str, keys: list[str], switch: int | None
) -> None:
    for key in keys:
        for split, (style, _) in SPLITS.items():
            x, y = _series(rows, f"{split}.{key}")
            if x:
                label = f"{split} {key.rsplit('.', 1)[-1]}"  # the panel title names the task
                ax.plot(x, y, style, marker="o", markersize=3, label=label)
    if switch is not None:  # between the last frozen epoch and the first that trains it all
        ax.axvline(switch - 0.5, color="grey", linestyle=":", label=SWITCH_LABEL)
    ax.set(title=title, xlabel="epoch", ylabel=title.rsplit(": ", 1)[-1])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5
    ax.grid(alpha=0.3)
    if ax.lines:  # a metric never logged (validation off) leaves its panel empty
        ax.legend(fontsize=7)


def _plotly_panel(
    pfig: go.Figure, rows: list[dict], title: str, keys: list[str], cell: tuple[int, int]
) -> None:
    """One legend serves every panel, so a trace names its task too ("val cls accuracy"),
    and the panel's traces are grouped under its title."""
    for k, key in enumerate(keys):
        color = COLORS[k % len(COLORS)]
        for split, (_, dash) in SPLITS.items():
            x, y = _series(rows, f"{split}.{key}")
            if not x:
                continue
            trace = go.Scatter(
                x=x,
                y=y,
                mode="lines+markers",
                name=f"{split} {key.replace('.', ' ')}",
                legendgroup=title,
                legendgrouptitle_text=title,
                line={"dash": dash, "color": color},
            )
            pfig.add_trace(trace, row=cell[0], col=cell[1])


def curves(view: RunView) -> list[Chart]:
    rows = view.metrics()
    if not rows:
        raise CnnlabError(f"{view.run.metrics_path} holds no epochs yet")
    panels = _panels(view)
    ncols, nrows = 2, (len(panels) + 1) // 2
    fig = new_figure(9, 2.8 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    pfig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[p[0] for p in panels])
    switch = unfrozen_at(view, rows)
    for i, (title, keys) in enumerate(panels):
        _draw_panel(axes[i], rows, title, keys, switch)
        _plotly_panel(pfig, rows, title, keys, cell=(i // ncols + 1, i % ncols + 1))
        if switch is not None:
            pfig.add_vline(
                x=switch - 0.5, line={"dash": "dot", "color": "grey"},
                annotation_text=SWITCH_LABEL if i == 0 else None,
                row=i // ncols + 1, col=i % ncols + 1,
            )  # fmt: skip
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    pfig.update_layout(
        height=300 * nrows,
        showlegend=True,
        # a click hides one line, not its whole panel
        legend={"groupclick": "toggleitem", "tracegroupgap": 10},
        hovermode="x unified",
        margin={"t": 40, "b": 30},
    )
    pfig.update_xaxes(title_text="epoch", tickformat="d", dtick=1 if len(rows) <= 12 else None)
    return [
        Chart(
            "curves",
            "Learning curves",
            fig,
            "Train (dashed) and validation (solid) loss and metrics per epoch."
            + switch_caption(view, rows),
            plotly=pfig,
        )
    ]
