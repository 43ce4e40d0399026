"""The sweep report's charts as the figure layer's `Chart`s: each one's data is worked out
once, then drawn twice from it, as a PNG (matplotlib, no pyplot) and as an interactive plotly
chart for report.html.

- the sweep metric against each trial's start time, with the best so far;
- parallel coordinates: one line per trial across the parameters and the metric;
- the parameters' importance for the sweep metric;
- learning curves, one colour per group of trials (cnnlab/viz/overlay.py: `cnnlab compare`'s
  chart too).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import plotly.graph_objects as go
from matplotlib import colormaps
from matplotlib.collections import LineCollection

from cnnlab.sweeps.results import TrialRow
from cnnlab.sweeps.statistics import group_order, param_columns
from cnnlab.tasks import Goal
from cnnlab.viz.base import Chart, new_figure
from cnnlab.viz.overlay import Curve, Panel, curve, overlaid

OUTCOME_COLOURS = {"complete": "#1f77b4", "pruned": "#ff7f0e"}


def metric_vs_time(rows: list[TrialRow], metric: str, goal: Goal) -> Chart:
    timed = sorted((r for r in rows if r.start and r.value is not None), key=lambda r: r.start)
    points = {o: [r for r in timed if r.outcome == o] for o in OUTCOME_COLOURS}
    done = points["complete"]
    best = [goal.best((r.value for r in done[: i + 1]), key=float) for i in range(len(done))]

    fig = new_figure(7, 4)
    ax = fig.subplots()
    pfig = go.Figure()
    for outcome, sel in points.items():
        if not sel and outcome != "complete":  # no "pruned" in the legend of a sweep without
            continue
        xs, ys = [r.start for r in sel], [r.value for r in sel]
        ax.scatter(xs, ys, s=14, label=outcome, color=OUTCOME_COLOURS[outcome])
        pfig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=outcome,
                                  marker={"color": OUTCOME_COLOURS[outcome]},
                                  text=[_hover(r) for r in sel], hoverinfo="text+y"))  # fmt: skip
    ax.step([r.start for r in done], best, where="post", color="black", label="best so far")
    step = {"shape": "hv", "color": "black"}
    pfig.add_trace(
        go.Scatter(x=[r.start for r in done], y=best, mode="lines", line=step, name="best so far")
    )
    ax.set(xlabel="trial start", ylabel=metric, title=f"{metric} vs trial start")
    ax.legend()
    fig.autofmt_xdate()
    pfig.update_layout(xaxis_title="trial start", yaxis_title=metric, height=420)
    return Chart("metric_vs_time", f"{metric} vs trial start time", fig, plotly=pfig)


def _hover(r: TrialRow) -> str:
    return f"trial {r.number}<br>" + "<br>".join(f"{k}={v}" for k, v in r.params.items())


def parallel(rows: list[TrialRow], metric: str, goal: Goal) -> Chart:
    """Each axis a parameter (categorical ones by level) and last the metric; the PNG scales
    each axis to its range and draws the best trials on top."""
    done = [r for r in rows if r.value is not None]
    axes: list[tuple[str, np.ndarray, list[str] | None]] = []  # (name, values, level names)
    for name, values in param_columns(done).items():
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            axes.append((name, np.asarray(values, float), None))
        else:
            levels = sorted({str(v) for v in values})
            axes.append((name, np.asarray([levels.index(str(v)) for v in values], float), levels))
    axes.append((metric, np.asarray([r.value for r in done], float), None))

    dims = [{"label": n, "values": v.tolist()} for n, v, _ in axes]
    for dim, (_, _, levels) in zip(dims, axes, strict=True):
        if levels is not None:
            dim.update(tickvals=list(range(len(levels))), ticktext=levels)
    metric_values = axes[-1][1]
    line = {"color": metric_values.tolist(), "colorscale": "Viridis", "showscale": True}
    pfig = go.Figure(go.Parcoords(dimensions=dims, line=line))
    pfig.update_layout(height=460)

    fig = new_figure(7, 4)
    ax = fig.subplots()
    if done:
        scaled = np.stack([_unit(v) for _, v, _ in axes], axis=1)  # (trials, axes)
        order = np.argsort(goal.sign * metric_values)  # the best drawn last, on top
        xs = np.arange(len(axes))
        segments = [np.column_stack([xs, scaled[i]]) for i in order]
        colours = colormaps["viridis"](scaled[order, -1])
        ax.add_collection(LineCollection(segments, colors=colours, alpha=0.6, linewidths=1))
        ax.set_xticks(range(len(axes)), [n for n, _, _ in axes], rotation=20, fontsize=7)
    ax.set(xlim=(-0.1, len(axes) - 0.9), ylim=(-0.05, 1.05), yticks=[],
           xlabel="parameter", ylabel="scaled to its range",
           title="parallel coordinates (each axis scaled to its range)")  # fmt: skip
    return Chart("parallel_coordinates", "Parallel coordinates", fig, plotly=pfig)


def _unit(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span else np.full_like(x, 0.5)


def importance(imp: dict[str, float], trials: int) -> Chart:
    """PED-ANOVA's importances of `trials` complete trials, with what they can be trusted for."""
    names = list(imp)[::-1]  # the most important on top
    values = [imp[n] for n in names]
    fig = new_figure(6, 1 + 0.4 * len(names))
    ax = fig.subplots()
    ax.barh(names, values)
    ax.set(xlabel="importance (PED-ANOVA)", ylabel="parameter", title="parameter importance")
    pfig = go.Figure(go.Bar(x=values, y=names, orientation="h"))
    pfig.update_layout(
        xaxis_title="importance (PED-ANOVA)",
        height=110 + 34 * len(names),  # the margins below plus one bar per parameter
        margin={"l": 20, "r": 20, "t": 20, "b": 60},
        yaxis={"automargin": True},  # long dotted names push the bars right, not off-page
    )
    caption = _importance_caption(values, trials)
    return Chart("importance", "Parameter importance", fig, caption, pfig)


def _importance_caption(values: list[float], trials: int) -> str:
    """How far the importances go: PED-ANOVA compares where the best 10 % of the trials lie
    with the whole search space, and Optuna advises at least 5 trials in that 10 %. With
    fewer (under 50 trials) the chart is a first hint; with one, or with every best trial
    tied, every parameter can come out the same (Optuna warns; the report says it here)."""
    top = max(1, math.ceil(0.1 * trials))
    few = f"from {trials} trials, PED-ANOVA's best 10 % is {top} trial{'s' if top > 1 else ''}"
    if len(values) >= 2 and max(values) - min(values) <= 1e-12:
        return (
            f"The importances are all equal: {few}, too few (or too alike) to tell the "
            "parameters apart. More trials may separate them."
        )
    if top < 5:
        return (
            f"A first hint only: {few}, where Optuna advises at least 5 (50 trials or more); "
            "the correlations below say more of so few."
        )
    return ""


TRIALS_APART = 10  # up to this many trials, each its own colour when not grouped


def curves(rows: list[TrialRow], labels: list[str] | None, metric: str) -> Chart:
    """One colour per group of trials (the chart `cnnlab compare` draws per run); `labels`
    None: one per trial, named by its parameters, for a sweep of a few trials (all of one
    outcome were one colour, and the best could not be told from the rest)."""
    named = labels if labels is not None else [_trial_label(r) for r in rows]
    lines: dict[str, list[Curve]] = defaultdict(list)
    for r, label in zip(rows, named, strict=True):
        points = curve(r.metrics, metric)
        if points:
            lines[label].append(points)
    order = sorted(lines, key=group_order) if labels is not None else list(lines)  # by trial
    return overlaid("learning_curves", "Learning curves", [Panel(metric, lines)], order)


def _trial_label(r: TrialRow) -> str:
    """`trial 3: lr=0.01, translate=2`: a trial by its number and its parameters' values,
    each by the last part of its name."""
    values = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in r.params.items())
    return f"{r.label}: {values}" if values else r.label


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
