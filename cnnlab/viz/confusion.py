"""Confusion matrices (counts and row-normalized), per-class recall, most-confused pairs.

With many classes (GSN has 135) a matrix cannot carry labels, so two aggregated views stay
readable at any size: the most frequent (true -> predicted) errors, and, when class names
are grouped as "group:rest" (e.g. GSN's shape pair "circles+squares:5"), errors by group.
"""

from __future__ import annotations

import torch

from cnnlab.tasks.thresholds import threshold_said
from cnnlab.viz.base import Chart, new_figure, shorten
from cnnlab.viz.run_view import RunView

LABELLED = 30  # up to this many classes every tick is labelled
ANNOTATED = 15  # up to this many classes every cell shows its number
TOP_PAIRS = 15


def confusion_counts(truth: torch.Tensor, pred: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) int64, rows = true class, columns = predicted class: each (true, predicted)
    pair counted, as torchmetrics' `multiclass_confusion_matrix` counts them; importing
    torchmetrics for it cost `cnnlab report SWEEP` 1.5-3 s, and nothing else there needs it."""
    truth, pred = truth.long().flatten(), pred.long().flatten()
    ok = truth >= 0  # an image without a label (NO_CLASS) is in no row
    pairs = truth[ok] * n + pred[ok]
    return torch.bincount(pairs, minlength=n * n).view(n, n)


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """(n,) float64: correct / test images of each true class (recall)."""
    return cm.diag().double() / cm.sum(1).clamp_min(1)


def off_diagonal(cm: torch.Tensor) -> torch.Tensor:
    """The errors only: a copy of the matrix with the diagonal set to 0."""
    errors = cm.clone()
    errors.fill_diagonal_(0)
    return errors


def _heatmap(fig, ax, matrix: torch.Tensor, names: list[str], title: str, fmt: str) -> None:
    n = len(names)
    im = ax.imshow(matrix.numpy(), cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set(title=title, xlabel="predicted class", ylabel="true class")
    if n <= LABELLED:
        ax.set_xticks(range(n), [shorten(c, 14) for c in names], rotation=60, ha="right")
        ax.set_yticks(range(n), [shorten(c, 14) for c in names])
    else:  # too many to label: class indices, names in the per-class table
        ax.set(xlabel="predicted class (index)", ylabel="true class (index)")
    if n <= ANNOTATED:
        peak = matrix.max().item() or 1
        size = 10 if n <= 6 else 8 if n <= 12 else 6  # a few classes: numbers read at a glance
        for (r, c), v in zip(
            torch.cartesian_prod(torch.arange(n), torch.arange(n)).tolist(),
            matrix.flatten().tolist(),
            strict=True,
        ):
            ax.text(
                c,
                r,
                format(v, fmt),
                ha="center",
                va="center",
                fontsize=size,
                color="white" if v > 0.6 * peak else "black",
            )


def _matrix_chart(task: str, cm: torch.Tensor, names: list[str]) -> Chart:
    norm = cm.double() / cm.sum(1, keepdim=True).clamp_min(1)
    size = 5 if len(names) <= 12 else 7
    fig = new_figure(2 * size + 1, size)
    ax1, ax2 = fig.subplots(1, 2)
    _heatmap(fig, ax1, cm, names, f"{task}: counts (test, {int(cm.sum())} images)", "d")
    _heatmap(fig, ax2, norm, names, f"{task}: row-normalized (recall per class)", ".2f")
    accuracy = per_class_accuracy(cm).tolist()
    table = [
        {
            "class": c,
            "test images": int(cm[i].sum()),
            "correct": int(cm[i, i]),
            "recall": round(a, 4),  # as the right-hand matrix and the per-class bars call it
        }
        for i, (c, a) in enumerate(zip(names, accuracy, strict=True))
    ]
    return Chart(
        f"confusion_{task}",
        f"Confusion matrix: {task}",
        fig,
        "Rows are true classes, columns predictions.",
        table=table,
        extra={"counts": cm, "per_class_accuracy": accuracy},
    )


def _per_class_chart(task: str, cm: torch.Tensor, names: list[str]) -> Chart:
    accuracy = per_class_accuracy(cm)
    order = accuracy.argsort()  # worst first
    shown = order[:40]
    fig = new_figure(7, 0.8 + 0.22 * len(shown))
    ax = fig.subplots()
    ax.barh(range(len(shown)), accuracy[shown].numpy(), color="#4a7ab5")
    ax.set_yticks(range(len(shown)), [shorten(names[i], 24) for i in shown.tolist()])
    ax.invert_yaxis()
    ax.set(
        xlim=(0, 1),
        xlabel="test recall (the class's images predicted as it)",
        ylabel="class",
        title=f"{task}: per-class recall" + (", 40 worst classes" if len(names) > 40 else ""),
    )
    ax.grid(axis="x", alpha=0.3)
    return Chart(f"per_class_{task}", f"Per-class recall: {task}", fig)


def _pairs_chart(task: str, cm: torch.Tensor, names: list[str]) -> Chart:
    errors = off_diagonal(cm)
    k = min(TOP_PAIRS, int((errors > 0).sum()))
    values, flat = errors.flatten().topk(max(k, 1))
    pairs = [(i // len(names), i % len(names)) for i in flat.tolist()][:k]
    fig = new_figure(7, 0.8 + 0.25 * max(k, 1))
    ax = fig.subplots()
    labels = [f"{shorten(names[t], 20)} → {shorten(names[p], 20)}" for t, p in pairs]
    ax.barh(range(k), values[:k].numpy(), color="#c0392b")
    ax.set_yticks(range(k), labels)
    ax.invert_yaxis()
    ax.set(xlabel="test images", ylabel="true → predicted", title=f"{task}: most frequent errors")
    rows = [
        {"true": names[t], "predicted": names[p], "count": int(v)}
        for (t, p), v in zip(pairs, values.tolist(), strict=False)
    ]
    return Chart(f"confused_pairs_{task}", f"Most frequent errors: {task}", fig, table=rows)


def group_errors(cm: torch.Tensor, names: list[str]) -> tuple[list[str], torch.Tensor] | None:
    """Errors aggregated by the "group" of "group:rest" class names (seed 003's shape pairs)."""
    if not all(":" in n for n in names):
        return None
    group_of = [n.split(":", 1)[0] for n in names]
    groups = sorted(set(group_of))
    gidx = torch.tensor([groups.index(g) for g in group_of])
    out = torch.zeros(len(groups), len(groups), dtype=torch.long)
    index = (gidx[:, None].expand_as(cm), gidx[None, :].expand_as(cm))
    out.index_put_(index, off_diagonal(cm), accumulate=True)
    return groups, out


def group_accuracy(cm: torch.Tensor, names: list[str]) -> list[dict]:
    """Per group of "group:rest" class names: test images, exact accuracy, and how often the
    predicted class is at least in the right group (seed 003: the right shape pair)."""
    group_of = [n.split(":", 1)[0] for n in names]
    rows = []
    for g in sorted(set(group_of)):
        idx = torch.tensor([i for i, x in enumerate(group_of) if x == g])
        images = int(cm[idx].sum())
        exact = int(cm[idx, idx].sum())
        in_group = int(cm[idx][:, idx].sum())
        rows.append({
            "group": g,
            "images": images,
            "accuracy": round(exact / max(images, 1), 4),
            "group right": round(in_group / max(images, 1), 4),
        })  # fmt: skip
    return rows


def confusion_charts(task: str, cm: torch.Tensor, names: list[str]) -> list[Chart]:
    """All confusion views of one task from its (n, n) count matrix."""
    charts = [
        _matrix_chart(task, cm, names),
        _per_class_chart(task, cm, names),
        _pairs_chart(task, cm, names),
    ]
    grouped = group_errors(cm, names)
    if grouped is not None:
        groups, g = grouped
        fig = new_figure(7, 6)
        ax = fig.subplots()
        _heatmap(fig, ax, g, groups, f"{task}: misclassifications by group", "d")
        charts.append(
            Chart(
                f"group_errors_{task}",
                f"Errors by group: {task}",
                fig,
                table=group_accuracy(cm, names),
                extra={"groups": g},
            )
        )
    return charts


def confusion(view: RunView) -> list[Chart]:
    preds, charts = view.test_predictions, []
    for task in view.tasks_with("confusion"):
        names = view.task_classes(task)
        cm = confusion_counts(preds.truth[task], preds.pred[task], len(names))
        made = confusion_charts(task, cm, names)
        threshold = view.tasks[task].threshold
        if threshold is not None:  # its answers are not the top class's
            made[0].caption += f" The predictions answer {threshold_said(threshold)}."
        charts += made
    return charts
