"""The loss landscape of a run, as `cnnlab landscape` left it in <run>/landscape/: nothing
when it has not been computed (the report then leaves the section out)."""

from __future__ import annotations

from cnnlab.landscape.surface import Surface
from cnnlab.viz import landscape_plots as plots
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
        charts += plots.run_charts(surface, view.name)
    return charts
