"""Dead units (seed 003): channels / hidden units that never activate on the test set.

A unit of an activation layer is alive when its output is > 0 for at least one position of
one test image; a dead ReLU unit passes no gradient, so it no longer learns. Which units
fired is recorded by the test pass every figure shares (`evaluation.Recorder`, on each image
as it is), so this figure makes no pass of its own.
"""

from __future__ import annotations

from torch import nn

from cnnlab.evaluation import SplitPredictions
from cnnlab.viz.base import Chart, new_figure
from cnnlab.viz.hooks import activation_layers, check_single_use
from cnnlab.viz.run_view import RunView


def dead_table(predictions: SplitPredictions) -> list[dict]:
    """A row per activation layer: its units and how many of them never fired."""
    check_single_use(predictions.reused)
    return [
        {
            "layer": name,
            "units": len(a),
            "dead": int((~a).sum()),
            "dead fraction": round(float((~a).float().mean()), 4),
        }
        for name, a in predictions.alive.items()
    ]


def dead_units(view: RunView) -> list[Chart]:
    layers = activation_layers(view.model)  # none (functional activations): one line saying so
    smooth = sorted({type(m).__name__ for m in layers.values() if not isinstance(m, nn.ReLU)})
    rows = dead_table(view.test_predictions)
    total = sum(r["units"] for r in rows)
    dead = sum(r["dead"] for r in rows)
    fig = new_figure(7, 0.9 + 0.3 * len(rows))
    ax = fig.subplots()
    ax.barh(range(len(rows)), [r["dead fraction"] for r in rows], color="#7f8c8d")
    ax.set_yticks(range(len(rows)), [f"{r['layer']} ({r['units']})" for r in rows])
    ax.invert_yaxis()
    ax.set(
        xlim=(0, 1),
        xlabel="fraction of units never > 0 on the test set",
        ylabel="activation layer (units)",
        title=f"Dead units: {dead} of {total}",
    )
    ax.grid(axis="x", alpha=0.3)
    return [
        Chart(
            "dead_units",
            "Dead units",
            fig,
            f"{dead} of {total} units ({dead / max(total, 1):.1%}) never activate on the "
            f"{len(view.split('test'))} test images."
            + (
                f" Under {', '.join(smooth)} a unit never above 0 still passes a gradient (its "
                "slope below 0 is not 0, as ReLU's is): it never fired, but it can still learn."
                if smooth
                else ""
            ),
            table=rows,
            extra={"dead": dead, "total": total},
        )
    ]
