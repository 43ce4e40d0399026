"""`cnnlab compare RUN RUN ...`: any run folders side by side, sweep or not.

What a sweep's report shows of its trials, for runs a user names: a table of the runs (the
recipe fields where they differ first, then best epoch, test metrics and training minutes;
when a run has no test metrics, a sweep's trial, each run's validation metrics at its best
epoch instead)
and their learning curves overlaid per metric, one colour per run (the sweep's chart:
cnnlab/viz/overlay.py), on a self-contained page built from the reports' blocks and
template parts (cnnlab/report.py). It writes into a folder of its own, never into a run.

Runs may differ in their tasks: what they share is compared and the rest named in a line.
When their losses are different functions (a task's loss, label smoothing, class weights or
weight differs, or a task is not in every run), a note under the loss chart says so; the
sweep report's group table takes the same rule and note (cnnlab/differences.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.differences import MISSING, field_value, loss_note, varying, yaml_text
from cnnlab.errors import CnnlabError, listed
from cnnlab.recipe import best_row, flatten, read_yaml, upgrade_saved
from cnnlab.report import TEMPLATES, block, format_value
from cnnlab.runs import RunFolder, is_run_folder, write_text
from cnnlab.viz.overlay import Panel, curve, overlaid

if TYPE_CHECKING:
    import pandas as pd

    from cnnlab.viz.base import Chart

SPLITS = ("train.", "val.", "test.")  # metrics keys; the others (epoch, lr, seconds) are not
VAL_AT_BEST = "val at the best epoch"  # the numbers shown when a run has no test metrics


@dataclass
class RunRecord:
    """One run as the comparison reads it: its files, nothing rebuilt."""

    name: str
    folder: RunFolder
    recipe: dict[str, Any]  # flattened: {"tasks.cls.weight": 1.0, ...}
    rows: list[dict]  # metrics.jsonl, one per epoch
    test: dict[str, float]
    tasks: list[str]  # its task names (a task set to null in the recipe dropped)

    @property
    def best_epoch(self) -> int | None:
        if "best_epoch" in self.test:
            return int(self.test["best_epoch"])
        best = best_row(self.rows, self.recipe.get("train.monitor", "val.loss"))
        return best["epoch"] if best else None

    @property
    def at_best_epoch(self) -> dict:
        """The metrics row of the best epoch (the one best.pt holds)."""
        return next((r for r in self.rows if r.get("epoch") == self.best_epoch), {})

    @property
    def minutes(self) -> float:
        return sum(r.get("seconds", 0.0) for r in self.rows) / 60

    def metric_names(self, tests: bool = True) -> set[str]:
        names = {k for r in self.rows for k in r if k.startswith(SPLITS)}
        return names | {k for k in self.test if k.startswith(SPLITS) and tests}


CLASS_LINES = 12  # classes of a task a terminal shows, the worst first


@dataclass
class Comparison:
    """Runs side by side: `table` (a DataFrame, one row per run), the `charts`, the page
    (`page`, in `folder` with the charts' PNGs) and `notes` (what was left out, and whether
    the losses compare). A notebook shows the table."""

    table: pd.DataFrame = field(repr=False)
    page: Path
    charts: list[Chart] = field(repr=False)
    notes: list[str] = field(repr=False)
    differs: list[str]  # the recipe fields where the runs differ
    numbers: str = "test"  # what the metric columns are: "test", or "val at the best epoch"
    # each classification's test recall per class, a column per run (`class_recalls`)
    classes: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def folder(self) -> Path:
        return self.page.parent

    def _repr_html_(self) -> str:
        return self.table._repr_html_()

    def lines(self) -> list[str]:
        """One line per run: its differing fields, best epoch, test metrics (or validation
        metrics at the best epoch, said so), minutes."""
        rows = self.table.to_dict("records")
        width = max(len(str(r["run"])) for r in rows)
        split = "test." if self.numbers == "test" else "val."
        out = []
        for r in rows:
            parts = [f"{k}={yaml_text(r[k])}" for k in self.differs]
            parts += [f"best epoch {_text(r['best epoch'])}"]
            numbers = [f"{k.removeprefix(split)} {_num(v)}" for k, v in r.items()
                       if k.startswith(split)]  # fmt: skip
            if numbers and self.numbers != "test":  # say which numbers these are
                numbers[0] = f"{self.numbers}: {numbers[0]}"
            parts += numbers
            parts += [_duration(r["training minutes"])]
            out.append(f"{r['run']:<{width}}  " + "  ".join(parts))
        for task, recalls in self.classes.items():
            runs = [c for c in recalls.columns if c not in ("class", "test images")]
            out.append(f"{task}: test recall per class ({', '.join(runs)}):")
            named = max(len(str(c)) for c in recalls["class"])
            for row in recalls.head(CLASS_LINES).itertuples(index=False):
                values = "  ".join(f"{v:.3f}" for v in row[2:])
                n = f"{row[1]:,}" if isinstance(row[1], int) else row[1]  # "6 / 8": sets differ
                out.append(f"  {row[0]:<{named}}  {values}  ({n} images)")
            if len(recalls) > CLASS_LINES:  # the worst on the terminal, every one on the page
                out.append(f"  and {len(recalls) - CLASS_LINES} more classes (compare.html)")
        return out


def _duration(minutes: float) -> str:
    return f"{minutes:.1f} min training" if minutes >= 1 else f"{minutes * 60:.0f} s training"


def _num(v) -> str:
    return MISSING if v is None or v != v else f"{v:.4f}"


# ---------------------------------------------------------------------------- reading


def runs_of(paths: list[str | Path]) -> list[Path]:
    """The run folders named: a folder that is no run but holds run folders stands for them
    (`cnnlab compare cmp/` with cmp/focal-.../ and cmp/ce-.../)."""
    found: list[Path] = []
    for p in map(Path, paths):
        inner = sorted(c for c in p.iterdir() if is_run_folder(c)) if (
            p.is_dir() and not is_run_folder(p)) else []  # fmt: skip
        found += inner or [p]
    return found


def lineage(records: list[RunRecord]) -> list[str]:
    """A line for each run that started from another's weights (train.init_from): its epoch 1
    follows that run's training, which its curves and minutes leave out."""
    where = {r.folder.path.resolve(): r.name for r in records}
    lines = []
    for r in records:
        given = r.recipe.get("train.init_from")
        if not given:
            continue
        path = Path(given)
        if not path.is_absolute():
            path = (r.folder.trained_in() or Path.cwd()) / path
        if path.suffix == ".pt":  # a checkpoint file: RUN/checkpoints/best.pt
            path = path.parent.parent
        parent = where.get(path.resolve(), str(given))
        lines.append(
            f"{r.name} started from the weights of {parent} (train.init_from): its epoch 1 "
            "comes after that run's training, which its curves and minutes leave out"
        )
    return lines


def precisions(records: list[RunRecord]) -> list[str]:
    """A line when the runs trained in different precisions (`auto` decides by timing, so
    one machine may pick bf16 for one run and fp32 for the next): their minutes and last
    digits are not comparable."""
    said = _spread(records, lambda r: _precision(r.folder))
    if not said:
        return []
    return [f"the runs trained in different precisions ({said}): compare their minutes and "
            "their metrics' last digits with care, or set train.precision"]  # fmt: skip


def processes(records: list[RunRecord]) -> list[str]:
    """A line when the runs trained on different numbers of processes (torchrun): the same
    batches split across them, but BatchNorm normalized each process's share and dropout
    drew per process, and the minutes are of other hardware."""
    said = _spread(records, lambda r: r.folder.env().get("processes", 1))
    if not said:
        return []
    return [f"the runs trained on different numbers of processes ({said}; torchrun): each "
            "batch was split across them, so BatchNorm saw each process's share and the "
            "minutes are of other hardware; compare their last digits and minutes with "
            "care"]  # fmt: skip


def _spread(records: list[RunRecord], value: Callable[[RunRecord], object]) -> str | None:
    """'a fp32, b bf16': each run's value, where two runs or more differ (None: they agree,
    or only one run says)."""
    chosen = {r.name: value(r) for r in records}
    if len(set(chosen.values()) - {None}) < 2:
        return None
    return ", ".join(f"{name} {v if v is not None else 'unknown'}" for name, v in chosen.items())


def temperatures(records: list[RunRecord]) -> list[str]:
    """A line when some runs' test metrics are at a fitted temperature and others' at the
    model's own: an ECE of 0.03 beside 0.12 then says calibrated or not, not better."""
    fitted = [
        r.name
        for r in records
        if any(
            t.get("temperature", 1.0) != 1.0
            for t in r.folder.calibration().get("tasks", {}).values()
        )
    ]
    if not fitted or len(fitted) == len(records):
        return []
    return [
        f"{', '.join(fitted)} {'was' if len(fitted) == 1 else 'were'} calibrated (cnnlab "
        "calibrate), the others not: their ECE and NLL are at a fitted temperature, the "
        "others' at the model's own; calibrate each run to compare them"
    ]


def thresholds(records: list[RunRecord]) -> list[str]:
    """A line when the runs answer a two-class task at different fitted thresholds (or one
    at a threshold, another at its top class): their accuracy, recall and F1 count
    different answers, not a better model."""

    def said(r: RunRecord) -> str:
        fitted = [
            f"{task} {t['threshold']['name']} at p ≥ {t['threshold']['probability']:.3g}"
            for task, t in r.folder.calibration().get("tasks", {}).items()
            if "threshold" in t
        ]
        return ", ".join(fitted) or "the top class"

    spread = _spread(records, said)
    if spread is None:
        return []
    return [
        f"the runs answer at different thresholds (cnnlab calibrate --recall): {spread}; "
        "their accuracy, precision, recall and F1 count those answers, a trade of found "
        "against flagged more than a better model (their ROC figures compare the models)"
    ]


def _precision(run: RunFolder) -> str | None:
    chosen = run.env().get("precision")
    return chosen.get("precision") if isinstance(chosen, dict) else None


def read_runs(paths: list[str | Path], names: list[str] | None = None) -> list[RunRecord]:
    """Each run's recipe, metrics and test metrics, checked: every path a run folder with a
    finished epoch, two runs or more, `names` one per run and each its own."""
    found = runs_of(paths)
    folders = [RunFolder.open(p) for p in found]
    if len(found) < 2:
        given = ", ".join(map(str, paths)) or "none"
        raise CnnlabError(f"compare needs two run folders or more; got {len(found)} ({given})")
    resolved = [f.path.resolve() for f in folders]
    again = next((p for p, r in zip(found, resolved, strict=True) if resolved.count(r) > 1), None)
    if again is not None:
        raise CnnlabError(f"compare: {again} is given twice")
    if names is None:
        names = [f.path.name for f in folders]
        if len(set(names)) < len(names):  # runs of one name in different places
            names = [str(p) for p in found]
    elif len(names) != len(folders):
        raise CnnlabError(f"--names gives {len(names)} names for {len(folders)} runs")
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None or not all(n.strip() for n in names):
        what = f"{twice!r} names two of them" if twice is not None else "a name is empty"
        raise CnnlabError(f"compare: each run needs a name of its own; {what}")
    records = []
    for name, folder in zip(names, folders, strict=True):
        rows = folder.read_metrics()
        if not rows:
            raise CnnlabError(
                f"{folder.path} has no finished epoch yet (its metrics.jsonl is empty); "
                "compare it once an epoch has ended"
            )
        raw = upgrade_saved(read_yaml(folder.recipe_path))
        tasks = [t for t, cfg in (raw.get("tasks") or {}).items() if cfg is not None]
        records.append(RunRecord(name, folder, flatten(raw), rows, folder.test_metrics(), tasks))
    return records


# ---------------------------------------------------------------------- what differs


def own_fields(records: list[RunRecord], differs: list[str]) -> tuple[list[str], str | None]:
    """The differing fields worth a column, and a line naming the others: a field only some
    runs' recipes have (another backbone's own: a CNN's model.blocks beside timm runs) and
    that is the same wherever it is says nothing the field that chose it (model.backbone)
    does not; three such runs had 45 columns, the one that told them apart the 33rd."""
    kept, left = [], []
    for k in differs:
        having = [r.recipe[k] for r in records if k in r.recipe]
        alike = 0 < len(having) < len(records) and all(v == having[0] for v in having)
        (left if alike else kept).append(k)
    if not left:
        return kept, None
    return kept, (
        f"left out of the table: {listed(left, ', ', most=8)}, fields of some runs' recipes "
        "only (another backbone's own), the same wherever they are"
    )


def loss_differences(records: list[RunRecord], differs: list[str]) -> str | None:
    """The note under `compare`'s loss chart, or None when the runs' losses are one function."""
    members = {r.name: [(r.recipe, r.tasks)] for r in records}
    return loss_note(members, differs, "loss curves", "runs")


def shared_metrics(records: list[RunRecord]) -> tuple[set[str], str | None]:
    """The metrics every run has, and a line naming those left out (and which runs have
    them), or None. When a run has no test metrics, none are shown: none are left out."""
    tests = all(r.test for r in records)
    names = [r.metric_names(tests) for r in records]
    shared = set.intersection(*names)
    holders: dict[str, list[str]] = {}
    for r, have in zip(records, names, strict=True):
        for k in sorted(have - shared):
            short = k.split(".", 1)[1]
            if r.name not in holders.setdefault(short, []):
                holders[short].append(r.name)
    if not holders:
        return shared, None
    by_runs: dict[tuple, list[str]] = {}
    for short, runs in holders.items():
        by_runs.setdefault(tuple(runs), []).append(short)
    said = "; ".join(f"{', '.join(m)} (only in {', '.join(runs)})" for runs, m in by_runs.items())
    return shared, f"left out, as not every run has them: {said}"


# -------------------------------------------------------------------------- the table


def runs_table(records: list[RunRecord], differs: list[str], shared: set[str]) -> pd.DataFrame:
    """One row per run: name, the differing fields, best epoch, test metrics, minutes. When
    a run has no test metrics, every run's validation metrics at its best epoch instead:
    one kind of number in a column, so the runs still compare."""
    import pandas as pd

    tested = all(r.test for r in records)
    numbers = [r.test if tested else r.at_best_epoch for r in records]
    split = "test." if tested else "val."
    keys = [k for k in dict.fromkeys(k for n in numbers for k in n)
            if k in shared and k.startswith(split)]  # fmt: skip
    rows = []
    for r, found in zip(records, numbers, strict=True):
        row: dict[str, Any] = {"run": r.name}
        row |= {k: _cell(field_value(r.recipe, k)) for k in differs}
        row["best epoch"] = r.best_epoch
        row |= {k: found.get(k) for k in keys}
        row["training minutes"] = r.minutes
        row["folder"] = str(r.folder.path)
        rows.append(row)
    return pd.DataFrame(rows)


def _text(value) -> str:
    """A table cell on the page: a number to 4 significant digits, a missing one as —."""
    return MISSING if isinstance(value, float) and value != value else format_value(value)


def _cell(value) -> Any:
    """A recipe value in a table: a number or text as it is, anything else (a list, null,
    true) as YAML writes it, so a column holds one kind."""
    plain = isinstance(value, (int, float, str)) and not isinstance(value, bool)
    return value if plain else yaml_text(value)


def class_recalls(records: list[RunRecord]) -> tuple[dict[str, pd.DataFrame], str | None]:
    """Each classification task every run has with the same classes: its test recall per
    class, a column per run, worst first (a rare class a macro mean hides: a walkthrough's
    lynx went from 0.17 to 0.83 where macro F1 moved less); from each run's test
    predictions, those its report kept or one test pass. A run that cannot be read back
    leaves a note instead."""
    import pandas as pd

    from cnnlab.viz import RunView
    from cnnlab.viz.confusion import confusion_counts, per_class_accuracy

    try:
        views = {r.name: RunView(r.folder.path) for r in records}
        tasks = {n: t for n, t in next(iter(views.values())).tasks.items()
                 if t.info.classes is not None and "pixels" not in t.figures}  # fmt: skip
        shared = [n for n, t in tasks.items() if all(
            n in v.tasks and v.tasks[n].info.classes == t.info.classes for v in views.values()
        )]  # fmt: skip
        out = {}
        for task in shared:
            classes = tasks[task].info.classes
            counts = {name: confusion_counts(v.test_predictions.truth[task],
                                             v.test_predictions.pred[task], len(classes))
                      for name, v in views.items()}  # fmt: skip
            per_run = [cm.sum(1).tolist() for cm in counts.values()]  # test sets may differ
            images = [
                " / ".join(map(str, n)) if len(set(n)) > 1 else n[0]
                for n in zip(*per_run, strict=True)
            ]
            table = pd.DataFrame(
                {"class": classes, "test images": images}
                | {name: per_class_accuracy(cm).tolist() for name, cm in counts.items()}
            )
            worst = table[list(counts)].min(axis=1).argsort(kind="stable")
            out[task] = table.iloc[worst.to_numpy()].reset_index(drop=True)
    except CnnlabError as err:
        return {}, f"no recall per class: a run could not be read back ({err})"
    return out, None


# ------------------------------------------------------------------------- the charts


def loss_panels(records: list[RunRecord], shared: set[str]) -> list[Panel]:
    """Train and validation loss; each task's validation loss beside them when there are
    several tasks (with one it is the total)."""
    keys = ["train.loss", "val.loss"]
    tasks = [t for t in records[0].tasks if f"val.{t}.loss" in shared]
    keys += [f"val.{t}.loss" for t in tasks] if len(tasks) > 1 else []
    return [_panel(records, k) for k in keys if k in shared]


def metric_panels(records: list[RunRecord], shared: set[str]) -> list[Panel]:
    """Each task's validation metrics, one panel each, in the first run's order."""
    keys = [k for k in records[0].rows[-1] if k in shared and k.startswith("val.")]
    return [_panel(records, k) for k in keys if k != "val.loss" and not k.endswith(".loss")]


def _panel(records: list[RunRecord], key: str) -> Panel:
    return Panel(key, {r.name: [c] for r in records if (c := curve(r.rows, key))})


# ---------------------------------------------------------------------------- compare


def compare(
    paths: list[str | Path], out: str | Path | None = None, names: list[str] | None = None
) -> Comparison:
    """Compare run folders: write `out`/compare.html (self-contained) and its charts' PNGs,
    default ./compare-<time>; return the table, charts, page and notes."""
    records = read_runs(paths, names)
    folder = _out_folder(out, records)
    differs, own = own_fields(records, varying([r.recipe for r in records]))
    shared, left_out = shared_metrics(records)
    lossy = loss_differences(records, differs)
    notes = [n for n in (left_out, own, lossy) if n] + lineage(records) + precisions(records)
    notes += processes(records) + temperatures(records) + thresholds(records)
    untested = [r.name for r in records if not r.test]
    if untested:
        notes.append(
            f"no test metrics in {', '.join(untested)} (its test did not run): the table "
            f"shows every run's validation metrics at its best epoch ({VAL_AT_BEST})"
        )
    table = runs_table(records, differs, shared)
    classes, unread = class_recalls(records)
    notes += [unread] if unread else []
    labels = [r.name for r in records]
    loss_caption = (
        "Training loss (on the augmented training batches) and validation loss per epoch, "
        "one colour per run."
    )
    charts = [overlaid("losses", "Loss", loss_panels(records, shared), labels, loss_caption)]
    metrics = metric_panels(records, shared)
    if metrics:
        caption = "Each task's validation metrics per epoch, one colour per run."
        charts.append(overlaid("metrics", "Validation metrics", metrics, labels, caption))
    page = _write_page(folder, records, table, charts, differs, notes, lossy, classes)
    write_text(folder / "compare.csv", table.to_csv(index=False))
    numbers = VAL_AT_BEST if untested else "test"
    return Comparison(table, page, charts, notes, differs, numbers, classes)


def _out_folder(out: str | Path | None, records: list[RunRecord]) -> Path:
    """`out`, or a new ./compare-<time>; never inside one of the runs."""
    if out is None:
        base = Path(f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
    else:
        path = Path(out)
    for r in records:
        if path.resolve().is_relative_to(r.folder.path.resolve()):
            raise CnnlabError(
                f"--out {path} is inside the run {r.folder.path}: a comparison writes into a "
                "folder of its own"
            )
    if path.exists() and not path.is_dir():
        raise CnnlabError(f"--out {path} is a file; give a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_page(
    folder: Path, records: list[RunRecord], table: pd.DataFrame, charts: list[Chart],
    differs: list[str], notes: list[str], lossy: str | None,
    classes: dict[str, pd.DataFrame] | None = None,
) -> Path:  # fmt: skip
    from plotly.offline import get_plotlyjs

    shown = table.drop(columns=["folder"])
    blocks = [block(c, folder) for c in charts]
    page = TEMPLATES.get_template("compare.html.j2").render(
        runs=[(r.name, str(r.folder.path)) for r in records],
        differs=differs,
        header=list(shown.columns),
        body=[[_text(v) for v in row] for row in shown.itertuples(index=False)],
        notes=[n for n in notes if n != lossy],  # that one under the loss chart
        loss=blocks[0],
        loss_note=lossy,
        metrics=blocks[1] if len(blocks) > 1 else None,
        classes={
            task: (list(t.columns), [[_text(v) for v in row] for row in t.itertuples(index=False)])
            for task, t in (classes or {}).items()
        },
        fmt=format_value,
        built=time.strftime("%Y-%m-%d %H:%M:%S"),
        plotly_js=get_plotlyjs(),
    )
    path = folder / "compare.html"
    write_text(path, page)
    return path
