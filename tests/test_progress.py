"""Bars where they can redraw: in Jupyter, one output updated in place and emptied when
done (rich's widget per bar left "Output()" and an empty HTML output in a saved notebook)."""

from __future__ import annotations

import io

from rich.console import Console

from cnnlab import progress


class Handle:
    """What IPython's display(..., display_id=True) returns: a display updated in place."""

    def __init__(self, shown: list[str]):
        self.shown = shown

    def update(self, data: dict, raw: bool = False) -> None:
        assert raw and list(data) == ["text/plain"]
        self.shown.append(data["text/plain"])


def test_a_bar_in_jupyter_is_one_display_updated_in_place_and_emptied(monkeypatch):
    import IPython.display

    screen = io.StringIO()
    notebook = Console(file=screen, force_jupyter=True, force_terminal=False)
    monkeypatch.setattr(progress, "bars", notebook)
    monkeypatch.setattr(progress, "REFRESH_S", 0.0)
    shown: list[str] = []
    displayed = []

    def display(data, raw=False, display_id=False):
        displayed.append(data)
        return Handle(shown)

    monkeypatch.setattr(IPython.display, "display", display)
    assert progress.live_bars()  # no ipywidgets needed
    with progress.counting("decoding", 3) as advance:
        for i in range(3):
            advance(info=f"file {i}")
    assert displayed == [{"text/plain": ""}]  # one output for the whole bar
    assert "decoding" in shown[0] and "1/3" in shown[0] and "file 0" in shown[0]
    assert "3/3" in shown[-2] and shown[-1] == ""  # gone when done, as on a terminal
    assert screen.getvalue() == ""  # nothing through rich's own Jupyter display
