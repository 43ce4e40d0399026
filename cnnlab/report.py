"""report.html: one self-contained file with a run's recipe, metrics and every figure.

Images are embedded as base64 PNGs (the same files as figures/*.png), interactive charts
are plotly with plotly.js inlined once, so the file opens offline and can be mailed.
Everything a user typed (run and class names, recipe values) reaches the page through
Jinja2 with autoescaping, or as JSON with <, > and & escaped inside <script>.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from cnnlab.data.batches import Splits
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import SplitPredictions
from cnnlab.plugins import import_flags
from cnnlab.progress import counting
from cnnlab.recipe import best_row, dump_recipe
from cnnlab.runs import write_text
from cnnlab.tasks.base import labelled_rows
from cnnlab.tasks.intervals import described
from cnnlab.tasks.thresholds import found, metrics_note
from cnnlab.viz import BUILT_IN, FIGURES, Chart, RunView, make_charts
from cnnlab.viz.base import write_png

# (section id, title, figure names): the order of report.html
SECTIONS = [
    ("curves", "Learning curves", ["curves"]),
    ("data", "Data", ["data"]),
    ("predictions", "Predictions", ["predictions", "mistakes"]),
    ("confusion", "Confusion", ["confusion"]),
    ("reliability", "Calibration", ["reliability"]),
    ("roc", "ROC and precision-recall", ["roc"]),
    ("regression", "Regression", ["regression"]),
    ("pixels", "Per-pixel predictions", ["pixels"]),
    ("feature-maps", "Feature maps", ["feature-maps"]),
    ("filters", "First-layer filters", ["filters"]),
    ("guided-backprop", "Guided backpropagation", ["guided-backprop"]),
    ("attributions", "Where predictions come from", ["attributions"]),
    ("sanity", "Sanity check of the saliency maps", ["sanity"]),
    ("dead-units", "Dead units", ["dead-units"]),
    ("landscape", "Loss landscape", ["landscape"]),
]


def sections() -> list[tuple[str, str, list[str]]]:
    """SECTIONS, then one section per figure a user registered (cnnlab/components.py), in
    registration order, titled by its name and what it draws (its `doc`)."""
    shown = {name for _, _, names in SECTIONS for name in names}
    extra = [name for name in FIGURES if name not in shown and name not in BUILT_IN]
    return [*SECTIONS, *((name, _title(name), [name]) for name in extra)]


def _title(name: str) -> str:
    doc = FIGURES[name].doc
    return f"{name}: {doc}" if doc and doc != name else name


TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("cnnlab", "templates"),
    autoescape=True,  # every {{ value }} is HTML-escaped unless marked safe here
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass
class Block:
    """One chart as the template shows it."""

    key: str
    title: str
    caption: str
    png: str | Future[str]  # base64; a Future while the report's pool writes the file
    plot_json: str | None = None  # escaped plotly JSON, safe inside <script>
    table: list[dict] | None = None

    def settle(self) -> None:
        """Wait for the PNG (a failure to write it is raised here)."""
        if isinstance(self.png, Future):
            self.png = self.png.result()


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    missing: str | None = None  # why the section is empty


def script_json(data: str) -> str:
    """JSON that cannot close a <script> element or open a comment: escape <, >, &."""
    return data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _png(chart: Chart, folder: Path, pool: Executor | None) -> str | Future[str]:
    """The chart drawn here, then written as `folder/KEY.png` and encoded for the page, in
    `pool` when given (while the next chart is drawn)."""
    pixels = chart.pixels()

    def encoded() -> str:
        path = write_png(pixels, folder / f"{chart.key}.png")
        return base64.b64encode(path.read_bytes()).decode("ascii")

    return pool.submit(encoded) if pool is not None else encoded()


def block(chart: Chart, folder: Path, pool: Executor | None = None) -> Block:
    """A chart saved as `folder/KEY.png` and made ready for a page (both reports use it);
    with `pool`, its PNG is a Future until `Block.settle`."""
    plot = None
    if chart.plotly is not None:
        plot = script_json(chart.plotly.to_json())
    png = _png(chart, folder, pool)
    return Block(chart.key, chart.title, chart.caption, png, plot, chart.table)


def _section(
    view: RunView, sid: str, title: str, names: list[str], folder: Path, pool: Executor
) -> Section:
    section = Section(sid, title)
    for name in names:
        try:
            charts = make_charts(view, name)
        except CnnlabError as err:  # e.g. a backbone without conv layers: say so, go on
            section.missing = str(err)
            continue
        except Exception as err:  # a user's figure fails: the rest of the report still counts
            if name in BUILT_IN:
                raise
            section.missing = f"{name} failed: {type(err).__name__}: {err}"
            print(
                f"warning: figure {name!r} failed ({type(err).__name__}: {err}); the report "
                f"shows the rest. Its traceback: cnnlab{import_flags()} viz {view.run.path} {name}",
                file=sys.stderr,
            )
            continue
        section.blocks += [block(c, folder, pool) for c in charts]
    return section


def metrics_table(view: RunView) -> list[dict]:
    """One row per metric: best validation epoch and test value."""
    rows = view.metrics()
    test = view.test_metrics()
    best = best_row(rows, view.recipe.train.monitor)
    names = [k.removeprefix("val.") for k in (best or {}) if k.startswith("val.")]
    names += [k.removeprefix("test.") for k in test if k.startswith("test.")]
    out = []
    for name in dict.fromkeys(names):
        val = (best or {}).get(f"val.{name}")
        out.append({"metric": name, "val": val, "test": test.get(f"test.{name}")})
    return out


def metric_notes(view: RunView) -> list[str]:
    """What the metrics table's numbers are of, where a reader would assume otherwise: a
    calibrated task's ECE and MCE at its temperature beside a loss at the model's own, a
    regression's calibrated range and the share of test values it holds, a two-class task's
    threshold and what it finds on test, and a task whose test images are not all labelled
    (a table's blank cells)."""
    notes = [
        f"{name}: calibrated, T = {task.temperature:.3g} (cnnlab calibrate); its test ece "
        "and mce are at that temperature, its loss is the model's own (T = 1), and no "
        "temperature moves its accuracy"
        for name, task in view.tasks.items()
        if getattr(task, "temperature", 1.0) != 1.0
    ]
    predictions = view.__dict__.get("test_predictions")  # drawn for the figures: not again
    for name, task in view.tasks.items():
        if task.interval is None:
            continue
        tested = (predictions.truth[name], predictions.pred[name]) if predictions else ()
        said = described(task.interval, task.info.components, *tested)
        notes.append(f"{name}: calibrated, {said}")
    for name, task in view.tasks.items():
        if task.threshold is None:
            continue
        rows = predictions.rows.get(name) if predictions else None
        p = task.probabilities(rows.logits) if rows else None
        done = found(p, rows.targets, task.threshold) if rows else None
        notes.append(metrics_note(name, task.threshold, done))
    for name, truth in (predictions.truth if predictions else {}).items():
        labelled = int(labelled_rows(truth).sum())
        if labelled < len(truth):
            notes.append(
                f"{name}: {labelled:,} of {len(truth):,} test images have a label; its test "
                "metrics count those"
            )
    return notes


def format_value(value) -> str:
    return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def build_report(
    run: str | Path,
    splits: Splits | None = None,
    show: bool = True,
    predictions: SplitPredictions | None = None,
) -> Path:
    """Write RUN/figures/*.png and RUN/report.html; returns the report's path. `splits`,
    `predictions`: the run's data and test predictions as training made them on the CPU,
    so that neither is made again; `show`: a bar naming the figure being drawn (on a
    terminal or in Jupyter)."""
    started = time.monotonic()
    view = RunView(run)
    if splits is not None:
        view.share_splits(splits)
    if predictions is not None:
        view.share_predictions(predictions)
    folder = view.run.path / "figures"
    shown, parts = [], sections()
    with ThreadPoolExecutor(1) as pool, counting("report", len(parts), show) as advance:
        for sid, title, names in parts:
            advance(0, info=title)
            shown.append(_section(view, sid, title, names, folder, pool))
            advance()
    for b in (b for s in shown for b in s.blocks):
        b.settle()
    # A section with nothing to show and nothing to explain (no regression task) is left out.
    shown = [s for s in shown if s.blocks or s.missing]
    env = view.run.env()
    import plotly.offline

    html = TEMPLATES.get_template("report.html.j2").render(
        name=view.name,
        status=view.run.status(),
        test=view.test_metrics(),
        metrics=metrics_table(view),
        metric_notes=metric_notes(view),
        epochs=len(view.metrics()),
        recipe_yaml=dump_recipe(view.recipe),
        env=env,
        env_json=json.dumps(env, indent=2),
        sections=shown,
        fmt=format_value,
        plotly_js=plotly.offline.get_plotlyjs(),
        built=time.strftime("%Y-%m-%d %H:%M:%S"),
        seconds=round(time.monotonic() - started, 1),
    )
    path = view.run.path / "report.html"
    write_text(path, html)
    view.keep_predictions()
    return path
