"""The sweep comparison report: report.html (self-contained, offline) and its charts' PNGs.

What seed 002 read from W&B and seed 001 drew by hand, from the study and the run folders:
the metric against trial start time, parallel coordinates, parameter importance beside each
parameter's correlation with each metric (cnnlab/sweeps/statistics.py), learning curves
coloured by a grouping (seed 001: λ1 > λ2, =, <) with each group's mean ± std and what its
runs look like inside, the selection table and every trial with its outcome. The charts are
the figure layer's (cnnlab/sweeps/charts.py); the page is a template beside the run
report's (templates/sweep_report.html.j2), sharing its figure block and style, and like it
escapes everything a user typed.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from pathlib import Path

from cnnlab.differences import yaml_text
from cnnlab.progress import markdown_table
from cnnlab.recipe import flatten, upgrade_saved
from cnnlab.report import TEMPLATES, block, format_value
from cnnlab.runs import write_text
from cnnlab.sweeps import charts
from cnnlab.sweeps.inside import dead_rows, inside_groups
from cnnlab.sweeps.results import TrialRow, load_trials, open_study, with_runs
from cnnlab.sweeps.statistics import (
    correlations,
    group_fields,
    group_order,
    group_table,
    groups,
    importances,
    val_metrics,
)
from cnnlab.sweeps.study import SweepFolder


def _num(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _shade(v) -> str:
    """A correlation's cell colour: blue for positive, red for negative, by its size."""
    if v is None or math.isnan(v):
        return "#fff"
    a = min(abs(v), 1.0) * 0.6
    return f"rgba(214,39,40,{a:.2f})" if v < 0 else f"rgba(31,119,180,{a:.2f})"


def _trial(r: TrialRow) -> dict:
    retried = f"retried as trial {r.retried_as}" if r.retried_as else ""
    first = f"retry of trial {r.retry_of}" if r.retry_of is not None else ""
    return {
        "number": r.number,
        "outcome": r.outcome,
        "value": r.value,
        "epochs": r.epochs,
        "run_dir": r.run_dir,
        "params_text": ", ".join(f"{k}={yaml_text(v)}" for k, v in r.params.items()),
        "reason_text": "; ".join(filter(None, [first, r.reason, retried])),
    }


def build_report(folder: SweepFolder, storage: str | None, group_by: str | None = None) -> Path:
    """Write report.html and the charts' PNGs into the sweep folder; return the HTML's path."""
    from plotly.offline import get_plotlyjs

    meta = folder.meta()
    study = open_study(folder, storage)
    rows = load_trials(folder, storage, study)
    metric, goal = meta.metric, meta.goal
    runs = with_runs(rows)
    if group_by:
        _check_group_by(folder, runs, group_by)
    labels = groups(runs, group_by)
    metrics = [metric, *[m for m in val_metrics(runs) if m != metric]]
    imp = importances(study, metric)
    done = [r for r in rows if r.state == "complete"]
    best = goal.best(done, key=lambda r: r.value) if done else None
    inside = inside_groups(runs, labels, metric, goal) if group_by else []
    summary = group_table(runs, labels, metrics) if group_by else None
    loss_note = _loss_note(runs, labels, summary[0]) if summary else None
    dead = dead_rows(inside) if inside else None
    if summary:
        _write_study(folder.path / "study.md", group_by, summary, dead, loss_note)
    here = folder.path
    page = TEMPLATES.get_template("sweep_report.html.j2").render(
        name=meta.study,
        path=str(here),
        method=meta.method,
        n_params=len(folder.spec().params),
        goal=goal,
        metric=metric,
        counts=", ".join(f"{n} {k}" for k, n in sorted(Counter(r.outcome for r in rows).items())),
        best=f"{best.value:.4f} ({best.label}, {best.run_dir})" if best else "none yet",
        built=time.strftime("%Y-%m-%d %H:%M:%S"),
        plotly_js=get_plotlyjs(),
        time=block(charts.metric_vs_time(rows, metric, goal), here),
        parallel=block(charts.parallel(rows, metric, goal), here),
        importance=block(charts.importance(imp, len(done)), here) if imp else None,
        corr=correlations(done, metrics),
        metrics=metrics,
        group_by=group_by,
        curves=block(charts.curves(runs, _curve_labels(runs, labels, group_by), metric), here),
        group_counts=sorted(Counter(labels).items(), key=lambda item: group_order(item[0])),
        summary=summary,
        loss_note=loss_note,
        dead=dead,
        inside=[block(c, here) for g in inside for c in g.charts],
        selection=_selection(folder),
        trials=[_trial(r) for r in rows],
        fmt=format_value,
        num=_num,
        shade=_shade,
    )
    out = here / "report.html"
    write_text(out, page)
    return out


def _check_group_by(folder: SweepFolder, runs: list[TrialRow], group_by: str) -> None:
    """Refuse a --group-by that names nothing to group by, before the report writes a file.
    Recipe fields are the base recipe's and the trials' (a trial may fill a section the
    base leaves empty); swept names are the sweep file's, mapped or not."""
    fields = set(flatten(folder.base()))
    for r in runs:
        fields.update(flatten(r.recipe))
    swept = [p.name for p in folder.spec().params]
    group_fields(group_by, swept, fields, str(folder.recipe_path))


def _curve_labels(
    runs: list[TrialRow], labels: list[str], group_by: str | None
) -> list[str] | None:
    """The learning curves' groups: `--group-by`'s, else each trial its own colour (None)
    while there are few enough to tell apart, else by outcome."""
    return labels if group_by or len(runs) > charts.TRIALS_APART else None


def _loss_note(runs: list[TrialRow], labels: list[str], header: list[str]) -> str | None:
    """The note `cnnlab compare` puts under its loss chart, for the group table's loss
    columns: None when they show no loss or the trials' losses are one function."""
    from cnnlab.differences import loss_note, varying

    if not any(h.endswith("loss") for h in header):
        return None
    members: dict[str, list[tuple[dict, list[str]]]] = {}
    for r, label in sorted(zip(runs, labels, strict=True), key=lambda x: group_order(x[1])):
        recipe = upgrade_saved(copy.deepcopy(r.recipe))  # it edits what it is given
        tasks = [t for t, cfg in (recipe.get("tasks") or {}).items() if cfg is not None]
        members.setdefault(label, []).append((flatten(recipe), tasks))
    differs = varying([flat for group in members.values() for flat, _ in group])
    return loss_note(members, differs, "loss columns", "groups") if members else None


def _write_study(path: Path, group_by: str, summary, dead, loss_note: str | None) -> None:
    """study.md: the study's tables as Markdown, for a paper or a README."""
    parts = [f"## By {group_by}: mean ± std over complete trials\n", markdown_table(*summary)]
    parts += [f"\nNote: {loss_note}"] if loss_note else []
    if dead:
        parts += [f"\n## Dead units by {group_by} (share never > 0 on the test set)\n"]
        parts += [markdown_table(*dead)]
    write_text(path, "\n".join(parts))


def _selection(folder: SweepFolder):
    """The table `cnnlab select` saved (the tested one first), as (header, rows), or None."""
    from cnnlab.sweeps.select import saved_selection, table

    saved = saved_selection(folder)
    return table(*saved) if saved else None
