"""A two-class task's decision threshold (cnnlab/tasks/thresholds.py): fitted by `calibrate
--recall` on validation's images of the class, saved with the weights, and the task's
answers, test metrics, figures, predictions and exported file all at it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_f1_score,
    multiclass_recall,
)

import cnnlab
from cnnlab.build import thresholds_asked
from cnnlab.calibration import notes, recall_option
from cnnlab.data import shapes_table
from cnnlab.errors import CnnlabError
from cnnlab.report import metric_notes
from cnnlab.runs import load_checkpoint
from cnnlab.tasks import EpochMeter, TargetSpec, create_tasks
from cnnlab.tasks.classification import ClassificationConfig
from cnnlab.tasks.thresholds import Threshold, fit_threshold, found, too_few
from cnnlab.viz import RunView, make_charts
from tests.conftest import edit_table, run_cli, table_classifier


def test_the_threshold_is_the_order_statistic_that_finds_the_share_asked():
    p_disc = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.95, 0.85])
    probabilities = torch.stack([1 - p_disc, p_disc], 1)
    targets = torch.tensor([1] * 9 + [0, 0, -100])  # two of the other class, one unlabelled
    # 9 images of class 1: ceil(10 * 0.8) = 8th highest of 0.9 ... 0.1 is 0.2
    threshold = fit_threshold(probabilities, targets, 1, "disc", 0.8)
    assert threshold == Threshold(1, "disc", 0.8, pytest.approx(0.2))
    assert threshold.answers(probabilities).tolist() == [1] * 8 + [0, 0, 1, 1]
    said = found(probabilities, targets, threshold)  # the unlabelled row counts in neither
    assert said == {"positives": 9, "recall": 8 / 9, "flagged": 0.5, "precision": 8 / 9}
    # class 0 as the one to find: its two images' probabilities 0.95 and 0.05, the 2nd of 2
    assert fit_threshold(probabilities, targets, 0, "other", 0.5).probability == pytest.approx(0.05)
    assert too_few(18, 0.95) and not too_few(19, 0.95)
    assert fit_threshold(probabilities, targets, 1, "disc", 0.95).probability == 0.0  # 9: too few
    assert math.isnan(found(probabilities[:2], targets[:2], threshold)["flagged"])  # no other


def test_on_exchangeable_images_the_threshold_finds_its_share():
    torch.manual_seed(0)
    p = torch.distributions.Beta(4.0, 2.0).sample((22000,))  # the class's own probabilities
    targets = torch.ones(22000, dtype=torch.long)
    probabilities = torch.stack([1 - p, p], 1)
    threshold = fit_threshold(probabilities[:2000], targets[:2000], 1, "yes", 0.95)
    assert 0.94 < found(probabilities[2000:], targets[2000:], threshold)["recall"] < 0.96


def two_class_tasks(**classes: list[str]) -> dict:
    tasks = create_tasks({n: ClassificationConfig(target=n) for n in classes})
    for name, task in tasks.items():
        task.fit(TargetSpec(classes=classes[name]))
    return tasks


def test_the_recall_asked_names_a_class_a_task_or_every_two_class_task():
    tasks = two_class_tasks(
        diag=["benign", "malignant"], scan=["normal", "malignant"], kind=["a", "b", "c"]
    )
    assert thresholds_asked(tasks, 0.9) == {"diag": (1, 0.9), "scan": (1, 0.9)}  # not kind
    assert thresholds_asked(tasks, {"benign": 0.8}) == {"diag": (0, 0.8)}
    assert thresholds_asked(tasks, {"scan.malignant": 0.99}) == {"scan": (1, 0.99)}
    dotted = two_class_tasks(version=["v0.9", "v1.0"])  # a class with a dot: read whole
    assert thresholds_asked(dotted, {"v1.0": 0.9}) == {"version": (1, 0.9)}
    assert thresholds_asked(dotted, {"version.v0.9": 0.9}) == {"version": (0, 0.9)}
    with pytest.raises(CnnlabError, match=r"tasks.diag and tasks.scan have class 'malignant'; "
                       r"name the task too, e.g. diag.malignant"):  # fmt: skip
        thresholds_asked(tasks, {"malignant": 0.9})
    given_for = "those it can be given for: diag.benign, diag.malignant, scan.normal"
    with pytest.raises(
        CnnlabError, match=f"no classification of two classes has class 'b'.*{given_for}"
    ):
        thresholds_asked(tasks, {"b": 0.9})  # kind has three classes: no threshold
    with pytest.raises(CnnlabError, match=r"class 'benin' \(did you mean 'benign'\?\)"):
        thresholds_asked(tasks, {"benin": 0.9})
    with pytest.raises(CnnlabError, match=r"--recall normal=95.0: give the share .* between 0"):
        thresholds_asked(tasks, {"normal": 95.0})
    with pytest.raises(CnnlabError, match="no task classifies each image into two classes"):
        thresholds_asked(two_class_tasks(kind=["a", "b", "c"]), 0.9)
    tasks["diag"].threshold = Threshold(0, "benign", 0.8, 0.3)
    assert thresholds_asked(tasks, None) == {"diag": (0, 0.8)}  # fitted again as it was
    assert recall_option(["0.9"]) == 0.9
    assert recall_option(["benign=0.8", "scan.malignant=0.99"]) == {
        "benign": 0.8, "scan.malignant": 0.99,
    }  # fmt: skip
    with pytest.raises(CnnlabError, match="give a share, 0.95, or a class's, malignant=0.95"):
        recall_option(["malignant=high"])


def test_the_test_metrics_count_the_answers_at_the_threshold_and_ece_the_probabilities():
    (task,) = two_class_tasks(diag=["benign", "malignant"]).values()
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 2, generator=gen) * 2
    target = torch.randint(0, 2, (300,), generator=gen)
    target[:7] = -100  # unlabelled rows count in no metric
    task.threshold = Threshold(1, "malignant", 0.9, 0.3)
    meter = EpochMeter({"diag": task}, torch.device("cpu"), calibration=True)
    head = torch.nn.Module()
    for part in range(3):  # batches: the states summed over them
        rows = slice(part * 100, part * 100 + 100)
        loss = torch.zeros(())
        meter.update(
            torch.nn.ModuleDict({"heads": torch.nn.ModuleDict({"diag": head})}),
            {"diag": logits[rows]}, {"diag": target[rows]}, loss, {"diag": loss},
        )  # fmt: skip
    got = meter.compute("test")
    probabilities = logits.softmax(1)
    answers = (probabilities[:, 1] >= 0.3).long()
    assert (answers != probabilities.argmax(1)).sum() > 20  # the threshold changes answers
    kw = {"num_classes": 2, "ignore_index": -100}
    assert got["test.diag.accuracy"] == pytest.approx(
        float(multiclass_accuracy(answers, target, average="micro", **kw))
    )
    assert got["test.diag.recall"] == pytest.approx(float(multiclass_recall(answers, target, **kw)))
    assert got["test.diag.f1"] == pytest.approx(float(multiclass_f1_score(answers, target, **kw)))
    ece = multiclass_calibration_error(probabilities, target, n_bins=15, **kw)
    assert got["test.diag.ece"] == pytest.approx(float(ece))  # of the probabilities themselves


# ------------------------------------------------------------ a run, end to end


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def discs(tmp_path_factory) -> Path:
    """A generated shapes table with a yes/no column: whether an image holds a disc."""
    folder = tmp_path_factory.mktemp("discs")
    shapes_table.write(folder, 400, 16, seed=5)
    return edit_table(
        folder, lambda i, row: row.update(disc="disc" if int(row["discs"]) else "no disc")
    )


@pytest.fixture(scope="module")
def disc_run(discs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disc_runs")
    classes = ["no disc", "disc"]
    recipe = table_classifier(discs, out, "disc", classes, epochs=2, calibrate=True,
                              recall={"disc": 0.8})  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:  # the decoded table cached in a folder of its own
        patch.setenv("XDG_CACHE_HOME", str(out / "cache"))
        return cnnlab.train(recipe).path


def test_a_run_answers_scores_draws_predicts_and_exports_at_its_threshold(
    disc_run, discs, tmp_path
):
    run = cnnlab.load_run(shutil.copytree(disc_run, tmp_path / "run"))  # the fixture's unchanged
    trained = load_checkpoint(run.path / "checkpoints/best.pt")["threshold"]  # the recipe's
    assert trained["disc"]["recall"] == 0.8 and trained["disc"]["positive"] == 1
    table = run.calibrate(recall={"disc": 0.9})
    val, test = table.to_dict("records")
    assert val["class"] == "disc" and val["recall"] == 0.9 and val["finds"] >= 0.9
    t = val["threshold"]
    assert load_checkpoint(run.path / "checkpoints/best.pt")["threshold"] == {
        "disc": {"positive": 1, "name": "disc", "recall": 0.9, "probability": t}
    }
    # the test metrics are those of the answers at the threshold, from the same pass
    view = RunView(run.path)
    rows = view.test_predictions.rows["disc"]
    probabilities = view.tasks["disc"].probabilities(rows.logits)
    answers = (probabilities[:, 1] >= t).long()
    assert view.test_predictions.pred["disc"].tolist() == answers.tolist()
    metrics = json.loads((run.path / "test_metrics.json").read_text())
    accuracy = float((answers == rows.targets).double().mean())
    assert metrics["test.disc.accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert test["finds"] == pytest.approx(
        float(answers[rows.targets == 1].double().mean())
    )  # fmt: skip
    assert any("disc: answers disc at p ≥" in note for note in metric_notes(view))
    matrix = next(c for c in make_charts(view, "confusion") if c.key == "confusion_disc")
    assert matrix.extra["counts"][:, 1].sum() == int((answers[rows.targets >= 0] == 1).sum())
    assert matrix.caption.endswith(f"The predictions answer disc at p ≥ {t:.3g}, the threshold "
                                   "fitted to find 90% of its validation images (cnnlab "
                                   "calibrate --recall).")  # fmt: skip
    (roc,) = [c for c in make_charts(view, "roc") if c.key == "roc_disc"]
    assert f"own answers, disc at p ≥ {t:.3g}, the threshold fitted to find 90%" in roc.caption

    files = [discs / "images" / f"{i:05d}.png" for i in range(340, 400)]
    said = run.predict(files)["disc"]
    p = said.probabilities[:, 1]
    assert said.labels == ["disc" if q >= t else "no disc" for q in p]
    assert said.threshold == Threshold(1, "disc", 0.9, t)
    below = [i for i, q in enumerate(p) if t <= q < 0.5]  # answered at the threshold alone
    assert below and said.probability[below[0]] == pytest.approx(p[below[0]])
    exported = run.export(out=tmp_path / "model.onnx")
    assert exported.parity.agreement["disc"] == 1.0
    assert exported.parity.accuracy["disc"][0] == pytest.approx(accuracy, abs=1e-6)
    from_file = exported.predict(files)["disc"]
    assert from_file.labels == said.labels

    kept = run.calibrate()  # fitted again, at the same recall
    assert kept.to_dict("records")[0]["recall"] == 0.9
    with pytest.raises(CnnlabError, match="--reset drops every threshold, --recall fits one"):
        run.calibrate(reset=True, recall=0.9)
    run.calibrate(reset=True)
    assert load_checkpoint(run.path / "checkpoints/best.pt")["threshold"] == {}
    metrics = json.loads((run.path / "test_metrics.json").read_text())
    top = float((probabilities.argmax(1) == rows.targets).double().mean())
    assert metrics["test.disc.accuracy"] == pytest.approx(top, abs=1e-6)


def test_the_cli_fits_a_threshold_and_says_what_it_finds(disc_run, tmp_path):
    run = shutil.copytree(disc_run, tmp_path / "run")
    out = run_cli("calibrate", str(run), "--recall", "0.8")
    assert out.returncode == 0, out.stderr
    (line,) = [line for line in out.stdout.splitlines() if "answers" in line]
    assert line.startswith("disc: answers disc at p ≥ ")
    assert "fitted to find 80% of it (split conformal, " in line
    assert "; validation: finds " in line and "; test: finds " in line
    out = run_cli("eval", str(run))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(
        "the threshold fitted to find 80% of its validation images (cnnlab calibrate "
        "--recall); its test accuracy, precision, recall and F1 are of those answers"
    )
    out = run_cli("calibrate", str(run), "--recall", "disk=0.8")
    assert out.returncode != 0
    assert out.stderr.strip().endswith(
        "calibrate --recall disk: no classification of two classes has class 'disk' (did you "
        "mean 'disc'?); the classes of those it can be given for: disc.no disc, disc.disc"
    )


def test_too_few_validation_images_of_the_class_flag_every_image_and_say_so():
    result = {
        "disc": {
            "temperature": 1.0,
            "val": {"rows": 30, "before": {}, "after": {}},
            "threshold": {
                "positive": 1, "name": "disc", "recall": 0.95, "probability": 0.0,
                "val": {"positives": 12, "recall": 1.0, "flagged": 1.0, "precision": 0.4},
            },
        }
    }  # fmt: skip
    assert notes(result) == [
        "disc: 12 validation images of disc cannot bound 95% of them: every image is answered "
        "disc; more validation images (data.val_fraction), or a lower recall, give a threshold"
    ]


def test_the_surest_mistakes_are_those_of_the_answers_at_the_threshold():
    (task,) = two_class_tasks(diag=["benign", "malignant"]).values()
    p = torch.tensor([0.30, 0.40, 0.90, 0.10, 0.45])  # malignant's probability
    logits = torch.stack([torch.zeros(5), (p / (1 - p)).log()], 1)
    truth = torch.tensor([0, 0, 1, 1, 1])
    task.threshold = Threshold(1, "malignant", 0.9, 0.25)
    pred = task.answers(None, logits)  # from the probabilities: no head's decoding
    assert pred.tolist() == [1, 1, 1, 0, 1]  # 0.30 and 0.40 answered malignant: wrong
    worst = task.worst(truth, pred, logits, 5)
    # the answers' own probabilities: benign at 0.90 (missed), then malignant at 0.40, 0.30
    assert worst.index.tolist() == [3, 1, 0]
    assert worst.lines[0] == "✗ benign 90%\n(true malignant 10%)"
    assert worst.lines[1] == "✗ malignant 40%\n(true benign 60%)"
    assert worst.caption.startswith("3 of 5 test images are wrong")


def test_a_recipes_recall_names_a_class_before_training_and_needs_calibrate(discs, tmp_path):
    recipe = table_classifier(discs, tmp_path, "disc", calibrate=True, recall={"disk": 0.9})
    with pytest.raises(CnnlabError, match=r"train.recall disk: no classification of two "
                       r"classes has class 'disk' \(did you mean 'disc'\?\)"):  # fmt: skip
        cnnlab.train(recipe)
    assert not (tmp_path / "runs").exists()  # said before any folder or epoch
    recipe["train"]["calibrate"] = False
    with pytest.raises(CnnlabError, match="train.recall is fitted by the calibration after "
                       "training: set train.calibrate: true too"):  # fmt: skip
        cnnlab.load_recipe(recipe)


def test_runs_answering_at_different_thresholds_are_told_apart_in_compare(disc_run, tmp_path):
    at = cnnlab.load_run(shutil.copytree(disc_run, tmp_path / "at"))  # the recipe's 80 %
    top = cnnlab.load_run(shutil.copytree(disc_run, tmp_path / "top"))
    top.calibrate(reset=True)
    t = load_checkpoint(at.path / "checkpoints/best.pt")["threshold"]["disc"]["probability"]
    notes = cnnlab.compare([at, top], out=tmp_path / "compared").notes
    (line,) = [n for n in notes if "different thresholds" in n]
    assert line.startswith(
        f"the runs answer at different thresholds (cnnlab calibrate --recall): at disc disc at "
        f"p ≥ {t:.3g}, top the top class; their accuracy"
    )
    again = shutil.copytree(disc_run, tmp_path / "again")  # the same threshold
    same = cnnlab.compare([at, again], out=tmp_path / "same").notes
    assert not [n for n in same if "different thresholds" in n]
