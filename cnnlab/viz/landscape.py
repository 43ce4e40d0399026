"""The loss landscape of a run, as `cnnlab landscape` left it in <run>/landscape/: nothing
when it has not been computed (the report then leaves the section out)."""

from __future__ import annotations

from cnnlab.landscape import plots
from cnnlab.landscape.surface import Surface
from cnnlab.viz.base import Chart
from cnnlab.viz.run_view import RunView


def landscape(view: RunView) -> list[Chart]:
    charts: list[Chart] = []
    for dims in (2, 1):
        file = view.run.path / "landscape" / f"surface_{dims}d.json"
        if not file.is_file():
            continue
        surface = Surface.load(file)
        if surface.missing():  # a budgeted run not finished yet: its figures come later
            continue
        if dims == 2:
            charts += [plots.contour(surface, view.name), plots.surface3d(surface, view.name)]
        curve, flat = plots.curves({view.name: surface}), plots.flatness_chart({view.name: surface})
        curve.key, flat.key = f"landscape_curve_{dims}d", f"landscape_flatness_{dims}d"
        charts += [curve, flat]
    return charts
