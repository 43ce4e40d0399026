"""The numbers a sweep's report shows: which parameters matter and how groups compare.

Per trial, at its run's best epoch: each parameter's Pearson correlation with each
validation metric (a categorical one per value, as W&B does), Optuna's PED-ANOVA importance
for the sweep metric, and per group of trials (an outcome, a recipe field, a swept name, or
"A > B") mean ± std of the summary metrics and of the training time.
"""

from __future__ import annotations

import difflib
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.recipe import flatten
from cnnlab.sweeps.results import TrialRow


def val_metrics(rows: list[TrialRow]) -> list[str]:
    """Validation metrics every finished run reports, the sweep metric first."""
    names: list[str] = []
    for r in rows:
        for k in r.at_best_epoch():
            if k.startswith("val.") and k not in names:
                names.append(k)
    return names


def param_columns(rows: list[TrialRow]) -> dict[str, list]:
    """Each parameter's values over the rows (lists/dicts as text)."""
    names = sorted({k for r in rows for k in r.params})
    return {n: [_plain(r.params.get(n)) for r in rows] for n in names}


def _plain(value):
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def correlations(rows: list[TrialRow], metrics: list[str]) -> list[tuple[str, list[float]]]:
    """Pearson correlation of each parameter with each metric at the runs' best epochs.
    A categorical parameter gives one row per value (is it this value: 0/1), as W&B does."""
    best = [r.at_best_epoch() for r in rows]
    table = []
    for name, values in param_columns(rows).items():
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            columns = [(name, [float(v) for v in values])]
        else:
            columns = [
                (f"{name} = {level}", [float(v == level) for v in values])
                for level in sorted(set(values), key=str)
            ]
        for label, xs in columns:
            table.append(
                (label, [_pearson(xs, [b.get(m, math.nan) for b in best]) for m in metrics])
            )
    return table


def _pearson(xs: list[float], ys: list[float]) -> float:
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def importances(study, metric: str) -> dict[str, float]:
    """Optuna's PED-ANOVA importances of the parameters for the sweep metric; none (the page
    says "too few trials") below 3 complete trials, where Optuna would only split the
    importance evenly. Any error Optuna raises is a bug to see, not "too few"; its warnings
    (the best trials are all the trials: "importances will be equal") stay off the terminal,
    and the chart's caption says when the importances came out equal."""
    import warnings

    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())


def group_fields(group_by: str, swept: list[str], fields: Iterable[str], recipe: str) -> list[str]:
    """The one name or the two (A,B) that `--group-by` gives, each a swept parameter (of
    `swept`) or a recipe field (of `fields`, the trials' and the base `recipe`'s). Checked
    before a report writes anything: a misspelt field would put every trial in one group
    "X = None" and overwrite study.md with that."""
    names = [f.strip() for f in group_by.split(",")]
    if not 1 <= len(names) <= 2 or not all(names):
        raise CnnlabError(
            f"--group-by {group_by!r}: give one field, or two as A,B "
            "(e.g. tasks.cls.weight,tasks.ink.weight)"
        )
    known = {*swept, *fields}
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), 1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise CnnlabError(
                f"--group-by {name!r} names no recipe field and no swept parameter; {hint}"
                f"group by a swept parameter ({', '.join(swept) or 'none'}) or a dotted "
                f"field of {recipe}"
            )
    return names


def group_order(label: str) -> tuple:
    """Sort key of a group label: "x = 8" before "x = 16", as numbers, not as text; labels
    that are no number ("x = relu", "complete", "A > B") by their text, after the numbers."""
    name, sep, value = label.partition(" = ")
    if sep:
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return (name, 0, number, value)
    return (name if sep else label, 1, 0.0, value if sep else "")


def groups(rows: list[TrialRow], group_by: str | None) -> list[str]:
    """A label per row: by outcome, by one recipe field or swept parameter (a name the sweep
    file samples, such as gsn_settings' `setting`), or A,B -> "A > B" / "=" / "<"."""
    if not group_by:
        return [r.outcome for r in rows]
    fields = [f.strip() for f in group_by.split(",")]
    labels = []
    for r in rows:
        flat = {**r.params, **flatten(r.recipe)}
        if len(fields) == 1:
            labels.append(f"{fields[0]} = {flat.get(fields[0])}")
            continue
        a, b = flat.get(fields[0]), flat.get(fields[1])
        try:
            sign = ">" if a > b else "<" if a < b else "="
        except TypeError:
            sign = "?"
        labels.append(f"{fields[0]} {sign} {fields[1]}")
    return labels


SUMMARY = ("loss", "accuracy", "f1", "rmse", "mae")  # what a study table compares per group


def group_table(
    rows: list[TrialRow], labels: list[str], metrics: list[str]
) -> tuple[list[str], list[list[str]]]:
    """Per group, mean ± std over its complete trials of each summary metric (at each run's
    best epoch) and of the training time: the table a study of settings × seeds reports. A
    pruned, failed or unfinished trial stopped early, and its best epoch would pull its
    group's mean towards the first epochs: the trials column says how many were left out."""
    cols = [m for m in metrics if m.rsplit(".", 1)[-1] in SUMMARY]
    members: dict[str, list[TrialRow]] = defaultdict(list)
    for r, label in zip(rows, labels, strict=True):
        members[label].append(r)
    body = []
    for label, group in sorted(members.items(), key=lambda item: group_order(item[0])):
        done = [r for r in group if r.outcome == "complete"]
        left = (
            f" ({len(group) - len(done)} not complete, left out)" if len(done) < len(group) else ""
        )
        cells = [label, f"{len(done)}{left}"]
        cells += [_mean_std([r.at_best_epoch().get(m) for r in done]) for m in cols]
        minutes = [sum(e.get("seconds", 0.0) for e in r.metrics) / 60 for r in done]
        body.append([*cells, _mean_std(minutes, digits=2)])
    return ["group", "trials", *cols, "training minutes"], body


def _mean_std(values: list, digits: int = 4) -> str:
    v = [x for x in values if isinstance(x, int | float) and math.isfinite(x)]
    if len(v) < 2:
        return f"{v[0]:.{digits}f}" if v else ""
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"
