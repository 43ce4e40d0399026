"""Inside each group of a study: its units that died and its best run's confusion.

A study of settings × seeds (seed 003: classification only, counts only, joint) compares
more than final numbers: its author found half the units dead and read the errors by shape
pair. This opens the groups' run folders: the dead-unit share of every activation layer
(mean ± std over the group's runs, best runs first, at most MAX_RUNS of them) and, for the
group's best run, the confusion views of every classification head that was trained.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from cnnlab.data.batches import Splits
from cnnlab.errors import counted
from cnnlab.sweeps.results import TrialRow
from cnnlab.sweeps.statistics import group_order
from cnnlab.tasks import Goal
from cnnlab.viz import Chart, RunView
from cnnlab.viz.confusion import confusion_charts, confusion_counts
from cnnlab.viz.dead_units import dead_table

# runs per group whose dead units are counted: each a pass over the test set, unless a report
# of it kept its test predictions (the pass keeps them for the next look)
MAX_RUNS = 5
MAX_GROUPS = 12  # more groups (a continuous parameter) is not a study of settings: skipped
CONFUSION_KEYS = ("confusion_", "group_errors_")  # of a task's views, the two a study compares


@dataclass
class Group:
    """What one group's runs look like inside."""

    label: str
    runs: int  # whose dead units were measured
    dead: dict[str, list[float]] = field(default_factory=dict)  # "layer (units)" -> fractions
    charts: list[Chart] = field(default_factory=list)  # the best run's confusion views


def inside_groups(rows: list[TrialRow], labels: list[str], metric: str, goal: Goal) -> list[Group]:
    """Per group (in label order), the dead units of its best runs and its best run's
    confusion. Runs of one data section share one load of the data. Nothing when there are
    more than MAX_GROUPS groups: each would cost model loads and passes over the data."""
    members: dict[str, list[TrialRow]] = defaultdict(list)
    for r, label in zip(rows, labels, strict=True):
        if r.run is not None and r.run.best_path.is_file():
            members[label].append(r)
    if len(members) > MAX_GROUPS:
        return []
    data: dict[str, Splits] = {}
    out = []
    for label, group in sorted(members.items(), key=lambda item: group_order(item[0])):
        best = ranked(group, metric, goal)[:MAX_RUNS]
        look = Group(label, len(best))
        for i, row in enumerate(best):
            view = _view(row, data)
            for layer in dead_table(view.test_predictions):
                key = f"{layer['layer']} ({layer['units']})"
                look.dead.setdefault(key, []).append(layer["dead fraction"])
            if i == 0:
                look.charts = _confusions(view, label)
            view.keep_predictions()
        out.append(look)
    return out


def dead_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """The dead-unit table: a row per layer, a column per group, mean ± std of the share of
    units that never fire on the test images."""
    layers = list(dict.fromkeys(k for g in groups for k in g.dead))
    header = ["layer (units)", *(f"{g.label} ({counted(g.runs, 'run')})" for g in groups)]
    body = [[layer, *(_share(g.dead.get(layer, [])) for g in groups)] for layer in layers]
    return header, body


def _share(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.1%}"
    return f"{statistics.mean(values):.1%} ± {statistics.stdev(values):.1%}"


def _slug(label: str) -> str:
    """A file stem from a group label such as "setting = joint"."""
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")


def ranked(group: list[TrialRow], metric: str, goal: Goal) -> list[TrialRow]:
    """The group's runs, best first: complete trials before pruned ones (a trial its pruner
    stopped after an epoch would show the dead units of a network that barely trained),
    each by the metric at its best epoch."""
    return sorted(group, key=lambda r: (r.state != "complete", _rank(r, metric, goal)))


def _rank(row: TrialRow, metric: str, goal: Goal) -> float:
    value = row.at_best_epoch().get(metric)
    if not isinstance(value, int | float):
        return float("inf")
    return -goal.sign * value


def _view(row: TrialRow, data: dict[str, Splits]) -> RunView:
    """The run's view, its data loaded once per distinct data section, seed and layout."""
    view = RunView(row.run.path)
    r = view.recipe
    targets = sorted({t.target for t in r.tasks.values()})
    key = json.dumps([r.data.model_dump(mode="json"), r.seed, r.train.channels_last, targets])
    if key in data:
        view.share_splits(data[key])
    else:
        data[key] = view.splits
    return view


def _confusions(view: RunView, label: str) -> list[Chart]:
    """The confusion matrix and errors by group of each classification head that learned
    (weight > 0: a head left at its initial weights would only show noise)."""
    charts = []
    preds = view.test_predictions  # as the run's own report and test metrics have it
    for task in view.tasks_with("confusion"):
        if view.recipe.tasks[task].weight <= 0:
            continue
        names = view.task_classes(task)
        cm = confusion_counts(preds.truth[task], preds.pred[task], len(names))
        for chart in confusion_charts(task, cm, names):
            if chart.key.startswith(CONFUSION_KEYS):
                chart.key = f"{_slug(label)}_{chart.key}"
                chart.title = f"{label}: {chart.title} (its best run)"
                if chart.key.endswith(f"confusion_{task}"):
                    chart.table = None  # a row per class: the run's own report has it
                charts.append(chart)
    return charts
