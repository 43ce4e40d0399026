"""What a task of one's own must do, and what cnnlab says when it does not: its loss gets
unlabelled targets as they are stored (NaN, -100) and must leave them out itself; a run
whose loss goes non-finite names the task, the fix and what was saved; outputs are named
in `fit()` (`self.info`), which `--component` asks for."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pytest
import torch
import torch.nn.functional as F

import cnnlab
from cnnlab import MLPHead, TargetInfo, Task, TaskSection
from cnnlab.components import register_task, registration_scope
from cnnlab.data import shapes_table
from cnnlab.errors import CnnlabError
from cnnlab.experiment import train
from cnnlab.runs import RunFolder
from cnnlab.tasks.base import NO_CLASS, labelled, unlabelled_trouble
from cnnlab.tasks.regression import Regression
from cnnlab.viz.attributions import check_component
from tests.conftest import edit_table


@pytest.fixture(autouse=True)
def scope():
    """Each test's registrations end with it."""
    with registration_scope():
        yield


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# ------------------------------------------------------------------- a task of one's own


class HeteroConfig(TaskSection):
    type: Literal["hetero"] = "hetero"


class HeteroHead(MLPHead):
    def decode(self, out: torch.Tensor) -> torch.Tensor:
        return out.float()


class Hetero(Task):
    """A mean and a sigma per image (a Gaussian NLL) whose loss takes a plain mean: the
    walkthrough's, which counts a blank target (NaN)."""

    config = HeteroConfig
    metrics = ("loss",)

    def fit(self, spec, values=None) -> None:
        self.info = TargetInfo(components=["mean", "sigma"])

    def head(self, backbone) -> HeteroHead:
        return HeteroHead(backbone.num_features, 2, self.cfg.head)

    def nll(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mean, log_sigma = out.float().unbind(1)
        return log_sigma + 0.5 * ((target - mean) / log_sigma.exp()) ** 2

    def loss(self, head, out, target):
        return self.nll(out, target).mean()

    def step_sums(self, pred, target):
        return []

    def epoch_metrics(self):
        from torchmetrics import MetricCollection

        return MetricCollection({})

    def update_metrics(self, metrics, head, out, target) -> None:
        pass

    def caption(self, truth, pred, short=str):
        return "", False


class MaskedAfter(Hetero):
    """Leaves the blanks out of the value with a `torch.where` after the arithmetic: the
    NaN still reaches the gradient."""

    def loss(self, head, out, target):
        ok = self.labelled(target)
        return torch.where(ok, self.nll(out, target), 0.0).sum() / ok.sum().clamp_min(1)


class LabelledMean(Hetero):
    """A mean over the labelled values alone: NaN on a batch without one."""

    def loss(self, head, out, target):
        ok = self.labelled(target)
        return self.nll(out[ok], target[ok]).mean()


class Masked(Hetero):
    """docs/components.md's loss: the blanks replaced first, 0 without a label."""

    def loss(self, head, out, target):
        ok = self.labelled(target)
        nll = self.nll(out, torch.where(ok, target, 0.0))
        return torch.where(ok, nll, 0.0).sum() / ok.sum().clamp_min(1)


class Classes(Hetero):
    def loss(self, head, out, target):
        ok = self.labelled(target)
        return F.cross_entropy(out, target, reduction="sum") / ok.sum().clamp_min(1)


def task(kind: type[Hetero]) -> Hetero:
    return kind("z", HeteroConfig(target="area"))


def test_how_a_loss_takes_unlabelled_targets_is_told_apart():
    """`unlabelled_trouble`: on finite stand-in outputs, whatever the weights have become."""
    values = torch.tensor([0.2, float("nan"), 0.5, float("nan"), 0.1] * 4)
    assert unlabelled_trouble(task(Hetero), None, (2,), values) == "counted"
    assert unlabelled_trouble(task(MaskedAfter), None, (2,), values) == "counted"  # gradient
    assert unlabelled_trouble(task(LabelledMean), None, (2,), values) == "empty"
    assert unlabelled_trouble(task(Masked), None, (2,), values) is None
    whole = torch.tensor([0.2, 0.5, 0.1, 0.3])
    assert unlabelled_trouble(task(Hetero), None, (2,), whole) is None  # no blank to count
    classes = torch.tensor([0, NO_CLASS, 2, 1] * 4)  # F.cross_entropy fails on -100 itself
    assert unlabelled_trouble(task(Classes), None, (3,), classes) is None
    assert labelled(values).sum() == 12  # what the stand-in's rows were drawn from


BLANK_EVERY = 3  # row i's area is blank when i % 3 == 1


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory) -> Path:
    """A small shapes table whose `area` has blank cells."""
    folder = tmp_path_factory.mktemp("galaxies")
    shapes_table.write(folder, 100, 16, seed=5)

    def blank(i: int, row: dict) -> None:
        if i % BLANK_EVERY == 1:
            row["area"] = ""

    return edit_table(folder, blank)


def galaxies_recipe(folder: Path, tmp_path: Path) -> dict:
    return {
        "output_dir": str(tmp_path / "runs"),
        "data": {
            "source": "table",
            "table": str(folder / "labels.csv"),
            "image_column": "image",
            "targets": {
                "kind": {"kind": "category", "column": "kind"},
                "area": {"kind": "number", "column": "area", "blank": "unlabelled"},
            },
            "split": {"column": "split"},
        },
        "model": {"backbone": "cnn", "base_filters": 4, "blocks": 2},
        "tasks": {
            "kind": {"type": "classification", "target": "kind"},
            "z": {"type": "hetero", "target": "area"},
        },
        "train": {"epochs": 2, "batch_size": 16, "progress": False, "threads": 1,
                  "device": "cpu", "report": False, "precision": "fp32",
                  "monitor": "val.kind.accuracy"},
    }  # fmt: skip


@pytest.mark.parametrize("kind", [Hetero, MaskedAfter])
def test_a_loss_that_counts_blank_targets_is_named_with_the_fix(galaxies, tmp_path, kind):
    """The walkthrough's run: blank targets (NaN) reach a loss that does not leave them out.
    The line names the task and the fix, not the learning rate, and says nothing was saved
    (no checkpoint is due before 5 minutes or an epoch's end)."""
    register_task("hetero")(kind)
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(galaxies_recipe(galaxies, tmp_path))
    message = str(err.value)
    (folder,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(
        r"the loss became nan at epoch 1, step \d+, in tasks\.z: its targets include "
        rf"unlabelled values \(NaN\), which {kind.__name__}\.loss lets into its value or "
        r"gradient; make it count only self\.labelled\(target\), as "
        r"docs/components\.md#a-task-type shows \(no checkpoint was saved yet; the run's "
        rf"folder is {re.escape(str(folder))}\)",
        message,
    ), message
    assert not (folder / "checkpoints").exists()
    status = RunFolder(folder).status()
    assert status["state"] == "failed" and status["reason"].startswith("non-finite loss at ")


def test_a_loss_of_nan_on_a_batch_without_a_label_is_named(galaxies, tmp_path):
    register_task("hetero")(LabelledMean)
    raw = galaxies_recipe(galaxies, tmp_path)
    raw["train"]["batch_size"] = 2  # some batch holds blanks alone
    with pytest.raises(
        CnnlabError,
        match=r", in tasks\.z: LabelledMean\.loss is not finite on "
        r"a batch with no label for it \(a mean over none\); make it 0 there",
    ):
        cnnlab.train(raw)


# --------------------------------------------------------------- which task, what was saved


def test_a_non_finite_loss_names_its_task_and_the_checkpoint_only_once_one_exists(
    tiny, monkeypatch
):
    """Epoch 2's ink loss is NaN in its value alone (its gradient finite: the weights stay
    finite, so the other task's loss does too): the line names tasks.ink, not tasks.cls,
    and the checkpoints epoch 1 left."""
    recipe = tiny("train.epochs=2")
    loss = Regression.loss

    def nan_value(self, head, out, target):
        return loss(self, head, out, target) + torch.tensor(float("nan"))

    def after_epoch_1(row: dict) -> None:
        monkeypatch.setattr(Regression, "loss", nan_value)

    with pytest.raises(CnnlabError) as err:
        train(recipe, on_epoch=after_epoch_1)
    (folder,) = Path(recipe.output_dir).iterdir()
    checkpoints = folder / "checkpoints"
    assert str(err.value).startswith("the loss became nan at epoch 2, step ")
    assert str(err.value).endswith(
        f", in tasks.ink; lower train.optimizer.lr or set train.grad_clip (the last good "
        f"checkpoint stays in {checkpoints})"
    )
    assert (checkpoints / "last.pt").is_file()


# ---------------------------------------------------------------------- naming outputs


def test_component_of_a_task_whose_outputs_are_unnamed_says_how_to_name_them():
    unnamed = task(Hetero)
    with pytest.raises(CnnlabError) as err:
        check_component({"z": unnamed}, ["z"], "sigma")
    assert str(err.value) == (
        "--component 'sigma': no task explained has it; none names its outputs (a task of "
        "one's own names them in its fit(): self.info = TargetInfo(components=[...]), see "
        "docs/components.md#a-task-type)"
    )
    named = task(Hetero)
    named.fit(None)  # self.info = TargetInfo(components=["mean", "sigma"])
    check_component({"z": named}, ["z"], "sigma")  # named: asked for by its name
