"""Reliability diagrams: is a prediction made with 90 % confidence right 90 % of the time?

One panel per state of each probabilistic task's probabilities on the test set: as trained, and,
when the run was calibrated (`cnnlab calibrate`), at its fitted temperature. Bars are each
confidence bin's accuracy; the red part is its gap to the diagonal, whose count-weighted mean
is the ECE; the grey histogram below counts the predictions in each bin.
"""

from __future__ import annotations

from cnnlab.tasks import Task
from cnnlab.tasks.calibration import Bins, Rows, judged, made_worse
from cnnlab.viz.base import Chart, new_figure
from cnnlab.viz.run_view import RunView


def reliability(view: RunView) -> list[Chart]:
    charts = []
    for task in view.tasks_with("reliability"):
        rows = view.test_predictions.rows[task]
        fitted = view.tasks[task].temperature
        states = [("as trained", 1.0)]
        if fitted != 1.0:
            states.append((f"calibrated, T = {fitted:.3f}", fitted))
        fig = new_figure(4.2 * len(states), 5.2)
        axes = fig.subplots(2, len(states), squeeze=False, height_ratios=[3, 1])
        table = []
        for col, (label, t) in enumerate(states):
            b, numbers = judged(view.tasks[task], rows, t)
            table.append({"probabilities": label, "temperature": round(t, 4)} | _rounded(numbers))
            _panel(axes[0, col], axes[1, col], b, f"{task}: {label}\n", numbers)
        caption = (
            f"{_counted(view.tasks[task], rows, len(view.split('test')))}; 15 equal-width "
            "confidence bins; ECE: "
            "count-weighted mean gap, MCE: largest gap" + _worse(table)
        )
        charts.append(
            Chart(
                f"reliability_{task}",
                f"Reliability: {task}",
                fig,
                caption=caption,
                table=table,
                extra={"temperature": fitted, "states": table},
            )
        )
    return charts


def _worse(table: list[dict]) -> str:
    """A sentence when the fitted temperature made the test NLL worse: the ECE can still
    fall, and the panels alone would read as an improvement."""
    if len(table) < 2 or not made_worse(table[0]["NLL"], table[1]["NLL"]):
        return ""
    return (
        f". At T = {table[1]['temperature']:g} the test NLL is worse than as trained "
        f"({table[0]['NLL']:.4f} -> {table[1]['NLL']:.4f}): the temperature fitted on "
        "validation does not carry over to the test set; `cnnlab calibrate RUN --reset` "
        "goes back to T = 1"
    )


def _counted(task: Task, rows: Rows, images: int) -> str:
    """What the diagram bins: test images (those with a label, of `images`), a sample of
    their labelled pixels, or each image's several yes/no answers (a multi-label task's)."""
    n = len(rows.targets)
    if "pixels" in task.figures:
        return f"{n:,} labelled test pixels (a sample)"
    several = f", {rows.targets.shape[1]} predictions each" if rows.targets.ndim == 2 else ""
    if n < images:  # the others have no label
        return f"{n:,} labelled test images of {images:,}{several}"
    return f"{n:,} test images{several}"


def _rounded(numbers: dict[str, float]) -> dict[str, float]:
    return {"accuracy": round(numbers["accuracy"], 4), "NLL": round(numbers["nll"], 4),
            "ECE": round(numbers["ece"], 4), "MCE": round(numbers["mce"], 4)}  # fmt: skip


def _panel(top, bottom, b: Bins, title: str, numbers: dict) -> None:
    left, width = b.edges[:-1].numpy(), float(b.edges[1] - b.edges[0])
    acc, conf = b.accuracy.nan_to_num().numpy(), b.confidence.nan_to_num().numpy()
    filled = b.count.numpy() > 0
    top.bar(left[filled], acc[filled], width, align="edge", color="#4c72b0", edgecolor="white",
            label="accuracy")  # fmt: skip
    lo, hi = acc.clip(max=conf), acc.clip(min=conf)
    top.bar(left[filled], (hi - lo)[filled], width, bottom=lo[filled], align="edge",
            color="#c44e52", alpha=0.45, edgecolor="#c44e52", label="gap")  # fmt: skip
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect")
    top.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy in the bin")
    top.set_title(
        f"{title}NLL {numbers['nll']:.4f}, ECE {numbers['ece']:.4f}, MCE {numbers['mce']:.4f}",
        fontsize=10,
    )
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(left, b.count.numpy(), width, align="edge", color="grey")
    bottom.set(xlim=(0, 1), xlabel="confidence (top-class probability)", ylabel="count")
