"""Model selection: the best run per validation metric, the Pareto front, the test table.

Only validation metrics choose. `--test` then evaluates the chosen runs once on the test
set (a run's test_metrics.json is reused when present) and writes the table seed 000 put
in its report: run, what differs from the base recipe, validation metric, test accuracy,
MAE, RMSE.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass

from cnnlab.errors import CnnlabError
from cnnlab.progress import markdown_table
from cnnlab.progress import print_table as show_table
from cnnlab.recipe import metric_goal, metric_names, validate
from cnnlab.runs import write_json, write_text
from cnnlab.sweeps.results import TrialRow, differs, load_trials
from cnnlab.sweeps.study import SweepFolder

TEST_COLUMNS = ("accuracy", "mae", "rmse")  # per task, as in seed 000's Table 1


@dataclass
class Pick:
    role: str  # "best val.cls.accuracy", "pareto"
    trial: int
    run: str
    differs: dict
    val: dict[str, float]
    test: dict[str, float] | None = None


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
    valid = metric_names(validate(base), "val")
    names = [spec.resolve_metric(m) for m in metrics] or [spec.metric]
    for name in names:
        if name not in valid:
            raise CnnlabError(
                f"--metric {name!r} is not reported; choose one of: {', '.join(valid)}"
            )
    rows = [r for r in load_trials(folder, storage) if r.state == "complete" and r.run]
    if not rows:
        raise CnnlabError(f"{folder.path} has no complete trial with its run folder here yet")
    vals = [{m: r.at_best_epoch().get(m, math.nan) for m in names} for r in rows]
    picks: list[Pick] = []
    for name in names:
        best = best_index([v[name] for v in vals], name)
        picks.append(_pick(f"best {name}", rows[best], vals[best], base))
    if len(names) > 1:
        for i in pareto_front(vals, names):
            same = next((p for p in picks if p.trial == rows[i].number), None)
            if same is not None:
                same.role += ", pareto"
            else:
                picks.append(_pick("pareto", rows[i], vals[i], base))
    if test:
        _test(picks, folder)
    _save(folder, picks, names, test)
    return picks


def _pick(role: str, row: TrialRow, val: dict, base: dict) -> Pick:
    return Pick(role, row.number, row.run_dir or "", differs(row.recipe, base), val)


def _test(picks: list[Pick], folder: SweepFolder) -> None:
    """Each chosen run is evaluated once; its saved test metrics are reused after."""
    from cnnlab.runs import RunFolder

    done: dict[str, dict] = {}
    for pick in picks:
        if pick.run not in done:
            run = RunFolder(folder.run_path(pick.run, pick.trial))
            done[pick.run] = run.test_metrics()
            if not done[pick.run]:
                from cnnlab.evaluation import evaluate_run

                done[pick.run] = evaluate_run(run.path)
        pick.test = done[pick.run]


# ----------------------------------------------------------------------- table


def table(picks: list[Pick], names: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the selection table (the same for terminal, md and csv)."""
    test_keys = []
    for pick in picks:
        for key in pick.test or {}:
            if key.rsplit(".", 1)[-1] in TEST_COLUMNS and key not in test_keys:
                test_keys.append(key)
    header = ["model", "trial", "run", "differs from base", *names, *test_keys]
    rows = []
    for p in picks:
        diff = ", ".join(f"{k}={v}" for k, v in p.differs.items()) or "(base recipe)"
        row = [p.role, str(p.trial), p.run.removeprefix("runs/"), diff]
        row += [f"{p.val[m]:.4f}" for m in names]
        row += [f"{(p.test or {}).get(k, math.nan):.4f}" for k in test_keys]
        rows.append(row)
    return header, rows


def _save(folder: SweepFolder, picks: list[Pick], names: list[str], test: bool) -> None:
    header, rows = table(picks, names)
    write_json(
        folder.path / "selection.json",
        {"metrics": names, "test": test, "picks": [asdict(p) for p in picks]},
    )
    write_text(folder.path / "selection.md", markdown_table(header, rows))
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    write_text(folder.path / "selection.csv", buf.getvalue())


def print_table(picks: list[Pick], names: list[str], title: str) -> None:
    """The selection on the screen: a rich table in a terminal, Markdown elsewhere."""
    show_table(*table(picks, names), title)
