"""Dead units (seed 003): channels / hidden units that never activate on the validation set.

A unit of an activation layer is alive when its output is > 0 for at least one position of
one validation image; a dead ReLU unit passes no gradient, so it no longer learns.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.precision import autocast_for
from cnnlab.viz.base import Chart, new_figure
from cnnlab.viz.hooks import activation_layers, analysis_mode, check_single_use, forward_hooks
from cnnlab.viz.run_view import RunView


def unit_max(y: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) -> (C,) each unit's largest output. A channels-last map is reduced as rows
    of W * C values, then over W: reducing (B*H*W, C) straight down its short rows, or
    `(y > 0).any(...)` on the mask, took 10-20x longer (a batch of seed 002 at 224 px: 28 ms
    against 260-590)."""
    last = y.movedim(1, -1)
    if y.dim() > 2 and last.is_contiguous():
        return (
            last.reshape(-1, last.shape[-2] * last.shape[-1]).amax(0).view(-1, y.shape[1]).amax(0)
        )
    return y.amax(dim=[d for d in range(y.dim()) if d != 1])


@torch.inference_mode()
def alive_units(model: nn.Module, batches) -> dict[str, torch.Tensor]:
    """Activation layer name -> (units,) bool: did the unit ever output > 0?"""
    alive: dict[str, torch.Tensor] = {}

    def record(name: str, module: nn.Module, y: torch.Tensor) -> None:
        fired = (unit_max(y) > 0).cpu() if y.dim() > 1 else (y > 0).cpu()
        alive[name] = alive[name] | fired if name in alive else fired

    forwards = 0
    with analysis_mode(model), forward_hooks(activation_layers(model), record) as calls:
        for x, _ in batches:
            model(x)
            forwards += 1
    check_single_use(calls, forwards)
    return alive


def dead_table(alive: dict[str, torch.Tensor]) -> list[dict]:
    return [
        {
            "layer": name,
            "units": len(a),
            "dead": int((~a).sum()),
            "dead fraction": round(float((~a).float().mean()), 4),
        }
        for name, a in alive.items()
    ]


def dead_units(view: RunView) -> list[Chart]:
    # in the run's precision, as it trained and was tested: in bf16 the pass at 224 px took
    # a quarter less time; a unit's sign is what counts, and bf16 keeps fp32's range
    with autocast_for(view.device, view.precision)():
        rows = dead_table(alive_units(view.model, view.batches("val")))
    total = sum(r["units"] for r in rows)
    dead = sum(r["dead"] for r in rows)
    fig = new_figure(7, 0.9 + 0.3 * len(rows))
    ax = fig.subplots()
    ax.barh(range(len(rows)), [r["dead fraction"] for r in rows], color="#7f8c8d")
    ax.set_yticks(range(len(rows)), [f"{r['layer']} ({r['units']})" for r in rows])
    ax.invert_yaxis()
    ax.set(
        xlim=(0, 1),
        xlabel="fraction of units never > 0 on the validation set",
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
            f"{len(view.split('val'))} validation images.",
            table=rows,
            extra={"dead": dead, "total": total},
        )
    ]
