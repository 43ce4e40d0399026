"""`cnnlab compare RUN RUN ...`: any run folders side by side, sweep or not.

What a sweep's report shows of its trials, for runs a user names: a table of the runs (the
recipe fields where they differ first, then best epoch, test metrics and training minutes)
and their learning curves overlaid per metric, one colour per run (the sweep's chart:
cnnlab/viz/overlay.py), on a self-contained page built from the reports' blocks and
template parts (cnnlab/report.py). It writes into a folder of its own, never into a run.

Runs may differ in their tasks: what they share is compared and the rest named in a line.
When their losses are different functions (a task's loss, label smoothing, class weights or
weight differs, or a task is not in every run), a note under the loss chart says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError
from cnnlab.recipe import best_row, flatten, read_yaml, upgrade_saved
from cnnlab.report import TEMPLATES, block, format_value
from cnnlab.runs import RunFolder, write_text
from cnnlab.viz.overlay import Panel, curve, overlaid

if TYPE_CHECKING:
    import pandas as pd

    from cnnlab.viz.base import Chart

# Recipe fields that change no result (where a run is written, how it logs): not differences.
BOOKKEEPING = ("name", "output_dir", "train.progress", "train.threads", "train.report",
               "train.test_at_end", "log")  # fmt: skip
SPLITS = ("train.", "val.", "test.")  # metrics keys; the others (epoch, lr, seconds) are not
MISSING = "—"  # a field a run's recipe does not have


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
    def minutes(self) -> float:
        return sum(r.get("seconds", 0.0) for r in self.rows) / 60

    def metric_names(self) -> set[str]:
        names = {k for r in self.rows for k in r if k.startswith(SPLITS)}
        return names | {k for k in self.test if k.startswith(SPLITS)}


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

    @property
    def folder(self) -> Path:
        return self.page.parent

    def _repr_html_(self) -> str:
        return self.table._repr_html_()

    def lines(self) -> list[str]:
        """One line per run: its differing fields, best epoch, test metrics, minutes."""
        rows = self.table.to_dict("records")
        width = max(len(str(r["run"])) for r in rows)
        out = []
        for r in rows:
            parts = [f"{k}={r[k]}" for k in self.differs]
            parts += [f"best epoch {_text(r['best epoch'])}"]
            parts += [f"{k.removeprefix('test.')} {_num(v)}" for k, v in r.items()
                      if k.startswith("test.")]  # fmt: skip
            parts += [_duration(r["training minutes"])]
            out.append(f"{r['run']:<{width}}  " + "  ".join(parts))
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
        inner = sorted(c for c in p.iterdir() if (c / "recipe.yaml").is_file()) if (
            p.is_dir() and not (p / "recipe.yaml").is_file()) else []  # fmt: skip
        found += inner or [p]
    return found


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


def varying(recipes: list[dict[str, Any]]) -> list[str]:
    """The flattened recipe fields whose value is not the same in every recipe (a field one
    of them lacks included), bookkeeping left out, in the recipes' order. A section that
    some recipes lack (a task dropped with null) is one field, not each of its keys."""
    keys = list(dict.fromkeys(k for r in recipes for k in r))
    sections = [{k.rsplit(".", i)[0] for k in r for i in range(1, k.count(".") + 1)}
                for r in recipes]  # fmt: skip
    out: list[str] = []
    for k in keys:
        if any(k == b or k.startswith(f"{b}.") for b in BOOKKEEPING):
            continue
        values = [field_value(r, k) for r in recipes]
        if all(v == values[0] for v in values[1:]):
            continue
        parts = k.split(".")
        heads = (".".join(parts[:i]) for i in range(2, len(parts)))
        absent = next((h for h in heads if not all(h in s for s in sections)), k)
        out += [absent] if absent not in out else []
    return out


def field_value(recipe: dict[str, Any], key: str) -> Any:
    """A field's value, or for a section (one that other recipes lack) its type or name."""
    if key in recipe:
        return recipe[key]
    if any(k.startswith(f"{key}.") for k in recipe):
        return recipe.get(f"{key}.type") or recipe.get(f"{key}.name") or "set"
    return MISSING


def loss_differences(records: list[RunRecord], differs: list[str]) -> str | None:
    """Why the runs' losses are different functions, or None when they are the same one:
    loss = Σ weight · task loss, so any field of a task's section but its head (type, loss,
    label smoothing, class weights, weight, target), or a task not in every run."""
    tasks = [r.tasks for r in records]
    common = set(tasks[0]).intersection(*tasks[1:])
    fields = [k for k in differs if k.startswith("tasks.") and k.split(".")[1] in common
              and k.split(".")[2:3] != ["head"]]  # fmt: skip
    reasons = [
        f"{k} is " + ", ".join(f"{_shown(field_value(r.recipe, k))} in {r.name}" for r in records)
        for k in fields[:3]
    ]
    if len(fields) > 3:
        reasons.append(f"{len(fields) - 3} more field(s) of the tasks differ")
    for task in dict.fromkeys(t for ts in tasks for t in ts if t not in common):
        holders = [r.name for r in records if task in r.tasks]
        reasons.append(f"task {task} is only in {', '.join(holders)}")
    if not reasons:
        return None
    return (
        "The loss curves are not comparable across these runs: their losses are different "
        f"functions ({'; '.join(reasons)}). Compare the metrics instead."
    )


def _shown(value) -> str:
    return value if isinstance(value, str) else repr(value) if value is None else str(value)


def shared_metrics(records: list[RunRecord]) -> tuple[set[str], str | None]:
    """The metrics every run has, and a line naming those left out (and which runs have
    them), or None."""
    names = [r.metric_names() for r in records]
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
    """One row per run: name, the differing fields, best epoch, test metrics, minutes."""
    import pandas as pd

    tested = [k for k in dict.fromkeys(k for r in records for k in r.test) if k in shared]
    rows = []
    for r in records:
        row: dict[str, Any] = {"run": r.name}
        row |= {k: _cell(field_value(r.recipe, k)) for k in differs}
        row["best epoch"] = r.best_epoch
        row |= {k: r.test.get(k) for k in tested}
        row["training minutes"] = r.minutes
        row["folder"] = str(r.folder.path)
        rows.append(row)
    return pd.DataFrame(rows)


def _text(value) -> str:
    """A table cell on the page: a number to 4 significant digits, a missing one as —."""
    return MISSING if isinstance(value, float) and value != value else format_value(value)


def _cell(value) -> Any:
    """A recipe value in a table: a list or None as text, so a column holds one kind."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


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
    differs = varying([r.recipe for r in records])
    shared, left_out = shared_metrics(records)
    lossy = loss_differences(records, differs)
    notes = [n for n in (left_out, lossy) if n]
    untested = [r.name for r in records if not r.test]
    if untested:
        notes.append(f"no test metrics in {', '.join(untested)} (its test did not run)")
    table = runs_table(records, differs, shared)
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
    page = _write_page(folder, records, table, charts, differs, notes, lossy)
    write_text(folder / "compare.csv", table.to_csv(index=False))
    return Comparison(table, page, charts, notes, differs)


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
        fmt=format_value,
        built=time.strftime("%Y-%m-%d %H:%M:%S"),
        plotly_js=get_plotlyjs(),
    )
    path = folder / "compare.html"
    write_text(path, page)
    return path
