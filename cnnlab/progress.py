"""What the terminal shows: a live bar per epoch, a line per epoch, a table of results."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console(highlight=False)
REFRESH_S = 0.5  # the live loss costs a host sync, so it is read at most this often


class EpochProgress:
    """A rich progress bar for one epoch with live loss and images/s; silent if disabled."""

    def __init__(self, epoch: int, epochs: int, steps: int, start: int, enabled: bool = True):
        self.enabled = enabled
        self.last = 0.0
        if enabled:
            self.bar = Progress(
                TextColumn(f"epoch {epoch}/{epochs}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=True,
            )
            self.task = self.bar.add_task("train", total=steps, completed=start, info="")

    def __enter__(self) -> EpochProgress:
        if self.enabled:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()

    def advance(self, read: Callable[[], dict[str, float]], images_per_s: float) -> None:
        """One step done; every REFRESH_S also show the running train metrics from `read`."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < REFRESH_S:
            self.bar.advance(self.task)
            return
        self.last = now
        shown = {
            k.removeprefix("train.").replace("accuracy", "acc"): v
            for k, v in read().items()
            if _headline(k)
        }
        info = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
        self.bar.update(self.task, advance=1, info=f"{info}  {images_per_s:,.0f} img/s")

    @staticmethod
    def summary(row: dict, monitor: str) -> None:
        """One line per finished epoch: headline validation metrics, the monitored one bold."""
        val = "  ".join(
            f"[bold]{k} {v:.4f}[/bold]" if k == monitor else f"{k} {v:.4f}"
            for k, v in row.items()
            if k.startswith("val.") and _headline(k)
        )
        console.print(
            f"epoch {row['epoch']:>3}  train.loss {row['train.loss']:.4f}  {val}  "
            f"[dim]{row['seconds']:.0f}s {row['images_per_s']:,.0f} img/s[/dim]"
        )


def _headline(key: str) -> bool:
    """The metrics worth a glance: total loss, accuracy, F1, RMSE (not every per-task loss)."""
    return key.endswith((".accuracy", ".f1", ".rmse")) or key.count(".") == 1


def print_metrics_table(metrics: dict, title: str) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(key, text)
    console.print(table)
