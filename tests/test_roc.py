"""The ROC and precision-recall figure (cnnlab/viz/roc.py): its areas are the probability
that a class's image outranks another's, its dots the model's own answers, two classes draw
one curve, a class the test set lacks is named, and a multi-label task gets a curve per tag."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.tasks.base import TargetSpec
from cnnlab.tasks.calibration import Rows
from cnnlab.tasks.classification import Classification, ClassificationConfig
from cnnlab.viz import RunView, make_charts
from cnnlab.viz.confusion import confusion_counts, per_class_accuracy
from cnnlab.viz.roc import RECALLS, _curve, roc


def ranked_auc(p: torch.Tensor, positive: torch.Tensor) -> float:
    """How often a positive outranks a negative, ties counting half (Mann-Whitney)."""
    pos, neg = p[positive][:, None], p[~positive][None, :]
    return float((pos > neg).double().mean() + 0.5 * (pos == neg).double().mean())


def view_of(task, rows: Rows) -> SimpleNamespace:
    """What roc() reads of a run: its tasks and their test rows."""
    return SimpleNamespace(
        tasks={"d": task},
        tasks_with=lambda figure: ["d"],
        test_predictions=SimpleNamespace(rows={"d": rows}),
    )


def classifier(*classes: str) -> Classification:
    task = Classification("d", ClassificationConfig(target="label"))
    task.fit(TargetSpec(classes=list(classes)))
    return task


def test_each_area_is_how_often_a_class_outranks_the_rest_and_the_dots_are_its_answers(
    report_run,
):
    view = RunView(report_run[0])
    (chart,) = make_charts(view, "roc")
    task = view.tasks["cls"]
    rows = view.test_predictions.rows["cls"]
    probs = task.probabilities(rows.logits)
    names = task.info.classes
    for k, name in enumerate(names):
        assert chart.extra["auc"][name] == pytest.approx(
            ranked_auc(probs[:, k], rows.targets == k), abs=1e-6
        )
        assert 0.0 < chart.extra["ap"][name] <= 1.0
    recall = per_class_accuracy(confusion_counts(rows.targets, probs.argmax(1), len(names)))
    table = {r["class"]: r for r in chart.table}
    assert [table[n]["TPR of its answers"] for n in names] == pytest.approx(
        recall.tolist(), abs=1e-4
    )
    assert sum(r["test images"] for r in chart.table) == len(rows.targets)
    assert chart.caption.startswith(f"Each class against the rest, on {len(rows.targets):,} ")
    assert "ROC and precision-recall" in (report_run[0] / "report.html").read_text()


def test_the_curves_and_areas_are_torchmetrics():
    """Computed in the figure without importing torchmetrics (2.4 s of a report): the same
    points and areas, ties in the probabilities included."""
    from torchmetrics.functional.classification import (
        binary_average_precision,
        binary_precision_recall_curve,
        binary_roc,
    )

    gen = torch.Generator().manual_seed(0)
    p = (torch.rand(500, generator=gen) * 20).round() / 20  # 21 values: many ties
    y = torch.rand(500, generator=gen) < 0.2 + 0.6 * p  # higher p, more often the class
    curve = _curve("c", p, y, None, 0)
    fpr, tpr, _ = binary_roc(p, y.long())
    assert torch.allclose(curve.fpr.float(), fpr) and torch.allclose(curve.tpr.float(), tpr)
    precision, recall, _ = binary_precision_recall_curve(p, y.long())  # lowest threshold first
    assert torch.allclose(curve.precision[1:].float(), precision[:-1].flip(0))
    assert torch.allclose(curve.recall[1:].float(), recall[:-1].flip(0))
    assert curve.ap == pytest.approx(float(binary_average_precision(p, y.long())), abs=1e-6)
    assert curve.auc == pytest.approx(ranked_auc(p, y), abs=1e-9)


def test_two_classes_draw_the_second_and_a_missing_class_is_named():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.9, 0.2])
    truth = torch.tensor([0, 0, 1, 1, 1, 0])
    logits = torch.stack([torch.zeros(6), (scores / (1 - scores)).log()], 1)
    (chart,) = roc(view_of(classifier("benign", "malignant"), Rows(logits, truth)))
    assert list(chart.extra["auc"]) == ["malignant"]  # benign's ROC is its mirror
    assert chart.extra["auc"]["malignant"] == pytest.approx(ranked_auc(scores, truth == 1))
    assert chart.caption.startswith(
        "malignant against benign (its mirror is benign's ROC), on 6 labelled test images: AUC "
    )
    # one lower threshold, 0.35, finds all three (one of the three others flagged too)
    assert chart.caption.endswith(
        "Lower thresholds on its probability find more of malignant: 100% of them at "
        "p ≥ 0.35 (33% of the others flagged too, precision 75%). Right: what each threshold "
        "finds (recall), how many of its answers are right (precision) and how many of the "
        "others it flags too (dotted: one half, where the top class answers). `cnnlab "
        "calibrate RUN --recall malignant=0.95` makes the model answer at such a threshold, "
        "fitted on the validation images."
    )
    # the third panel: each share against the threshold, held from it down to the next one
    recall, precision, flagged = chart.figure.axes[2].get_lines()[:3]
    assert recall.get_xdata().tolist() == pytest.approx([1, 0.9, 0.8, 0.4, 0.35, 0.2, 0.1, 0])
    assert recall.get_ydata().tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1])
    assert flagged.get_ydata().tolist() == pytest.approx([0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    assert precision.get_ydata().tolist()[1:] == pytest.approx(
        [1, 1, 2 / 3, 3 / 4, 3 / 5, 1 / 2, 1 / 2]
    )
    labels = [t.get_text() for t in chart.figure.axes[1].get_legend().get_texts()]
    assert labels == ["malignant (0.917)", "random (0.500)"]  # a guess's precision: 3 of 6
    (row,) = chart.table  # answers: malignant where its probability is above one half
    assert row["TPR of its answers"] == pytest.approx(2 / 3, abs=1e-4)
    assert row["FPR of its answers"] == pytest.approx(0.0)

    three = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.0]])
    (chart,) = roc(view_of(classifier("a", "b", "c"), Rows(three, torch.tensor([0, 1, 1, 0]))))
    assert set(chart.extra["auc"]) == {"a", "b"}
    assert chart.caption.endswith("No curve for c: the test images hold none of it, or only it.")


def test_a_multi_label_task_gets_a_curve_per_tag_and_no_dots():
    tags = SimpleNamespace(each=["disc", "square"], probabilities=torch.sigmoid, threshold=None)
    logits = torch.tensor([[2.0, -1.0], [-1.0, 1.0], [0.5, 0.5], [-2.0, -2.0]])
    truth = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    (chart,) = roc(view_of(tags, Rows(logits, truth)))
    assert chart.extra["auc"]["disc"] == pytest.approx(ranked_auc(logits[:, 0], truth[:, 0] > 0))
    assert chart.extra["auc"]["square"] == pytest.approx(ranked_auc(logits[:, 1], truth[:, 1] > 0))
    assert all("TPR of its answers" not in r for r in chart.table)  # a tag has no top class
    assert "Dots" not in chart.caption
    assert chart.caption.startswith("Each tag against its absence, on 4 labelled test images")


def test_a_task_type_that_lists_roc_alone_has_its_rows_recorded():
    from cnnlab.viz.run_view import figures_recorder

    class RocOnly(Classification):
        figures = ("roc",)

    tasks = {"d": RocOnly("d", ClassificationConfig(target="label"))}
    assert list(figures_recorder(tasks, 10).rows) == ["d"]  # what roc() reads of the test pass


def test_a_task_whose_rows_are_not_per_class_probabilities_is_told_to_leave_roc_out():
    one = SimpleNamespace(each=[], probabilities=torch.sigmoid)  # one logit, a number
    with pytest.raises(CnnlabError, match=r"^roc: tasks.d gives probabilities of shape \(4,\)"):
        roc(view_of(one, Rows(torch.zeros(4), torch.rand(4))))


def test_above_ten_classes_the_five_of_lowest_auc_are_named_the_rest_grey():
    gen = torch.Generator().manual_seed(1)
    truth = torch.arange(12).repeat(20)  # 12 classes, 20 images each
    logits = torch.randn(240, 12, generator=gen) + 3 * F.one_hot(truth, 12) * torch.linspace(
        0, 1, 12
    )  # class k told apart by k / 11: class 0 not at all, class 11 well
    names = [f"c{k}" for k in range(12)]
    (chart,) = roc(view_of(classifier(*names), Rows(logits, truth)))
    left, _ = chart.figure.axes
    named = [t.get_text().split(" (")[0] for t in left.get_legend().get_texts()]
    assert named == sorted(chart.extra["auc"], key=chart.extra["auc"].get)[:5]
    assert len(left.lines) == 12 + 5 + 5 + 1  # grey, coloured, their dots, the diagonal
    assert left.get_title().endswith("(AUC, the 5 lowest in colour)") and len(chart.table) == 12


def test_each_operating_point_is_the_highest_threshold_that_finds_its_share():
    gen = torch.Generator().manual_seed(2)
    y = torch.rand(400, generator=gen) < 0.3
    p = (torch.rand(400, generator=gen) + 0.6 * y).clamp(max=1)  # the class scores higher
    points = _curve("c", p, y, None, 0).points
    assert points and points[0]["recall"] >= RECALLS[0] and points[-1]["recall"] >= RECALLS[-1]
    for q in points:
        flagged = p >= q["threshold"]
        assert float((flagged & y).sum() / y.sum()) == pytest.approx(q["recall"])
        assert float((flagged & ~y).sum() / (~y).sum()) == pytest.approx(q["fpr"])
        above = p[p > q["threshold"]]  # the next threshold up finds too few
        if len(above):
            assert float(((p >= above.min()) & y).sum() / y.sum()) < q["recall"]
