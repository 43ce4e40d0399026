"""Figures of a run, by name: `cnnlab viz RUN NAME` and report.html both use this registry.

Each figure function takes a `RunView` (plus its own options) and returns a list of
`Chart`s; a new figure is one function here and one entry in FIGURES, or, outside cnnlab,
`@cnnlab.register_figure` on the function (cnnlab/components.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, did_you_mean
from cnnlab.models.compiled import compiled_kernels
from cnnlab.registrations import missing_hint, recorded_origin
from cnnlab.viz.attributions import attributions
from cnnlab.viz.base import Chart
from cnnlab.viz.confusion import confusion
from cnnlab.viz.curves import curves
from cnnlab.viz.data_makeup import data_makeup
from cnnlab.viz.dead_units import dead_units
from cnnlab.viz.features import feature_maps, filters
from cnnlab.viz.guided import guided_backprop
from cnnlab.viz.landscape import landscape
from cnnlab.viz.mistakes import mistakes
from cnnlab.viz.pixels import pixels
from cnnlab.viz.predictions import predictions
from cnnlab.viz.regression import regression
from cnnlab.viz.reliability import reliability
from cnnlab.viz.roc import roc
from cnnlab.viz.run_view import RunView
from cnnlab.viz.sanity import sanity


@dataclass(frozen=True)
class FigureSpec:
    make: Callable[..., list[Chart]]  # (RunView, **options) -> charts
    doc: str
    first: str = ""  # what makes it drawable, said when it draws nothing (a command to run)


FIGURES: dict[str, FigureSpec] = {
    "curves": FigureSpec(curves, "train/val loss and metrics per epoch, one panel per task"),
    "data": FigureSpec(
        data_makeup, "each target per split: images per class (few named), values' histograms"
    ),
    "predictions": FigureSpec(predictions, "grid of test images, true vs predicted (--grid)"),
    "mistakes": FigureSpec(
        mistakes, "worst test images: surest wrong classes, largest regression errors (--images)"
    ),
    "confusion": FigureSpec(confusion, "confusion matrices, per-class recall, top errors"),
    "reliability": FigureSpec(
        reliability, "reliability diagrams: confidence vs accuracy, before/after calibration"
    ),
    "roc": FigureSpec(roc, "ROC and precision-recall curves, each class against the rest"),
    "regression": FigureSpec(regression, "predicted vs true and residuals per regression task"),
    "pixels": FigureSpec(
        pixels, "per-pixel tasks: input, predicted, true (--images); palette; accuracy per class"
    ),
    "feature-maps": FigureSpec(
        feature_maps, "first channels of every block (--images, --channels)"
    ),
    "filters": FigureSpec(filters, "first-layer filters and their maps for one test image"),
    "guided-backprop": FigureSpec(guided_backprop, "guided backprop, last conv layer (--neurons)"),
    "attributions": FigureSpec(
        attributions,
        "Grad-CAM, Guided Grad-CAM, gradient, Integrated Gradients (--images, --ig-steps, "
        "--component)",
    ),
    "sanity": FigureSpec(
        sanity,
        "do the saliency maps depend on the weights? cascading randomization (--images, --steps)",
    ),
    "dead-units": FigureSpec(dead_units, "units that never activate on the test set"),
    "landscape": FigureSpec(
        landscape,
        "the loss landscape `cnnlab landscape RUN` computed",
        first="compute it first: cnnlab landscape RUN (then viz or report draw it)",
    ),
}


def list_figures() -> dict[str, str]:
    return {name: spec.doc for name, spec in FIGURES.items()}


BUILT_IN = frozenset(FIGURES)  # the report's fixed sections; registered ones come after


def get_figure(name: str, run: Path | None = None) -> FigureSpec:
    """The figure called `name`; an unknown one is refused with what is known and, for a
    figure of one's own, what to import (what `run`'s process imported, when it drew it)."""
    if name not in FIGURES:
        origin = recorded_origin(run / "env.json", "figure", name) if run else None
        near = did_you_mean(name, FIGURES) or _described(name)
        raise CnnlabError(
            f"figure {name!r} is unknown{near}; "
            f"choose one of: {', '.join(FIGURES)}; or, for one of your own: {missing_hint(origin)}"
        )
    return FIGURES[name]


def _described(name: str) -> str:
    """' (did you mean 'attributions'?)' where a figure's description names what was asked
    for ('gradcam': Grad-CAM is one of the attributions' maps), else ''."""

    def bare(text: str) -> str:
        return "".join(ch for ch in text.casefold() if ch.isalnum())

    found = [
        n for n, spec in FIGURES.items() if len(bare(name)) > 2 and bare(name) in bare(spec.doc)
    ]
    return f" (did you mean {found[0]!r}? its description names it)" if len(found) == 1 else ""


def make_charts(view: RunView, name: str, **options) -> list[Chart]:
    """Run one figure with the options the user gave; an option it does not take is an error."""
    spec = get_figure(name, view.run.path)
    accepted = list(inspect.signature(spec.make).parameters)[1:]
    flag = lambda key: "--" + key.replace("_", "-")  # noqa: E731  (as typed: --ig-steps)
    for key in options:
        if key not in accepted:
            allowed = ", ".join(flag(a) for a in accepted) or "none"
            raise CnnlabError(f"{flag(key)} does not apply to {name}; its options: {allowed}")
    # a figure runs the model on a few images, once: compiling kernels for their shapes took
    # longer than it saved (seed 002's report: 45 s on a cold cache against 27 s with aten's)
    with compiled_kernels(False):
        return spec.make(view, **options)


def typed_options(name: str, args: list[str]) -> dict[str, Any]:
    """A figure's own options as typed after `cnnlab viz RUN NAME` (`--bins 5`,
    `--bins=5`), each converted to the type of its keyword's default (a figure of one's own
    declares `bins: int = 15`); `make_charts` says which options the figure takes."""
    params = inspect.signature(get_figure(name).make).parameters
    options: dict[str, Any] = {}
    words = iter(args)
    for word in words:
        key, has_value, value = word.removeprefix("--").partition("=")
        if not word.startswith("--") or not key:
            raise CnnlabError(f"viz: unexpected {word!r}; a figure's options are --NAME VALUE")
        value = value if has_value else next(words, None)
        if value is None:
            raise CnnlabError(f"--{key} needs a value")
        keyword = key.replace("-", "_")
        default = params[keyword].default if keyword in params else None
        options[keyword] = _typed(f"--{key}", value, default)
    return options


def _typed(flag: str, value: str, default: Any) -> Any:
    """`value` as the type of `default` (a string where the default says nothing)."""
    kind = type(default)
    if kind is bool:
        if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise CnnlabError(f"{flag}: {value!r} is not true or false")
        return value.lower() in ("true", "yes", "1")
    if kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            raise CnnlabError(f"{flag}: {value!r} is not a{'n' if kind is int else ''} "
                              f"{kind.__name__}") from None  # fmt: skip
    return value


def drawn(view: RunView, name: str, charts: list[Chart]) -> list[Chart]:
    """The charts a figure asked for by name drew; none (pixels without a per-pixel task)
    is said in one line, not shown as nothing. The report leaves such sections out."""
    if not charts and FIGURES[name].first:
        first = FIGURES[name].first.replace("RUN", str(view.run.path))
        raise CnnlabError(f"{name} draws nothing for this run yet; {first}")
    if not charts:
        tasks = ", ".join(f"{n} ({t.cfg.type})" for n, t in view.tasks.items())
        raise CnnlabError(f"{name} draws nothing for this run (its tasks: {tasks}; `cnnlab "
                          "figures` says what each figure draws)")  # fmt: skip
    return charts


def render(run: str | Path, name: str, out: Path | None = None, **options) -> list[Path]:
    """`cnnlab viz`: draw one figure of a run into RUN/figures/ (or `out`); PNG paths."""
    get_figure(name, Path(run))  # an unknown name fails before any data is loaded
    view = RunView(run)
    folder = out or view.run.path / "figures"
    charts = drawn(view, name, make_charts(view, name, **options))
    paths = [chart.save(folder) for chart in charts]
    view.keep_predictions()  # the next `cnnlab viz` of this run makes no test pass
    return paths


__all__ = [
    "BUILT_IN",
    "FIGURES",
    "Chart",
    "RunView",
    "drawn",
    "get_figure",
    "list_figures",
    "make_charts",
    "render",
]
