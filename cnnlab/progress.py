"""What the terminal shows: a live bar per epoch, a line per epoch, a table of results."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cnnlab.tasks import headline_metrics

# soft_wrap: a line is printed whole, never broken at 80 columns when the output is a log
# file, CI or `| tee` (rich's width when it cannot ask a terminal). Lines are text in
# Jupyter too (force_jupyter=False): rich's own display there saved each one as HTML plus a
# text copy full of ANSI codes, which a notebook viewer or nbconvert shows as such.
bars = Console(highlight=False, soft_wrap=True)  # live bars: a widget in Jupyter
console = (
    Console(highlight=False, soft_wrap=True, force_jupyter=False, force_terminal=False)
    if bars.is_jupyter
    else Console(highlight=False, soft_wrap=True)
)
REFRESH_S = 0.5  # the live loss costs a host sync, so it is read at most this often


def live_bars() -> bool:
    """Whether a bar can redraw in place: a terminal, or Jupyter (a display updated in
    place, `Shown`); in a log it would leave a new bar at every refresh."""
    return bars.is_terminal or bars.is_jupyter


class Shown:
    """A rich Progress drawn where it can redraw: by rich's own live display on a terminal;
    in Jupyter as text in one output updated in place and emptied when done. Rich's way
    there, an ipywidgets Output per bar, left an `Output()` and an empty HTML output behind
    in a saved notebook for every bar: 16 outputs in a 3-epoch cell."""

    def __init__(self, progress: Progress):
        self.progress, self.jupyter = progress, not bars.is_terminal and bars.is_jupyter
        self.handle, self.last = None, 0.0

    def __enter__(self) -> Shown:
        if not self.jupyter:
            self.progress.start()
            return self
        from IPython.display import display

        self.handle = display({"text/plain": ""}, raw=True, display_id=True)
        return self

    def refresh(self) -> None:
        """Redraw in Jupyter, at most every REFRESH_S (a terminal's live display redraws
        itself)."""
        now = time.monotonic()
        if self.handle is None or now - self.last < REFRESH_S:
            return
        self.last = now
        text = Console(file=io.StringIO(), width=100, color_system=None, force_jupyter=False)
        text.print(self.progress.get_renderable())
        self.handle.update({"text/plain": text.file.getvalue().rstrip()}, raw=True)

    def __exit__(self, *exc) -> None:
        if self.handle is not None:  # transient, as on a terminal: the bar goes when done
            self.handle.update({"text/plain": ""}, raw=True)
        elif not self.jupyter:
            self.progress.stop()


@contextlib.contextmanager
def counting(
    label: str, total: int, show: bool = True, eta: bool = False
) -> Iterator[Callable[..., None]]:
    """A transient bar, `label ━━━━━━   3/13 info` (with `eta`, the time left too), where one
    can redraw in place (live_bars); elsewhere nothing, since a log keeps only half-drawn
    bars. Yields `advance(steps=1, info=...)`: steps done, and what is being done now."""
    if not (show and live_bars()):
        yield lambda steps=1, info=None: None
        return
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    columns += [TimeRemainingColumn()] if eta else []
    columns += [TextColumn("{task.fields[info]}")]
    bar = Progress(*columns, console=bars, transient=True)
    with Shown(bar) as shown:
        task = bar.add_task(label, total=total, info="")

        def advance(steps: int = 1, info: str | None = None) -> None:
            bar.update(task, advance=steps, **({} if info is None else {"info": info}))
            shown.refresh()

        yield advance


class EpochProgress:
    """A rich progress bar for one epoch with live loss and images/s; silent if disabled."""

    def __init__(self, epoch: int, epochs: int, steps: int, start: int, enabled: bool = True):
        # A live bar belongs on a terminal or in a notebook; in a log it only leaves blank
        # lines behind.
        self.enabled = enabled and live_bars()
        self.last = 0.0
        if enabled:
            self.bar = Progress(
                TextColumn(f"epoch {epoch}/{epochs}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=bars,
                transient=True,
            )
            self.task = self.bar.add_task("train", total=steps, completed=start, info="")
            self.shown = Shown(self.bar)

    def __enter__(self) -> EpochProgress:
        if self.enabled:
            self.shown.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.shown.__exit__(*exc)

    def advance(self, read: Callable[[], dict[str, float]], images_per_s: float) -> None:
        """One step done; every REFRESH_S also show the running train metrics from `read`."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < REFRESH_S:
            self.bar.advance(self.task)
            self.shown.refresh()
            return
        self.last = now
        shown = {
            k.removeprefix("train.").replace("accuracy", "acc"): v
            for k, v in read().items()
            if _headline(k)
        }
        info = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
        self.bar.update(self.task, advance=1, info=f"{info}  {images_per_s:,.0f} img/s")
        self.shown.refresh()

    @staticmethod
    def summary(row: dict, monitor: str) -> None:
        """One line per finished epoch: headline validation metrics, the monitored one bold
        (a class's own, `val.diag.recall_of_nodule`, among them)."""
        val = "  ".join(
            f"[bold]{k} {v:.4f}[/bold]" if k == monitor else f"{k} {v:.4f}"
            for k, v in row.items()
            if k.startswith("val.") and (_headline(k) or k == monitor)
        )
        rate = row.get("images_per_s")  # None: its steps ran before a resume ("0 img/s")
        rate = (
            "(validation: its steps ran before the resume)"
            if rate is None
            else f"{rate:,.0f} img/s"
        )
        console.print(
            f"epoch {row['epoch']:>3}  train.loss {row['train.loss']:.4f}  {val}  "
            f"[dim]{row['seconds']:.0f}s {rate}[/dim]"
        )


def _headline(key: str) -> bool:
    """The metrics worth a glance: the total loss and each task type's `headline` metrics
    (accuracy, F1, RMSE), not every per-task loss."""
    return key.count(".") == 1 or key.rsplit(".", 1)[-1] in headline_metrics()


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: readable as text in a log, and rendered by any Markdown viewer."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_table(header: list[str], rows: list[list[str]], title: str) -> None:
    """A rich table on a terminal; Markdown elsewhere (a log, Jupyter), where rich would
    squeeze it into 80 columns and fold every cell."""
    if not console.is_terminal:
        console.print(f"{title}\n\n{markdown_table(header, rows)}", markup=False)
        return
    from rich.markup import escape

    table = Table(title=escape(title), title_justify="left")
    for h in header:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*map(escape, row))
    console.print(table)


def print_metrics_table(metrics: dict, title: str) -> None:
    rows = [[k, f"{v:.4f}" if isinstance(v, float) else str(v)] for k, v in metrics.items()]
    print_table(["metric", "value"], rows, title)
