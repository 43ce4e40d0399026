"""Model selection: the best run per validation metric, the Pareto front, the test table.

Only validation metrics choose. `--test` then evaluates the chosen runs once on the test
set, saving each run's test_metrics.json as training's test would (reused when present), and
writes the table seed 000 put in its report: run, its swept parameters, validation metric,
the test value of each metric selected on, test accuracy, MAE, RMSE.

A selection without --test is written to selection.{md,json,csv}, a tested one to
selection_test.{md,json,csv}: a look at other metrics afterwards must not replace the
table with test results, the one a paper or README quotes, by one without them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from cnnlab.differences import yaml_text
from cnnlab.errors import CnnlabError
from cnnlab.progress import markdown_table
from cnnlab.progress import print_table as show_table
from cnnlab.recipe import metric_goal, unreported, validate
from cnnlab.runs import write_json, write_text
from cnnlab.sweeps.results import TrialRow, differs, load_trials, numbered
from cnnlab.sweeps.study import SweepFolder

TEST_COLUMNS = ("accuracy", "mae", "rmse")  # per task, as in seed 000's Table 1
SELECTED = "selection"  # <stem>.md/.json/.csv in the sweep folder: validation only
TESTED = "selection_test"  # the same with --test: the test results kept apart


@dataclass
class Pick:
    role: str  # "best val.cls.accuracy", "pareto"
    trial: int
    run: str  # the run folder, as a path that opens from where the command ran
    differs: dict  # its recipe fields that differ from the base recipe's (--set ones too)
    val: dict[str, float]
    test: dict[str, float] | None = None
    retry_of: int | None = None  # a retry's first trial, whose number its run folder bears
    params: dict | None = None  # the swept parameters' values (None: saved by an older cnnlab)


def better(a: float, b: float, metric: str) -> bool:
    return metric_goal(metric).better(a, b)


def pareto_front(points: list[dict[str, float]], metrics: list[str]) -> list[int]:
    """Indices of points no other point dominates (at least as good everywhere, better once).

    A point with a NaN metric is left out: NaN compares false both ways, so nothing would
    dominate it and every such run would land on the front."""

    def dominates(p: dict, q: dict) -> bool:
        no_worse = all(not better(q[m], p[m], m) for m in metrics)
        return no_worse and any(better(p[m], q[m], m) for m in metrics)

    known = [i for i, p in enumerate(points) if not any(math.isnan(p[m]) for m in metrics)]
    return [i for i in known if not any(dominates(points[j], points[i]) for j in known if j != i)]


def best_index(values: list[float], metric: str) -> int:
    """The index of the best value, NaN (not reported, or diverged) never chosen."""
    candidates = [i for i, v in enumerate(values) if not math.isnan(v)]
    if not candidates:
        raise CnnlabError(
            f"--metric {metric}: no complete trial has a value (NaN or missing in every run); "
            "choose another --metric"
        )
    best = candidates[0]
    for i in candidates[1:]:
        if better(values[i], values[best], metric):
            best = i
    return best


def select(
    folder: SweepFolder, metrics: list[str], storage: str | None = None, test: bool = False
) -> list[Pick]:
    spec = folder.spec()
    base = folder.base()
    recipe = validate(base)
    names = [spec.resolve_metric(m) for m in metrics] or [spec.metric]
    for name in names:
        problem = unreported(recipe, name)
        if problem:
            raise CnnlabError(f"--metric {name!r} {problem}")
    complete = [r for r in load_trials(folder, storage) if r.state == "complete"]
    rows = [r for r in complete if r.run]
    elsewhere = len(complete) - len(rows)  # another machine's, without a shared --out
    if not rows:
        raise CnnlabError(
            f"{folder.path} has no complete trial with its run folder here yet"
            + (f" ({elsewhere} complete elsewhere: another machine's --out)" if elsewhere else "")
        )
    if elsewhere:
        print(
            f"warning: {elsewhere} of {len(complete)} complete trials have no run folder here "
            "(trained on another machine, whose --out this one does not share): chosen among "
            f"the {len(rows)} here",
            file=sys.stderr,
        )
    vals = [{m: r.at_best_epoch().get(m, math.nan) for m in names} for r in rows]
    picks: list[Pick] = []
    for name in names:
        best = best_index([v[name] for v in vals], name)
        picks.append(_pick(f"best {name}", rows[best], vals[best], base, folder))
    if len(names) > 1:
        for i in pareto_front(vals, names):
            same = next((p for p in picks if p.trial == rows[i].number), None)
            if same is not None:
                same.role += ", pareto"
            else:
                picks.append(_pick("pareto", rows[i], vals[i], base, folder))
    if test:
        _test(picks, folder)
    _save(folder, picks, names, test)
    return picks


def _pick(role: str, row: TrialRow, val: dict, base: dict, folder: SweepFolder) -> Pick:
    run = str(folder.run_path(row.run_dir, row.number)) if row.run_dir else ""
    diff = differs(row.recipe, base)
    return Pick(role, row.number, run, diff, val, retry_of=row.retry_of, params=row.params)


def selection_path(folder: SweepFolder, test: bool) -> Path:
    """Where a selection's Markdown table is saved (.json and .csv beside it)."""
    return folder.path / f"{TESTED if test else SELECTED}.md"


def _test(picks: list[Pick], folder: SweepFolder) -> None:
    """Each chosen run is evaluated once: its test metrics are saved in its folder, as
    training's test saves them (`cnnlab compare`, `cnnlab report` and the next select read
    them there), and reused after. Trials never read the test set; this is the one place
    a sweep's runs do."""
    from cnnlab.runs import RunFolder

    done: dict[str, dict] = {}
    for pick in picks:
        if pick.run not in done:
            from cnnlab.evaluation import evaluate_run  # saves what it measures

            done[pick.run] = RunFolder(Path(pick.run)).test_metrics() or evaluate_run(pick.run)
        pick.test = done[pick.run]


# ----------------------------------------------------------------------- table


def table(picks: list[Pick], names: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the selection table (the same for terminal, md and csv): the
    swept parameters' values, the metrics selected on, then their test values and each
    task's test accuracy, MAE and RMSE."""
    tested = [key for p in picks for key in p.test or {}]
    test_keys = [k for k in dict.fromkeys(f"test.{m.removeprefix('val.')}" for m in names)
                 if k in tested]  # fmt: skip
    for key in tested:
        if key.rsplit(".", 1)[-1] in TEST_COLUMNS and key not in test_keys:
            test_keys.append(key)
    header = ["model", "trial", "run", "swept parameters", *names, *test_keys]
    rows = []
    for p in picks:
        shown = p.params if p.params is not None else p.differs  # an older file: its differs
        params = ", ".join(f"{k}={yaml_text(v)}" for k, v in shown.items()) or "(base recipe)"
        trial = numbered(p.trial, p.retry_of).removeprefix("trial ")
        row = [p.role, trial, Path(p.run).name, params]
        row += [f"{p.val[m]:.4f}" for m in names]
        row += [f"{(p.test or {}).get(k, math.nan):.4f}" for k in test_keys]
        rows.append(row)
    return header, rows


def _save(folder: SweepFolder, picks: list[Pick], names: list[str], test: bool) -> None:
    """The table as .md, .csv and .json (runs in it relative to the sweep folder, so the
    file stays right when the folder moves or is read from elsewhere)."""
    header, rows = table(picks, names)
    if not test:
        _keep_older_tested(folder)
    md = selection_path(folder, test)
    saved = [{**asdict(p), "run": _inside(folder, p.run)} for p in picks]
    write_json(md.with_suffix(".json"), {"metrics": names, "test": test, "picks": saved})
    write_text(md, markdown_table(header, rows))
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    write_text(md.with_suffix(".csv"), buf.getvalue())


def _keep_older_tested(folder: SweepFolder) -> None:
    """A sweep folder from an older cnnlab holds its `select --test` table as selection.*:
    move it to selection_test.* before a selection without --test takes those names."""
    older = selection_path(folder, False).with_suffix(".json")
    tested = selection_path(folder, True)
    if tested.with_suffix(".json").exists() or not older.is_file():
        return
    try:
        was_tested = json.loads(older.read_text()).get("test") is True
    except (ValueError, AttributeError):  # damaged: no test table to keep
        return
    if was_tested:
        for suffix in (".json", ".md", ".csv"):
            if older.with_suffix(suffix).is_file():
                older.with_suffix(suffix).replace(tested.with_suffix(suffix))


def _inside(folder: SweepFolder, run: str) -> str:
    """A pick's run folder relative to the sweep folder, as the study records it."""
    return Path(run).relative_to(folder.path).as_posix() if run else run


def saved_selection(folder: SweepFolder) -> tuple[list[Pick], list[str]] | None:
    """The selection the sweep's report shows: the tested one when there is one (the table
    a paper quotes), else the latest without --test; None before any `cnnlab select`."""
    for test in (True, False):
        path = selection_path(folder, test).with_suffix(".json")
        if path.is_file():
            saved = json.loads(path.read_text())
            return [Pick(**p) for p in saved["picks"]], saved["metrics"]
    return None


def print_table(picks: list[Pick], names: list[str], title: str) -> None:
    """The selection on the screen: a rich table in a terminal, Markdown elsewhere."""
    show_table(*table(picks, names), title)
