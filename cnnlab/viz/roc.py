"""ROC and precision-recall curves: how well a class's probability tells its images from the
rest at every threshold, not only at the model's own answer.

For each task that lists "roc" among its figures (a classification, or a multi-label task of
one's own), on the labelled test images, at the task's fitted temperature: one class against
the rest, a curve per class with its area (AUC) and average precision (AP). Two classes of
one label draw the second's curves only (the first's ROC is their mirror). More than
MAX_CURVES classes: every curve in grey, the LOWEST classes by AUC in colour.

The curves are cumulative counts over the images sorted by probability, a point at every
distinct one (`thresholded`), the AUC their trapezoids (ties count half, as the rank-sum
form has it) and the AP the sum of recall steps times precision, as torchmetrics and
scikit-learn define them (tests/test_roc.py checks them against torchmetrics). They are
computed here, not imported: the report reads its kept test predictions without importing
torchmetrics, whose import (torchvision with it) takes 2.4 s of a report's 10 on a 2-core
CPU, for arithmetic of a few sorted sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.tasks.thresholds import Threshold, answered, rates, threshold_said
from cnnlab.viz.base import Chart, new_figure
from cnnlab.viz.run_view import RunView

MAX_CURVES = 10  # in colour, each named in the legend
LOWEST = 5  # above MAX_CURVES: the classes with the lowest AUC, in colour


@dataclass
class Curve:
    """One class against the rest: its curves, areas and the model's own answers' rates."""

    name: str
    positives: int
    fpr: torch.Tensor
    tpr: torch.Tensor
    precision: torch.Tensor
    recall: torch.Tensor
    auc: float
    ap: float
    answered: tuple[float, float, float] | None  # FPR, TPR, precision of its top-class answers
    points: list[dict]  # thresholds that find 80, 90, 95, 99 % of it (`operating_points`)
    cuts: torch.Tensor  # each distinct probability, highest first: the threshold at each point


def roc(view: RunView) -> list[Chart]:
    charts = []
    for task in view.tasks_with("roc"):
        t = view.tasks[task]
        rows = view.test_predictions.rows[task]
        names = t.each
        probs = t.probabilities(rows.logits)  # (N, K) at the fitted temperature
        single = rows.targets.ndim == 1  # one label per image, else one yes/no per class
        if probs.ndim != 2 or not (single or rows.targets.shape == probs.shape):
            raise CnnlabError(
                f"roc: tasks.{task} gives probabilities of shape {tuple(probs.shape)} for "
                f"targets of shape {tuple(rows.targets.shape)}; the figure needs one "
                "probability per class and image, with a class index or a yes/no per class "
                f"as the target: leave roc out of {type(t).__name__}.figures"
            )
        truth = F.one_hot(rows.targets, probs.shape[1]).bool() if single else rows.targets > 0.5
        answers = F.one_hot(answered(probs, t.threshold), probs.shape[1]).bool() if single else None
        shown = [1] if single and probs.shape[1] == 2 else range(probs.shape[1])
        curves = [_curve(names[k], probs[:, k], truth[:, k], answers, k) for k in shown]
        drawn = [c for c in curves if c is not None]
        if drawn:
            n = len(rows.targets)
            charts.append(_chart(task, drawn, curves, names, n, single, t.threshold))
    return charts


def thresholded(
    p: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(true, false) positives counted at each distinct probability of `p`, highest first,
    and those probabilities: a threshold there (at or above it: the class) puts them so.
    `y`: True for the class's images."""
    order = p.argsort(descending=True, stable=True)
    p, y = p[order], y[order].double()
    last = torch.ones_like(p, dtype=torch.bool)
    last[:-1] = p[1:] != p[:-1]  # the last image of each run of equal probabilities
    return y.cumsum(0)[last], (1 - y).cumsum(0)[last], p[last]


def _curve(
    name: str, p: torch.Tensor, y: torch.Tensor, answers: torch.Tensor | None, k: int
) -> Curve | None:
    """None when the test images hold no image of the class, or no other: no curve exists."""
    positives = int(y.sum())
    if positives in (0, len(y)):
        return None
    tp, fp, cuts = thresholded(p, y)
    zero = torch.zeros(1, dtype=tp.dtype)
    tpr, fpr = torch.cat([zero, tp / positives]), torch.cat([zero, fp / (len(y) - positives)])
    precision, recall = tp / (tp + fp), tp / positives
    ap = float(((recall - torch.cat([zero, recall[:-1]])) * precision).sum())
    answered = None
    if answers is not None:  # a class never answered has no precision: NaN, no dot
        said = rates(answers[:, k], y)
        answered = (said["flagged"], said["recall"], said["precision"])
    auc = float(torch.trapezoid(tpr, fpr))
    recall, precision = torch.cat([zero, recall]), torch.cat([precision[:1], precision])
    points = operating_points(tp / positives, fp / (len(y) - positives), tp / (tp + fp), cuts)
    return Curve(name, positives, fpr, tpr, precision, recall, auc, ap, answered, points, cuts)


RECALLS = (0.8, 0.9, 0.95, 0.99)  # the shares of a class found that the caption offers


def operating_points(
    tpr: torch.Tensor, fpr: torch.Tensor, precision: torch.Tensor, cuts: torch.Tensor
) -> list[dict]:
    """For each share of RECALLS: the highest threshold that finds at least that share of
    the class's images, and what it costs there (the others flagged too, the precision);
    one point where several shares meet at the same threshold."""
    wanted = torch.tensor(RECALLS, dtype=tpr.dtype)
    at = sorted(set(torch.searchsorted(tpr, wanted).tolist()) - {len(tpr)})  # reached: tpr rises
    return [
        {"recall": float(tpr[i]), "threshold": float(cuts[i]), "fpr": float(fpr[i]),
         "precision": float(precision[i])}
        for i in at
    ]  # fmt: skip


def _chart(
    task: str, drawn: list[Curve], curves: list, names: list[str], n: int, single: bool,
    threshold: Threshold | None,
) -> Chart:  # fmt: skip
    binary = single and len(names) == 2 and len(drawn) == 1
    fig = new_figure(15 if binary else 10, 4.6)
    left, right, *rest = fig.subplots(1, 3 if binary else 2)
    if binary:  # what each threshold on the class's probability finds and costs
        _by_threshold(rest[0], drawn[0], task, threshold)
    coloured = drawn if len(drawn) <= MAX_CURVES else sorted(drawn, key=lambda c: c.auc)[:LOWEST]
    for c in drawn if len(drawn) > MAX_CURVES else []:
        left.plot(c.fpr, c.tpr, color="#bbb", linewidth=0.6)
        right.plot(c.recall, c.precision, color="#bbb", linewidth=0.6, drawstyle="steps-pre")
    for i, c in enumerate(coloured):
        colour = f"C{i}"
        left.plot(c.fpr, c.tpr, color=colour, linewidth=1.4, label=f"{c.name} ({c.auc:.3f})")
        right.plot(c.recall, c.precision, color=colour, linewidth=1.4, drawstyle="steps-pre",
                   label=f"{c.name} ({c.ap:.3f})")  # fmt: skip
        if c.answered is not None:
            fpr, tpr, precision = c.answered
            dot = {"color": colour, "markersize": 5, "markeredgecolor": "black"}
            left.plot(fpr, tpr, "o", **dot)
            right.plot(tpr, precision, "o", **dot)
    left.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    if len(drawn) == 1:  # one curve: a random guess's precision is its class's share
        share = drawn[0].positives / n
        right.axhline(
            share, color="k", linestyle="--", linewidth=0.8, label=f"random ({share:.3f})"
        )
    which = "" if len(coloured) == len(drawn) else f", the {LOWEST} lowest in colour"
    left.set(xlabel="false positive rate", ylabel="true positive rate (recall)",
             xlim=(0, 1), ylim=(0, 1.01), title=f"{task}: ROC (AUC{which})")  # fmt: skip
    right.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
              title=f"{task}: precision-recall (AP{which})")  # fmt: skip
    for ax, where in ((left, "lower right"), (right, "lower left")):
        ax.legend(loc=where, fontsize=7)
    table = [
        {
            "class": c.name, "test images": c.positives, "AUC": round(c.auc, 4),
            "AP": round(c.ap, 4),
            **({} if c.answered is None else {"FPR of its answers": round(c.answered[0], 4),
                                               "TPR of its answers": round(c.answered[1], 4)}),
        }
        for c in drawn
    ]  # fmt: skip
    return Chart(
        f"roc_{task}",
        f"ROC and precision-recall: {task}",
        fig,
        _caption(drawn, curves, names, n, single, threshold),
        table=table,
        extra={"auc": {c.name: c.auc for c in drawn}, "ap": {c.name: c.ap for c in drawn}},
    )


def _by_threshold(ax, c: Curve, task: str, threshold: Threshold | None) -> None:
    """Recall, precision and the others flagged against the threshold on the class's
    probability (an image at or above it answered as the class), the fitted one marked."""
    # from 1 down to 0: a value holds from its threshold down to the next (steps-post);
    # above the highest probability no image is answered as the class (no precision)
    cuts = torch.cat([c.cuts.new_ones(1), c.cuts, c.cuts.new_zeros(1)])
    precision = torch.cat([c.precision.new_full((1,), math.nan), c.precision[1:]])
    for values, label, style in ((c.tpr, "recall (found)", "-"),
                                 (precision, "precision", "-"),
                                 (c.fpr, "others flagged (FPR)", "--")):  # fmt: skip
        values = torch.cat([values, values[-1:]])
        ax.plot(cuts, values, style, drawstyle="steps-post", linewidth=1.4, label=label)
    if threshold is not None:
        ax.axvline(threshold.probability, color="k", linewidth=0.9,
                   label=f"fitted: p ≥ {threshold.probability:.3g}")  # fmt: skip
    ax.axvline(0.5, color="#888", linewidth=0.6, linestyle=":")  # the top class's: one half
    ax.set(xlabel=f"threshold on p({c.name})", ylabel="share", xlim=(0, 1), ylim=(0, 1.01),
           title=f"{task}: {c.name} at each threshold")  # fmt: skip
    ax.legend(loc="lower left", fontsize=7)


def _caption(
    drawn: list[Curve], curves: list, names: list[str], n: int, single: bool,
    threshold: Threshold | None,
) -> str:  # fmt: skip
    lowest = min(drawn, key=lambda c: c.auc)
    binary = single and len(names) == 2  # the second class's curves only
    if binary:
        said = f"{drawn[0].name} against {names[0]} (its mirror is {names[0]}'s ROC)"
    else:
        said = "Each class against the rest" if single else "Each tag against its absence"
    said += f", on {n:,} labelled test images: "
    if len(drawn) > 1:
        mean_auc = sum(c.auc for c in drawn) / len(drawn)
        mean_ap = sum(c.ap for c in drawn) / len(drawn)
        said += f"mean AUC {mean_auc:.3f}, mean AP {mean_ap:.3f}; lowest AUC {lowest.name} "
        said += f"{lowest.auc:.3f}. "
    else:
        said += f"{'' if binary else lowest.name + ': '}AUC {lowest.auc:.3f}, AP {lowest.ap:.3f}. "
    said += (
        "A random guess follows the dashed diagonal (ROC) and scores a class's share of the "
        "images (AP). "
    )
    if single and threshold is None:
        said += "Dots: the rates of the model's own answers (its top class)."
    elif single:
        said += f"Dots: the rates of the model's own answers, {threshold_said(threshold)}."
    if binary and drawn[0].points:  # where a threshold other than the top class would sit
        found = "; ".join(
            f"{p['recall']:.0%} of them at p ≥ {p['threshold']:.3g} ({p['fpr']:.0%} of the "
            f"others flagged too, precision {p['precision']:.0%})"
            for p in drawn[0].points
        )
        said += f" Lower thresholds on its probability find more of {drawn[0].name}: {found}."
        said += (
            " Right: what each threshold finds (recall), how many of its answers are right "
            "(precision) and how many of the others it flags too (dotted: one half, where the "
            "top class answers)."
        )
        if threshold is None:
            said += (
                f" `cnnlab calibrate RUN --recall {drawn[0].name}=0.95` makes the model answer "
                "at such a threshold, fitted on the validation images."
            )
    missing = [names[i] for i, c in enumerate(curves) if c is None] if len(curves) > 1 else []
    if missing:
        said += f" No curve for {', '.join(missing)}: the test images hold none of it, or only it."
    return said.strip()
