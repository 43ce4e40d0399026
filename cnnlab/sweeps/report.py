"""The sweep comparison report: report.html (self-contained, offline) plus PNGs.

What seed 002 read from W&B and seed 001 drew by hand, from the study and the run folders:
metric vs trial start time, parallel coordinates, parameter importance (Optuna's PED-ANOVA
evaluator: no extra dependency) beside each parameter's correlation with each metric,
learning curves coloured by a grouping (seed 001: λ1 > λ2, =, <), the selection table and
every trial with its outcome. plotly.js is embedded once; every user-typed string goes
through jinja2's autoescape.
"""

from __future__ import annotations

import base64
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from cnnlab.progress import markdown_table
from cnnlab.recipe import flatten, metric_goal
from cnnlab.runs import write_text
from cnnlab.sweeps.inside import dead_rows, inside_groups
from cnnlab.sweeps.results import TrialRow, load_trials, open_study, with_runs
from cnnlab.sweeps.study import SweepFolder

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]
OUTCOME_COLOURS = {
    "complete": "#1f77b4",
    "pruned": "#ff7f0e",
    "error": "#d62728",
    "interrupted": "#7f7f7f",
    "running": "#2ca02c",
    "waiting": "#bcbd22",
}


# ------------------------------------------------------------------- the data


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
    importance evenly. Any error Optuna raises is a bug to see, not "too few"."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}
    return get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())


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
    """Per group, mean ± std over its trials of each summary metric (at each run's best
    epoch) and of the training time: the table a study of settings × seeds reports."""
    cols = [m for m in metrics if m.rsplit(".", 1)[-1] in SUMMARY]
    members: dict[str, list[TrialRow]] = defaultdict(list)
    for r, label in zip(rows, labels, strict=True):
        members[label].append(r)
    body = []
    for label, group in sorted(members.items()):
        cells = [label, str(len(group))]
        cells += [_mean_std([r.at_best_epoch().get(m) for r in group]) for m in cols]
        minutes = [sum(e.get("seconds", 0.0) for e in r.metrics) / 60 for r in group]
        body.append([*cells, _mean_std(minutes, digits=2)])
    return ["group", "trials", *cols, "training minutes"], body


def _mean_std(values: list, digits: int = 4) -> str:
    v = [x for x in values if isinstance(x, int | float) and math.isfinite(x)]
    if len(v) < 2:
        return f"{v[0]:.{digits}f}" if v else ""
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


# -------------------------------------------------------------- plotly charts


def chart_metric_vs_time(rows: list[TrialRow], metric: str, goal: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    timed = sorted((r for r in rows if r.start and r.value is not None), key=lambda r: r.start)
    for outcome in ("complete", "pruned"):
        sel = [r for r in timed if r.outcome == outcome]
        fig.add_trace(
            go.Scatter(
                x=[r.start for r in sel],
                y=[r.value for r in sel],
                mode="markers",
                name=outcome,
                marker={"color": OUTCOME_COLOURS[outcome]},
                text=[_hover(r) for r in sel],
                hoverinfo="text+y",
            )
        )
    done = [r for r in timed if r.outcome == "complete"]
    pick = max if goal == "maximize" else min
    running = [pick(r.value for r in done[: i + 1]) for i in range(len(done))]
    fig.add_trace(
        go.Scatter(x=[r.start for r in done], y=running, mode="lines", name="best so far")
    )
    fig.update_layout(xaxis_title="trial start", yaxis_title=metric, height=420)
    return fig


def _hover(r: TrialRow) -> str:
    return f"trial {r.number}<br>" + "<br>".join(f"{k}={v}" for k, v in r.params.items())


def chart_parallel(rows: list[TrialRow], metric: str):
    import plotly.graph_objects as go

    done = [r for r in rows if r.value is not None]
    dims = []
    for name, values in param_columns(done).items():
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            dims.append({"label": name, "values": values})
        else:
            levels = sorted({str(v) for v in values})
            dims.append(
                {
                    "label": name,
                    "values": [levels.index(str(v)) for v in values],
                    "tickvals": list(range(len(levels))),
                    "ticktext": levels,
                }
            )
    values = [r.value for r in done]
    dims.append({"label": metric, "values": values})
    line = {"color": values, "colorscale": "Viridis", "showscale": True}
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line))
    fig.update_layout(height=460)
    return fig


def chart_importance(imp: dict[str, float]):
    import plotly.graph_objects as go

    names = list(imp)[::-1]
    fig = go.Figure(go.Bar(x=[imp[n] for n in names], y=names, orientation="h"))
    fig.update_layout(
        xaxis_title="importance (PED-ANOVA)",
        height=110 + 34 * len(names),  # the margins below plus one bar per parameter
        margin={"l": 20, "r": 20, "t": 20, "b": 60},
        yaxis={"automargin": True},  # long dotted names push the bars right, not off-page
    )
    return fig


def chart_curves(rows: list[TrialRow], labels: list[str], metric: str):
    """One trace per group (curves joined by gaps): fast with thousands of trials."""
    import plotly.graph_objects as go

    by_group: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r, label in zip(rows, labels, strict=True):
        xs, ys = by_group[label]
        for m in r.metrics:
            if metric in m:
                xs.append(m["epoch"])
                ys.append(m[metric])
        xs.append(None)
        ys.append(None)
    fig = go.Figure()
    for i, (label, (xs, ys)) in enumerate(sorted(by_group.items())):
        colour = COLOURS[i % len(COLOURS)]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=label, line={"color": colour}))
    fig.update_layout(xaxis_title="epoch", yaxis_title=metric, height=420)
    return fig


# ----------------------------------------------------------- matplotlib PNGs


def save_pngs(folder: Path, rows, labels, metric, imp) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    names = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        names.append(name)

    timed = sorted((r for r in rows if r.start and r.value is not None), key=lambda r: r.start)
    fig, ax = plt.subplots(figsize=(7, 4))
    for outcome in ("complete", "pruned"):
        sel = [r for r in timed if r.outcome == outcome]
        ax.scatter([r.start for r in sel], [r.value for r in sel], s=14, label=outcome,
                   color=OUTCOME_COLOURS[outcome])  # fmt: skip
    ax.set(xlabel="trial start", ylabel=metric, title=f"{metric} vs trial start")
    ax.legend()
    fig.autofmt_xdate()
    save(fig, "metric_vs_time.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    _png_parallel(ax, [r for r in rows if r.value is not None], metric)
    save(fig, "parallel_coordinates.png")

    if imp:
        fig, ax = plt.subplots(figsize=(6, 1 + 0.4 * len(imp)))
        ax.barh(list(imp)[::-1], list(imp.values())[::-1])
        ax.set(xlabel="importance (PED-ANOVA)", title="parameter importance")
        save(fig, "importance.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    colour = {g: COLOURS[i % len(COLOURS)] for i, g in enumerate(sorted(set(labels)))}
    lines, colours = [], []
    for r, label in zip(rows, labels, strict=True):
        pts = [(m["epoch"], m[metric]) for m in r.metrics if metric in m]
        if pts:
            lines.append(pts)
            colours.append(colour[label])
    ax.add_collection(LineCollection(lines, colors=colours, alpha=0.7, linewidths=1))
    ax.autoscale()
    for g, c in colour.items():
        ax.plot([], [], color=c, label=g)
    ax.set(xlabel="epoch", ylabel=metric, title="learning curves")
    ax.legend(fontsize=8)
    save(fig, "learning_curves.png")
    return names


def _png_parallel(ax, rows: list[TrialRow], metric: str) -> None:
    cols = param_columns(rows)
    cols[metric] = [r.value for r in rows]
    if not rows:
        return
    scaled = []
    for values in cols.values():
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            x = np.asarray(values, float)
        else:
            levels = sorted({str(v) for v in values})
            x = np.asarray([levels.index(str(v)) for v in values], float)
        span = x.max() - x.min()
        scaled.append((x - x.min()) / span if span else np.full_like(x, 0.5))
    data = np.stack(scaled, axis=1)  # (trials, axes)
    values = np.asarray(cols[metric], float)
    order = np.argsort(values if metric_goal(metric) == "max" else -values)
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection

    xs = np.arange(data.shape[1])
    segments = [np.column_stack([xs, data[i]]) for i in order]
    colours = colormaps["viridis"](data[order, -1])
    ax.add_collection(LineCollection(segments, colors=colours, alpha=0.6, linewidths=1))
    ax.set_xlim(-0.1, data.shape[1] - 0.9)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(range(data.shape[1]), list(cols), rotation=20, fontsize=7)
    ax.set_yticks([])
    ax.set_title("parallel coordinates (each axis scaled to its range)")


# ------------------------------------------------------------------- the page


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cnnlab sweep {{ name }}</title>
<script>{{ plotlyjs | safe }}</script>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3} .num{text-align:right;font-variant-numeric:tabular-nums}
.wide{overflow-x:auto}
</style></head><body>
<h1>Sweep {{ name }}</h1>
<p>{{ method }} search over {{ n_params }} parameters; {{ goal }} <b>{{ metric }}</b>;
{{ counts }}. Best: {{ best }}.</p>
<h2>{{ metric }} vs trial start time</h2>{{ fig_time | safe }}
<h2>Parallel coordinates</h2>{{ fig_parallel | safe }}
<h2>Parameter importance and correlation</h2>
{{ fig_importance | safe }}
<div class="wide">
<table><tr><th>parameter</th>{% for m in metrics %}<th>{{ m }}</th>{% endfor %}</tr>
{% for label, values in corr %}<tr><td>{{ label }}</td>
{% for v in values %}<td class="num" style="background:{{ v | shade }}">{{ v | num }}</td>
{% endfor %}</tr>{% endfor %}</table>
<p>Pearson correlation over trials, at each run's best epoch. A categorical parameter has one
row per value (is it this value).</p></div>
<h2>Learning curves{% if group_by %} by {{ group_by }}{% endif %}</h2>{{ fig_curves | safe }}
<p>{% for g, n in group_counts %}{{ g }}: {{ n }} trial(s){% if not loop.last %}; {% endif %}
{% endfor %}</p>
{% if summary %}<h2>By {{ group_by }}: mean ± std over trials</h2><div class="wide">
<table><tr>{% for h in summary[0] %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in summary[1] %}<tr><td>{{ row[0] }}</td>{% for c in row[1:] %}
<td class="num">{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>
<p>Validation metrics at each run's best epoch; training time summed over its epochs.</p>
</div>{% endif %}
{% if dead %}<h2>Dead units by {{ group_by }}</h2><div class="wide">
<table><tr>{% for h in dead[0] %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in dead[1] %}<tr><td>{{ row[0] }}</td>{% for c in row[1:] %}
<td class="num">{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>
<p>Share of each activation layer's units that never output &gt; 0 on the validation images
(mean ± std over each group's best runs): a dead ReLU unit passes no gradient and has stopped
learning.</p></div>{% endif %}
{% for chart in inside_charts %}<h3>{{ chart.title }}</h3>
<img src="data:image/png;base64,{{ chart.png }}" style="max-width:100%" alt="{{ chart.title }}">
{% if chart.table %}<table><tr>{% for h in chart.table[0] %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in chart.table %}<tr>{% for v in row.values() %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table>{% endif %}{% endfor %}
<h2>Selection</h2>
{% if selection %}<table><tr>{% for h in selection[0] %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in selection[1] %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}
</table>{% else %}<p>No selection yet: run <code>cnnlab select {{ path }} --test</code>.</p>
{% endif %}
<h2>Trials</h2>
<table><tr><th>trial</th><th>outcome</th><th>{{ metric }}</th><th>epochs</th><th>parameters</th>
<th>run</th><th>reason</th></tr>
{% for r in trials %}<tr><td>{{ r.number }}</td><td>{{ r.outcome }}</td>
<td class="num">{{ r.value | num }}</td><td class="num">{{ r.epochs }}</td>
<td>{{ r.params_text }}</td><td>{{ r.run_dir or "" }}</td><td>{{ r.reason_text }}</td></tr>
{% endfor %}</table>
<p>PNG copies: {% for p in pngs %}<a href="{{ p }}">{{ p }}</a> {% endfor %}</p>
</body></html>
"""


def _num(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _shade(v) -> str:
    if v is None or math.isnan(v):
        return "#fff"
    a = min(abs(v), 1.0) * 0.6
    return f"rgba(214,39,40,{a:.2f})" if v < 0 else f"rgba(31,119,180,{a:.2f})"


def build_report(folder: SweepFolder, storage: str | None, group_by: str | None = None) -> Path:
    """Write report.html and the PNGs into the sweep folder; return the HTML's path."""
    import jinja2
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    meta = folder.meta()
    study = open_study(folder, storage)
    rows = load_trials(folder, storage, study)
    metric, goal = meta["metric"], meta["goal"]
    runs = with_runs(rows)
    labels = groups(runs, group_by)
    metrics = [metric, *[m for m in val_metrics(runs) if m != metric]]
    imp = importances(study, metric)
    done = [r for r in rows if r.state == "complete"]
    pick = max if goal == "maximize" else min
    best = pick(done, key=lambda r: r.value) if done else None

    def div(fig) -> str:
        return pio.to_html(fig, full_html=False, include_plotlyjs=False)

    env = jinja2.Environment(autoescape=True)
    env.filters.update(num=_num, shade=_shade)
    trials = [
        {
            "number": r.number,
            "outcome": r.outcome,
            "value": r.value,
            "epochs": r.epochs,
            "run_dir": r.run_dir,
            "params_text": ", ".join(f"{k}={v}" for k, v in r.params.items()),
            "reason_text": " ".join(
                filter(None, [r.reason, f"retried as trial {r.retried_as}" if r.retried_as else ""])
            ),
        }
        for r in rows
    ]
    counts = defaultdict(int)
    for r in rows:
        counts[r.outcome] += 1
    inside = inside_groups(runs, labels, metric, goal) if group_by else []
    summary = group_table(runs, labels, metrics) if group_by else None
    dead = dead_rows(inside) if inside else None
    if summary:
        _write_study(folder.path / "study.md", group_by, summary, dead)
    page = env.from_string(TEMPLATE).render(
        name=meta["study"],
        path=str(folder.path),
        method=meta["method"],
        n_params=len(folder.spec().params),
        goal=goal,
        metric=metric,
        counts=", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
        best=f"{best.value:.4f} (trial {best.number}, {best.run_dir})" if best else "none yet",
        plotlyjs=get_plotlyjs(),
        fig_time=div(chart_metric_vs_time(rows, metric, goal)),
        fig_parallel=div(chart_parallel(rows, metric)),
        fig_importance=div(chart_importance(imp)) if imp else "<p>Too few trials yet.</p>",
        corr=correlations(done, metrics),
        metrics=metrics,
        group_by=group_by,
        fig_curves=div(chart_curves(runs, labels, metric)),
        group_counts=sorted(Counter(labels).items()),
        summary=summary,
        dead=dead,
        inside_charts=[_embedded(c, folder.path) for g in inside for c in g.charts],
        selection=_selection(folder),
        trials=trials,
        pngs=save_pngs(folder.path, runs, labels, metric, imp),
    )
    out = folder.path / "report.html"
    write_text(out, page)
    return out


def _write_study(path: Path, group_by: str, summary, dead) -> None:
    """study.md: the study's tables as Markdown, for a paper or a README."""
    parts = [f"## By {group_by}: mean ± std over trials\n", markdown_table(*summary)]
    if dead:
        parts += [f"\n## Dead units by {group_by} (share never > 0 on validation)\n"]
        parts += [markdown_table(*dead)]
    write_text(path, "\n".join(parts))


def _embedded(chart, folder: Path) -> dict:
    """A group's chart saved beside the sweep's PNGs and inlined in the page."""
    png = base64.b64encode(chart.save(folder).read_bytes()).decode("ascii")
    return {"title": chart.title, "png": png, "table": chart.table}


def _selection(folder: SweepFolder):
    """The table `cnnlab select` saved, as (header, rows), or None."""
    import json

    from cnnlab.sweeps.select import Pick, table

    path = folder.path / "selection.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    picks = [Pick(**p) for p in saved["picks"]]
    return table(picks, saved["metrics"])
