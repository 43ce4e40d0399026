import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cnnlab.build import build
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import evaluate_run
from cnnlab.experiment import train
from cnnlab.models import create_model
from cnnlab.runs import load_checkpoint
from cnnlab.tasks import EpochMeter, TargetSpec, Task, task_class, total_loss
from cnnlab.tasks.classification import ClassificationConfig
from cnnlab.tasks.regression import Regression, RegressionConfig
from tests.conftest import fitted_tasks
from tests.test_train import assert_same_run, interrupted


def test_metrics_match_hand_computation(tiny):
    recipe = tiny()
    tasks = fitted_tasks(recipe, classes=3, ink=(0.5, 0.25))
    model = create_model(recipe.model, 1, (28, 28), tasks)
    meter = EpochMeter(tasks, torch.device("cpu"))
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    labels = torch.tensor([0, 1, 0, 2])  # one class-0 image predicted as 1
    ink_raw = torch.tensor([0.0, 1.0, -1.0, 2.0])  # standardized: 0.5, 0.75, 0.25, 1.0
    ink = torch.tensor([0.5, 0.70, 0.25, 0.9])
    outputs, targets = {"cls": logits, "ink": ink_raw}, {"label": labels, "ink": ink}
    total, losses = total_loss(tasks, model, outputs, targets)
    meter.update(model, outputs, targets, total, losses)
    m = meter.compute("val")
    assert abs(m["val.cls.accuracy"] - 0.75) < 1e-6
    # precision: class0 1/1, class1 1/2, class2 1/1 -> mean 5/6; recall: 1/2, 1, 1 -> 5/6
    assert abs(m["val.cls.precision"] - 5 / 6) < 1e-6 and abs(m["val.cls.recall"] - 5 / 6) < 1e-6
    errors = torch.tensor([0.0, 0.05, 0.0, 0.1])  # in ink units, not standardized units
    assert abs(m["val.ink.mae"] - errors.mean().item()) < 1e-6
    assert abs(m["val.ink.rmse"] - errors.pow(2).mean().sqrt().item()) < 1e-6
    encoded = (ink - 0.5) / 0.25
    assert torch.isclose(losses["ink"], (ink_raw - encoded).pow(2).mean())
    assert torch.isclose(total, losses["cls"] + losses["ink"])


def test_task_weights_scale_the_sum(tiny):
    recipe = tiny("tasks.ink.weight=1000", "tasks.cls.weight=0.5", "tasks.cls.label_smoothing=0")
    tasks = fitted_tasks(recipe)
    model = create_model(recipe.model, 1, (28, 28), tasks)
    outputs = {"cls": torch.randn(8, 10), "ink": torch.randn(8)}
    targets = {"label": torch.randint(0, 10, (8,)), "ink": torch.rand(8)}
    total, losses = total_loss(tasks, model, outputs, targets)
    assert torch.isclose(total, 0.5 * losses["cls"] + 1000 * losses["ink"])


def test_meter_state_survives_a_checkpoint(tiny):
    recipe = tiny()
    tasks = fitted_tasks(recipe)
    model = create_model(recipe.model, 1, (28, 28), tasks)
    meter = EpochMeter(tasks, torch.device("cpu"))
    outputs = {"cls": torch.randn(16, 10), "ink": torch.randn(16)}
    targets = {"label": torch.randint(0, 10, (16,)), "ink": torch.rand(16)}
    total, losses = total_loss(tasks, model, outputs, targets)
    meter.update(model, outputs, targets, total, losses)
    copy = EpochMeter(tasks, torch.device("cpu"))
    copy.restore(meter.state_dict())
    assert copy.compute("train") == meter.compute("train")


def test_light_training_meter_agrees_with_torchmetrics(tiny):
    recipe = tiny()
    tasks = fitted_tasks(recipe, ink=(0.3, 0.1))
    model = create_model(recipe.model, 1, (28, 28), tasks)
    full = EpochMeter(tasks, torch.device("cpu"))
    light = EpochMeter(tasks, torch.device("cpu"), detailed=False)
    gen = torch.Generator().manual_seed(0)
    for n in (16, 16, 7):  # unequal batches: sums must weight by batch size
        outputs = {"cls": torch.randn(n, 10, generator=gen), "ink": torch.randn(n, generator=gen)}
        targets = {
            "label": torch.randint(0, 10, (n,), generator=gen),
            "ink": torch.rand(n, generator=gen),
        }
        total, losses = total_loss(tasks, model, outputs, targets)
        full.update(model, outputs, targets, total, losses)
        light.update(model, outputs, targets, total, losses)
    a, b = full.compute("x"), light.compute("x")
    assert set(b) == {
        "x.loss",
        "x.cls.loss",
        "x.cls.accuracy",
        "x.ink.loss",
        "x.ink.mae",
        "x.ink.rmse",
    }
    for key, value in b.items():
        assert abs(a[key] - value) < 1e-5, key


def test_a_vector_regression_learns_each_component_in_its_own_units():
    cfg = RegressionConfig(target="counts")
    task = task_class(cfg)("cnt", cfg)
    values = torch.tensor([[0.0, 10.0], [2.0, 30.0], [4.0, 20.0]])
    task.fit(TargetSpec(components=["a", "b"]), lambda: values)
    assert task.info.mean == [2.0, 20.0] and task.info.std == [2.0, 10.0]
    head = task.head(SimpleNamespace(num_features=5))  # a backbone as far as a head asks
    out = head(torch.randn(4, 5))
    assert out.shape == (4, 2)
    assert torch.allclose(head.decode(head.encode(values)), values)  # per-component units
    meter_metrics = task.epoch_metrics()
    meter_metrics.update(values + torch.tensor([1.0, -3.0]), values)
    got = task.epoch_values(meter_metrics.compute())
    assert got["rmse_a"] == 1.0 and got["rmse_b"] == 3.0 and got["mae_b"] == 3.0
    assert abs(got["rmse"] - 5**0.5) < 1e-6  # over both components: sqrt((1 + 9) / 2)


def test_a_vector_target_its_source_did_not_name_is_one_line():
    cfg = RegressionConfig(target="counts")
    task = task_class(cfg)("cnt", cfg)
    with pytest.raises(CnnlabError, match="its source names 0 components"):
        task.fit(TargetSpec(), lambda: torch.zeros(3, 6))


def test_a_metric_of_one_value_per_component_is_named_by_them():
    """A task of one's own whose torchmetrics give a value per output (average=None): each
    is a float named `<metric>_<component>`; any other shape is one line saying what to do."""
    task = Regression("tags", RegressionConfig(target="tags"))
    task.fit(TargetSpec(components=["cat", "dog"]))
    computed = {"f1": torch.tensor([0.5, 0.75]), "exact": torch.tensor(0.25)}
    assert Task.epoch_values(task, computed) == {"f1_cat": 0.5, "f1_dog": 0.75, "exact": 0.25}
    with pytest.raises(CnnlabError, match=r"^tasks.tags: metric 'f1' gave values of shape \(3,\)"):
        Task.epoch_values(task, {"f1": torch.tensor([0.5, 0.75, 1.0])})


# ---------------------------------------------------------------- class weights


def classification(**cfg):
    config = ClassificationConfig(target="label", head={"hidden": [], "dropout": 0}, **cfg)
    return task_class(config)("cls", config)


def test_balanced_class_weights_are_total_over_classes_times_count_scaled_to_mean_1():
    task = classification(class_weights="balanced")
    labels = torch.tensor([0] * 160 + [1] * 70 + [2] * 35 + [3] * 20)  # the training split
    task.fit(TargetSpec(classes=["a", "b", "c", "d"]), lambda: labels)
    raw = torch.tensor([285 / (4 * n) for n in (160, 70, 35, 20)], dtype=torch.float64)
    torch.testing.assert_close(task.weights, (raw / raw.mean()).float())
    head = task.head(SimpleNamespace(num_features=5))
    assert torch.equal(head.class_weight, task.weights)  # saved with the head's weights


def test_the_weighted_loss_is_torchs_weighted_cross_entropy():
    task = classification(class_weights=[1.0, 2.0, 0.5], label_smoothing=0.1)
    task.fit(TargetSpec(classes=["a", "b", "c"]))
    head = task.head(SimpleNamespace(num_features=5))
    out, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    expected = F.cross_entropy(
        out, target, weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1
    )
    torch.testing.assert_close(task.loss(head, out, target), expected)
    assert not torch.isclose(expected, F.cross_entropy(out, target, label_smoothing=0.1))


def test_class_weights_of_the_wrong_length_are_one_line():
    task = classification(class_weights=[1.0, 2.0])
    with pytest.raises(CnnlabError) as error:
        task.fit(TargetSpec(classes=["a", "b", "c"]))
    assert str(error.value) == (
        "tasks.cls.class_weights has 2 entries for 3 classes; give one per class, or "
        "balanced, or none"
    )


def test_balanced_class_weights_train_and_resume_exactly(tiny):
    recipe = tiny("train.epochs=2", "tasks.cls.class_weights=balanced")
    built = build(recipe)
    counts = torch.bincount(built.splits.values("train", "label"), minlength=10).double()
    raw = counts.sum() / (10 * counts)
    weights = (raw / raw.mean()).float()
    torch.testing.assert_close(built.model.heads["cls"].class_weight, weights)
    reference = train(recipe)
    saved = load_checkpoint(reference.best_path)["model"]
    torch.testing.assert_close(saved["heads.cls.class_weight"], weights)
    # the test loss of the reloaded run is weighted as the trained one's
    assert evaluate_run(reference.path) == json.loads(reference.test_path.read_text())
    run = interrupted(recipe, 7)
    assert_same_run(train(recipe, resume=run.path), reference)


def test_a_regression_on_numbers_read_as_classes_says_to_read_them_as_numbers():
    task = Regression("area", RegressionConfig(target="area"))
    with pytest.raises(CnnlabError) as err:
        task.fit(TargetSpec(classes=["0.5", "1.25", "3"]))
    assert str(err.value).endswith(
        "a regression reads a number or a vector: its classes are numbers: read them as "
        "numbers (a table's data.targets.area.kind: number), or classify it"
    )
    with pytest.raises(CnnlabError, match=r"classify it \(type: classification\), or name"):
        task.fit(TargetSpec(classes=["disc", "square"]))  # words: a classification's
