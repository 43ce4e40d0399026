"""Regression tasks: predicted vs true on the test set, and the residual histogram (every
component of a vector target in one plot: GSN's six counts share their units)."""

from __future__ import annotations

import plotly.graph_objects as go
import torch
from matplotlib.ticker import MaxNLocator

from cnnlab.tasks.base import labelled, labelled_rows
from cnnlab.tasks.intervals import Interval, described
from cnnlab.viz.base import Chart, new_figure
from cnnlab.viz.run_view import RunView

MAX_POINTS = 3000  # interactive scatter: a sample keeps report.html small


def regression(view: RunView) -> list[Chart]:
    preds = view.test_predictions
    charts = []
    for task in view.tasks_with("regression"):
        truth = preds.truth[task].float()  # (N,) or (N, K); NaN: no label
        images, per_image = truth.shape[0], truth[0].numel()
        at = labelled(truth.flatten()).nonzero().squeeze(1)  # each labelled value's place
        y, p = truth.flatten()[at], preds.pred[task].float().flatten()[at]
        resid = p - y
        labelled_images = int(labelled_rows(truth).sum())
        rmse = resid.pow(2).mean().sqrt().item()
        mae = resid.abs().mean().item()
        target = view.recipe.tasks[task].target
        fig = new_figure(8, 3.4)
        ax1, ax2 = fig.subplots(1, 2)
        lo, hi = min(y.min(), p.min()).item(), max(y.max(), p.max()).item()
        ax1.scatter(y.numpy(), p.numpy(), s=4, alpha=0.4)
        ax1.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="y = x")
        interval = view.tasks[task].interval
        one = interval is not None and len(set(interval.halfwidth)) == 1  # one width: a band
        if one:
            w = interval.halfwidth[0]
            ax1.fill_between([lo, hi], [lo - w, hi - w], [lo + w, hi + w], color="#4c72b0",
                             alpha=0.12, label=f"{interval.coverage:.0%} interval")  # fmt: skip
        ax1.set(
            xlabel=f"true {target}",
            ylabel=f"predicted {target}",
            title=f"{task}: test RMSE {rmse:.4g}, MAE {mae:.4g}",
        )
        ax1.legend()
        ax2.hist(resid.numpy(), bins=50)
        if one:  # where it stops, over the residuals: a narrow band shows there
            ax2.axvspan(-w, w, color="#4c72b0", alpha=0.12,
                        label=f"{interval.coverage:.0%} interval: ± {w:.3g}")  # fmt: skip
            ax2.legend(fontsize=8)
        ax2.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 1.25 images
        ax2.axvline(0, color="k", linewidth=1)
        ax2.set(
            xlabel=f"residual (predicted - true {target})",
            ylabel="test images",
            title=f"{task}: residuals",
        )
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:MAX_POINTS]
        pfig = go.Figure(
            [
                go.Scatter(
                    x=y[keep].tolist(),
                    y=p[keep].tolist(),
                    mode="markers",
                    marker={"size": 4, "opacity": 0.5},
                    name="test images",
                    text=[f"test #{int(at[i]) // per_image}" for i in keep.tolist()],
                ),
                go.Scatter(
                    x=[lo, hi],
                    y=[lo, hi],
                    mode="lines",
                    name="y = x",
                    line={"dash": "dash", "color": "black"},
                ),
            ]
        )
        pfig.update_layout(
            height=420,
            xaxis_title=f"true {target}",
            yaxis_title=f"predicted {target}",
            title=f"{task}: predicted vs true",
        )
        charts.append(
            Chart(
                f"regression_{task}",
                f"Regression: {task}",
                fig,
                f"Test set, {images} images"
                + (f", all {per_image} outputs of each" if per_image > 1 else "")
                + (
                    f"; {labelled_images} of them labelled, and only their values shown."
                    if labelled_images < images
                    else "."
                )
                + held(task, view.recipe.tasks[task].bounds, p)
                + within(
                    interval,
                    view.tasks[task].info.components,
                    preds.truth[task].float(),
                    preds.pred[task].float(),
                ),
                plotly=pfig,
                extra={"rmse": rmse, "mae": mae, "n": images, "labelled": labelled_images},
            )
        )
    return charts


def held(task: str, bounds: tuple[float | None, float | None] | None, pred: torch.Tensor) -> str:
    """The caption's word on the task's bounds: a row of points along a bound is the clamp,
    not the model agreeing with itself."""
    if bounds is None or bounds == (None, None):
        return ""
    at = sum(
        int((pred == torch.tensor(b, dtype=pred.dtype)).sum()) for b in bounds if b is not None
    )
    shown = ", ".join("null" if b is None else f"{b:g}" for b in bounds)
    return (
        f" Predictions are clamped to tasks.{task}.bounds [{shown}]; {at:,} of these values "
        "sit on a bound."
    )


def within(
    interval: Interval | None, components: list[str] | None, truth: torch.Tensor, pred: torch.Tensor
) -> str:
    """The caption's word on a calibrated interval: the share of test values it holds, the
    promise (fitted on validation) kept or not."""
    if interval is None:
        return ""
    return f" The {interval.coverage:.0%} interval: {described(interval, components, truth, pred)}."
