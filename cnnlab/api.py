"""cnnlab from Python: the functions a notebook or script calls, and the `Run` they return.

    import cnnlab
    run = cnnlab.train("fashion_fast", overrides={"train.epochs": 3})
    run.metrics                      # one row per epoch, a pandas DataFrame
    run.predict(["shoe.png"])["cls"].labels
    run.figure("confusion")          # shows inline in Jupyter, saved in RUN/figures/

The `cnnlab` command is a thin layer over these same functions: a recipe given here is
checked exactly as on the command line, and every problem a user can fix is one
`CnnlabError` line.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cnnlab.build import resolve_device
from cnnlab.catalog import recipe_file, sweep_file
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import evaluate_run
from cnnlab.experiment import train as train_recipe
from cnnlab.inference import ImageLike, Predictions, Predictor
from cnnlab.recipe import (
    Recipe,
    apply_overrides,
    override_sources,
    read_yaml,
    set_path,
    validate,
)
from cnnlab.runs import RunFolder

if TYPE_CHECKING:  # the figures (matplotlib, captum) load when a figure is asked for
    import pandas as pd

    from cnnlab.comparison import Comparison
    from cnnlab.cross_validation import Folds
    from cnnlab.export import ExportedModel
    from cnnlab.viz import Chart, RunView

RecipeLike = str | Path | Mapping[str, Any] | Recipe
Overrides = Mapping[str, Any] | Sequence[str] | None


# --------------------------------------------------------------------------- recipes


def load_recipe(name_or_path: RecipeLike, overrides: Overrides = None) -> Recipe:
    """The typed recipe: a shipped name (`cnnlab recipes`), a YAML path, a dict or a Recipe,
    with `overrides` applied (`{"train.epochs": 3}` or `["train.epochs=3"]`, checked as
    `--set` is). The result is a pydantic model: change it in Python, then train it."""
    if isinstance(name_or_path, Recipe):
        raw, source = name_or_path.model_dump(mode="json"), "recipe"
    elif isinstance(name_or_path, Mapping):
        raw, source = _plain(name_or_path), "recipe"
    else:
        path = recipe_file(name_or_path)
        raw, source = read_yaml(path), str(path)
    return validate(_overridden(raw, overrides), source=source, sets=override_sources(overrides))


def _overridden(raw: dict, overrides: Overrides) -> dict:
    if overrides is None:
        return raw
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            path = [p for p in str(key).split(".") if p]
            if not path:
                raise CnnlabError(f"overrides: empty key {key!r}; expected e.g. 'train.epochs'")
            set_path(raw, path, _plain(value), f"overrides[{key!r}]")
        return raw
    if isinstance(overrides, str):  # one "key=value": not a sequence of characters
        overrides = [overrides]
    return apply_overrides(raw, list(overrides))


def _plain(value: Any) -> Any:
    """A copy made of dicts and lists, so overriding never changes the caller's objects."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------ runs


def train(
    recipe: RecipeLike, overrides: Overrides = None, run_dir: str | Path | None = None
) -> Run:
    """Train a recipe, test its best checkpoint and write its report, as `cnnlab train`
    does; returns the finished run. `run_dir`: the folder to train in (new or empty);
    default `<output_dir>/<name>-<time>`."""
    parsed = load_recipe(recipe, overrides)
    folder = None
    if run_dir is not None:
        folder = _fresh_folder(Path(run_dir), parsed)
    return Run(train_recipe(parsed, run=folder).path)


def _fresh_folder(path: Path, recipe: Recipe) -> RunFolder:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CnnlabError(
            f"run_dir {path} is not empty; give a new folder, or continue the run in it with "
            f"cnnlab.resume({str(path)!r})"
        )
    path.mkdir(parents=True, exist_ok=True)
    return RunFolder.create(recipe, path)


def resume(path: str | Path) -> Run:
    """Continue an interrupted run from its last checkpoint, exactly where it stopped."""
    run = RunFolder.open(path)
    return Run(train_recipe(run.recipe(), resume=run.path).path)


def load_run(path: str | Path) -> Run:
    """A run folder, finished or not, for its metrics, predictions, figures and report."""
    return Run(path)


class Charts(list):
    """A figure's charts: Jupyter shows each picture inline; each is saved as well."""

    def _ipython_display_(self) -> None:
        from IPython.display import display

        for chart in self:
            display(chart)


class Run:
    """One run folder as Python sees it. The model and data are built on first use (the
    figures, `evaluate`, `predict`), through the same build path training used."""

    def __init__(self, path: str | Path):
        self.folder = RunFolder.open(path)

    def __repr__(self) -> str:
        state = self.folder.status().get("state", "new")
        return f"Run({str(self.path)!r}, {state})"

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def recipe(self) -> Recipe:
        return self.folder.recipe()

    @property
    def status(self) -> dict:
        """state (running, interrupted, trained, finished, failed), epoch, reason."""
        return self.folder.status()

    @property
    def metrics(self):
        """One row per epoch: train, validation, lr, seconds (a pandas DataFrame)."""
        import pandas as pd

        return pd.DataFrame(self.folder.read_metrics())

    @property
    def test_metrics(self) -> dict[str, float]:
        """The test metrics of the best checkpoint, as training ended ({} before that)."""
        return self.folder.test_metrics()

    def evaluate(self, split: str = "test") -> dict[str, float]:
        """A split's metrics (test or val), recomputed from the best checkpoint; a finished
        run's first test is saved as `test_metrics` (a sweep's trial was never tested)."""
        if split not in ("test", "val"):
            raise CnnlabError(f"evaluate: split {split!r}; choose test or val")
        return evaluate_run(self.path, split)

    @cached_property
    def _view(self) -> RunView:
        from cnnlab.viz import RunView

        return RunView(self.path, resolve_device(self.recipe.train.device))

    @cached_property
    def _predictor(self) -> Predictor:
        view = self._view
        return Predictor(view.recipe, view.checkpoint, view.device)  # read once, shared

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> Predictions:
        """Each task's answer for new images: file paths, PIL images, numpy arrays (H, W) or
        (H, W, C), tensors (C, H, W), or one (B, C, H, W) batch; uint8, or float in [0, 1].
        They are resized to the run's image size and normalized as training did."""
        self._view  # noqa: B018 (a run without best.pt stops here, in one line)
        return self._predictor(images)

    def figure(self, name: str, **options: Any) -> Charts:
        """One figure (`cnnlab figures` lists them) saved into RUN/figures/; in Jupyter the
        returned charts show themselves."""
        from cnnlab.viz import drawn, make_charts

        charts = self._saved(drawn(self._view, name, make_charts(self._view, name, **options)))
        self._view.keep_predictions()  # the next session's figures make no test pass
        return charts

    def explain(
        self, images: ImageLike | Sequence[ImageLike], component: str | None = None,
        ig_steps: int | None = None, task: str | None = None,
    ) -> Charts:  # fmt: skip
        """Where in images of your own (as `predict` takes them, at most 16) each answer
        comes from: the attributions figure's four maps beside each image, a classification's
        for the class it predicts, a vector's for `component` (default: its first); saved as
        RUN/figures/explained_<task>.png (over the previous call's), inline in Jupyter; each
        image is named by its file. `ig_steps`: Integrated Gradients' (default 8); `task`:
        that task's maps alone (default: every task that answers once per image)."""
        from cnnlab.viz.attributions import IG_STEPS, explain, image_names

        self._view  # noqa: B018 (a run without best.pt stops here, in one line)
        predictor = self._predictor
        shown = predictor.pixels(images)  # as the model sees them, before normalizing
        names = image_names(images)
        charts = explain(predictor, shown, component, ig_steps or IG_STEPS, names, task)
        return self._saved(charts)

    def _saved(self, charts: list[Chart]) -> Charts:
        """The charts, each saved as RUN/figures/<key>.png."""
        for chart in charts:
            chart.save(self.path / "figures")
        return Charts(charts)

    def report(self) -> Path:
        """Write RUN/report.html (every figure, self-contained) and return its path. The
        data and test predictions this Run's figures loaded serve it: not read again."""
        from cnnlab.report import build_report

        view = self.__dict__.get("_view")
        if view is None or view.device.type != "cpu":  # the report's figures run on the CPU
            return build_report(self.path)
        splits = view.splits if "built" in view.__dict__ else None
        return build_report(self.path, splits, predictions=view.__dict__.get("test_predictions"))

    def calibrate(
        self, reset: bool = False, coverage: float = 0.9,
        recall: float | dict[str, float] | None = None,
    ) -> pd.DataFrame:  # fmt: skip
        """Fit a temperature for each task with probabilities (every classification), and a
        prediction interval for each regression, on the validation set, and save them with
        the best weights, as `cnnlab calibrate` does. One row per task and split: the
        temperature, and accuracy, NLL, ECE and MCE before and after; for a regression, the
        interval's half-width (each value ±, per component) that holds `coverage` of
        validation's values, and the share `within` it. `recall`: a two-class task answers
        its class where its probability reaches the `threshold` that finds that share of
        the class's validation images (0.95: every two-class task's second class;
        {"malignant": 0.95} by class, "diag.malignant" where two tasks have it); its rows
        add the share of the class found (`finds`), of the others answered as it (`flags`)
        and the `precision`; None keeps the thresholds the run has, fitted again.
        Predictions, figures, the report and exports made from here on use them
        (`run.predict` gives `low` and `high`). `reset`: every temperature back to 1
        instead, and no interval or threshold."""
        import pandas as pd

        from cnnlab.calibration import calibrate_run, notes, stale_exports

        view = self.__dict__.get("_view")
        loaded = view is not None and "built" in view.__dict__  # its data: not read again
        splits, device = (view.splits, view.device) if loaded else (None, None)
        result = calibrate_run(self.path, splits, device, reset=reset, coverage=coverage,
                               recall=recall)  # fmt: skip
        for line in notes(result):
            warnings.warn(line, stacklevel=2)
        for old in stale_exports(self.path):  # the command says so; Python said nothing
            warnings.warn(
                f"{old} holds the old calibration: export again, run.export()", stacklevel=2
            )
        self.__dict__.pop("_view", None)  # built with the old temperature
        self.__dict__.pop("_predictor", None)
        if splits is not None:
            self._view.share_splits(splits)
        return pd.DataFrame([row for task, r in result.items() for row in _calibrated(task, r)])

    def export(
        self, fmt: Literal["onnx", "pt2"] | None = None, out: str | Path | None = None,
        check: bool = True, views: bool = True,
    ) -> ExportedModel:  # fmt: skip
        """The best model as one file that leaves cnnlab, as `cnnlab export` writes it
        (default RUN/export/model.onnx; `fmt` default: the suffix of `out`, else onnx):
        uint8 images in, every task's answer out, which run it is in its metadata. `check`
        compares it with torch on the test images (`.parity`); `.predict(files)` runs the
        file alone, as a user of it would. `views` off leaves the recipe's test-time views
        out: one pass per image instead of one per view."""
        from cnnlab.export import export_checked

        return export_checked(self.path, fmt, out, check, views)


def _calibrated(task: str, r: dict) -> list[dict]:
    """`Run.calibrate`'s rows of one task, a row per split: its temperature's numbers before
    and after (and its threshold's), or its interval's."""
    rows = []
    for split in [s for s in ("val", "test") if s in r]:
        if "halfwidth" in r:  # a regression's interval: the values within
            one = len(r["halfwidth"]) == 1  # a number's: floats, not lists of one
            width, share = r["halfwidth"], r[split]["covered"]
            within = {"halfwidth": width[0] if one else width, "within": share[0] if one else share}
            rows.append({"task": task, "split": split, "coverage": r["coverage"], **within})
            continue
        before, after = r[split]["before"], r[split]["after"]
        rows.append({"task": task, "split": split, "temperature": r["temperature"],
                     **{f"{m} before": v for m, v in before.items()},
                     **{f"{m} after": v for m, v in after.items()}})  # fmt: skip
        if "threshold" in r:
            t, done = r["threshold"], r["threshold"][split]
            rows[-1] |= {"class": t["name"], "recall": t["recall"], "threshold": t["probability"],
                         "finds": done["recall"], "flags": done["flagged"],
                         "precision": done["precision"]}  # fmt: skip
    return rows


def compare(
    runs: Sequence[str | Path | Run], out: str | Path | None = None,
    names: Sequence[str] | None = None,
) -> Comparison:  # fmt: skip
    """Compare run folders (or `Run`s), as `cnnlab compare` does: `.table` is a DataFrame
    with one row per run (the recipe fields where they differ first, then best epoch, test
    metrics, training minutes), shown by a notebook; `.charts` their learning curves
    overlaid per metric; `.page` the self-contained compare.html in `out` (default
    ./compare-<time>) beside the charts' PNGs; `.notes` the metrics left out (not in every
    run) and whether their losses compare. A folder holding runs stands for them."""
    from cnnlab.comparison import compare as compare_runs

    if isinstance(runs, (str, Path, Run)):
        runs = [runs]
    paths = [r.path if isinstance(r, Run) else r for r in runs]
    found = compare_runs(paths, out, list(names) if names is not None else None)
    for note in found.notes:
        warnings.warn(note, stacklevel=2)
    return found


class CrossValidation:
    """`cross_validate`'s folds: `.runs` one `Run` per fold, `.table` their metrics (a
    DataFrame, one row per fold: the best epoch's validation metrics, the test metrics),
    `.summary` each metric's mean, std, min and max over the folds, `.folder` where the
    folds' run folders and the two tables (folds.csv, summary.csv) are."""

    def __init__(self, found: Folds):
        import pandas as pd

        self.folder: Path = found.folder
        self.runs = [Run(path) for path in found.runs]
        self.table = pd.DataFrame(found.table)
        self.summary = pd.DataFrame(found.summary).set_index("metric")

    def __repr__(self) -> str:
        return f"CrossValidation({str(self.folder)!r}, {len(self.runs)} folds)"

    def _repr_html_(self) -> str:
        return self.summary._repr_html_()


def cross_validate(
    recipe: RecipeLike | None = None, folds: int | None = None, overrides: Overrides = None,
    out: str | Path | None = None, resume: str | Path | None = None,
) -> CrossValidation:  # fmt: skip
    """Train the recipe once per fold (`folds`: the recipe's `data.folds`, else 5), each
    time with another fold of its training set as validation, as `cnnlab cv` does; the
    metrics of each fold and their mean ± std (`.summary`). A few hundred images of one's
    own: one validation split's metric moves by points, the folds' spread says how much.
    `resume`: the folder of an interrupted one, given alone: its finished folds kept, an
    interrupted fold resumed from its last checkpoint, the others trained."""
    from cnnlab import cross_validation

    if (recipe is None) == (resume is None):
        raise CnnlabError("cross_validate: give a recipe, or resume= the folder of one begun")
    if resume is not None:
        return CrossValidation(cross_validation.resume(resume))
    return CrossValidation(
        cross_validation.cross_validate(load_recipe(recipe, overrides), folds, out)
    )


# ----------------------------------------------------------------------------- sweeps


class Sweep:
    """A sweep folder: its trials as a table, and the choice of the best runs."""

    def __init__(self, path: str | Path, storage: str | None = None):
        from cnnlab.sweeps.study import SweepFolder

        self.folder = SweepFolder.open(path)
        self.storage = storage

    def __repr__(self) -> str:
        return f"Sweep({str(self.path)!r})"

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def results(self):
        """One row per trial (a pandas DataFrame): trial (its number), state, value, its
        parameters, its run folder, seconds, and the trial a retry continues (in that
        trial's folder)."""
        import pandas as pd

        from cnnlab.sweeps.results import load_trials

        rows = []
        for t in load_trials(self.folder, self.storage):
            run = t.run
            seconds = (t.end - t.start).total_seconds() if t.start and t.end else None
            rows.append(
                {"trial": t.number, "state": t.outcome, "value": t.value, **t.params,
                 "epochs": t.epochs, "seconds": seconds, "run": str(run.path) if run else None,
                 "retry of": t.retry_of}
            )  # fmt: skip
        return pd.DataFrame(rows)

    def select(self, metrics: str | Sequence[str] = (), test: bool = False):
        """The best run per validation metric (several: also their Pareto front), as a
        DataFrame: the trial, its run folder, its swept parameters' values, its validation
        metrics; `test=True` evaluates the chosen runs on the test set, once each."""
        import pandas as pd

        from cnnlab.sweeps.select import select

        names = [metrics] if isinstance(metrics, str) else list(metrics)
        picks = select(self.folder, names, self.storage, test)
        return pd.DataFrame(
            [{"role": p.role, "trial": p.trial, "run": p.run, **(p.params or p.differs),
              **p.val, **(p.test or {})} for p in picks]
        )  # fmt: skip

    def report(self, group_by: str | None = None) -> Path:
        """Write the sweep's report.html (self-contained: every trial's value over time,
        parallel coordinates, importance, learning curves, correlations) and return its
        path, as `cnnlab report SWEEP` does; `group_by`: a recipe field or swept parameter
        (or A,B) to compare groups of trials by."""
        from cnnlab.sweeps.report import build_report

        return build_report(self.folder, self.storage, group_by)

    def run(self, trial: int) -> Run:
        """The run folder of one trial."""
        found = self.results
        row = found[found["trial"] == trial]
        if row.empty or row.iloc[0]["run"] is None:
            raise CnnlabError(f"{self.path} has no run folder for trial {trial}")
        return Run(row.iloc[0]["run"])


def sweep(
    recipe: RecipeLike,
    sweep_file_or_name: str | Path | Mapping[str, Any],
    overrides: Overrides = None,
    **options: Any,
) -> Sweep:
    """Run a sweep (a W&B-format file, a shipped sweep's name, or the sweep itself as a dict,
    saved as the folder's sweep.yaml and named "sweep") over a base recipe, as `cnnlab
    sweep` does; `options` are its flags: trials, workers, storage, study, out, resume,
    max_failures, heartbeat, trial_processes, name_map."""
    import tempfile

    import yaml

    from cnnlab.sweeps.launch import sweep as run_sweep

    if isinstance(sweep_file_or_name, Mapping):
        with tempfile.TemporaryDirectory(prefix="cnnlab-sweep-") as folder:
            written = Path(folder) / "sweep.yaml"
            written.write_text(yaml.safe_dump(dict(sweep_file_or_name), sort_keys=False))
            try:
                return sweep(recipe, written, overrides, **options)
            except CnnlabError as err:  # named as the user gave it, not by the file made of it
                said = [
                    line.replace(f"sweep file {written}", "the sweep (a dict)")
                    for line in err.lines()
                ]
                raise CnnlabError(said[0], said[1:]) from None
    if not isinstance(sweep_file_or_name, (str, Path)):
        raise CnnlabError(
            f"sweep: a sweep is a file, a shipped sweep's name or a dict, not "
            f"{type(sweep_file_or_name).__name__}"
        )

    if options.get("resume") and overrides:  # the saved recipe is used: they would be lost
        raise CnnlabError(
            "sweep: resume=True continues with the sweep folder's saved recipe and sweep; "
            "drop overrides"
        )
    base = load_recipe(recipe, overrides).model_dump(mode="json")
    known = {"trials", "workers", "storage", "study", "out", "resume", "max_failures",
             "heartbeat", "trial_processes", "name_map"}  # fmt: skip
    unknown = sorted(set(options) - known)
    if unknown:
        raise CnnlabError(f"sweep: unknown option {unknown[0]!r}; choose from {sorted(known)}")
    if "out" in options:
        options["out"] = Path(options["out"])
    if "name_map" in options:
        options["map_path"] = Path(options.pop("name_map"))
    folder = run_sweep(base, sweep_file(sweep_file_or_name), [], **options)
    return Sweep(folder.path, options.get("storage"))


__all__ = [
    "Charts", "Run", "Sweep", "compare", "load_recipe", "load_run", "resume", "sweep", "train",
]  # fmt: skip
