"""Components registered from outside cnnlab: a plain module as a backbone in one line, a
source, a task type and a figure, each joining the recipe's schema, the training loop, the
figures, checkpoints and the command line (cnnlab/components.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar, Literal

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.functional.classification import binary_calibration_error

import cnnlab
from cnnlab import MLPHead, TargetInfo, TargetSpec, Task, TaskSection, Worst, components, plugins
from cnnlab.components import (
    register_backbone,
    register_figure,
    register_source,
    register_task,
    registered,
    registration_scope,
    unregister,
)
from cnnlab.config import Section
from cnnlab.data import describe
from cnnlab.data.augment import LabelMap
from cnnlab.data.base import DataInfo, DataSection, Dataset, ImageSet
from cnnlab.errors import CnnlabError
from cnnlab.experiment import train
from cnnlab.models import create_model, list_backbones
from cnnlab.models.base import Backbone, FeatureInfo
from cnnlab.plugins import import_modules
from cnnlab.progress import EpochProgress
from cnnlab.recipe import Recipe, load_recipe, validate
from cnnlab.report import SECTIONS, sections
from cnnlab.runs import RunFolder, load_checkpoint
from cnnlab.tasks.classification import Classification, ClassificationConfig
from cnnlab.tasks.regression import Regression, RegressionConfig
from cnnlab.viz import FIGURES, Chart, RunView, list_figures, make_charts, render
from cnnlab.viz.hooks import feature_blocks
from tests.conftest import DEMO, ROOT, TINY, fitted_tasks, tiny_recipe

CLI = str(Path(sys.executable).with_name("cnnlab"))
TIMING = {"seconds", "images_per_s"}


@pytest.fixture(autouse=True)
def scope():
    """Each test's registrations end with it: the next test sees the built-in schema."""
    with registration_scope():
        yield


class TwoConv(nn.Module):
    """Two convolutions, the second strided: a plain module, nothing of cnnlab."""

    def __init__(self, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))  # (B, width, H/2, W/2)


TASKS = {"cls": {"type": "classification", "target": "label"}}
TWOCONV = {"model": {"backbone": "twoconv", "width": 8}, "tasks": TASKS}


def error_of(raw: dict) -> str:
    with pytest.raises(CnnlabError) as err:
        validate(raw)
    assert "\n" not in str(err.value)
    return str(err.value)


def tiny_twoconv(tmp_path: Path, *overrides: str) -> Recipe:
    """The demo recipe (classification + ink regression) shrunk, on the registered module."""
    sets = [o for o in TINY if not o.startswith("model.")]
    model = "model={backbone: twoconv, width: 8}"
    return load_recipe(DEMO, [f"output_dir={tmp_path / 'runs'}", *sets, model, *overrides])


# ---------------------------------------------------------------------- the schema


def test_a_plain_module_joins_the_recipe_in_one_line():
    register_backbone("twoconv")(TwoConv)
    recipe = validate(TWOCONV)
    assert recipe.model.backbone == "twoconv" and recipe.model.width == 8
    assert validate({"model": {"backbone": "twoconv"}, "tasks": TASKS}).model.width == 16
    assert list(type(recipe.model).model_fields) == ["backbone", "width"]  # not in_channels
    assert (
        list_backbones()["twoconv"]
        == "Two convolutions, the second strided: a plain module, nothing of cnnlab."
    )

    assert error_of({**TWOCONV, "model": {"backbone": "twoconv", "widht": 8}}) == (
        "recipe: unknown key 'model.widht' (did you mean 'model.width'?); valid keys here: "
        "backbone, width"
    )
    assert error_of({**TWOCONV, "model": {"backbone": "twoconv", "width": "wide"}}).startswith(
        "recipe: model.width = 'wide': Input should be a valid integer"
    )
    # the saved recipe validates again as it was written
    assert validate(yaml.safe_load(yaml.safe_dump(recipe.model_dump(mode="json")))) == recipe

    unregister("backbone", "twoconv")
    assert "choose one of: cnn, resnet, plainnet, colorizer, timm, or" in error_of(TWOCONV)


def test_an_unknown_component_lists_the_registered_ones_and_how_to_register():
    register_backbone("twoconv")(TwoConv)
    msg = error_of({**TWOCONV, "model": {"backbone": "threeconv"}})
    assert "model.backbone = 'threeconv': choose one of: cnn, resnet, plainnet, colorizer, " in msg
    assert "timm, twoconv, or a timm model name" in msg
    assert msg.endswith("register your own with @cnnlab.register_backbone (see cnnlab --import)")
    msg = error_of({"data": {"source": "mnist2"}, "tasks": TASKS})
    assert "data.source 'mnist2' is unknown; choose one of: fashion_mnist, cifar10" in msg
    assert msg.endswith("; register your own with cnnlab.register_source (see cnnlab --import)")
    msg = error_of({"tasks": {"cls": {"type": "segmentation", "target": "label"}}})
    assert msg.endswith(
        "tasks.cls.type = 'segmentation': choose one of: classification, regression, "
        "pixel_classification; register your own with @cnnlab.register_task (see cnnlab --import)"
    )


def test_a_name_is_taken_once_and_a_section_answers_to_its_name():
    register_backbone("twoconv")(TwoConv)

    class Other(TwoConv):
        pass

    with pytest.raises(CnnlabError, match=r"^backbone 'twoconv' is already registered \(by "):
        register_backbone("twoconv")(Other)
    with pytest.raises(CnnlabError, match="backbone 'cnn' is already registered .built into cnn"):
        register_backbone("cnn")(TwoConv)

    class Wide(TwoConv):
        def __init__(self, in_channels: int = 1, width: int = 64):
            super().__init__(in_channels, width)

    register_backbone("twoconv", replace=True)(Wide)
    assert validate(TWOCONV).model.width == 8 and type(validate(TWOCONV).model).__name__ == (
        "WideConfig"
    )
    unregister("backbone", "twoconv")  # the replaced entry comes back
    assert type(validate(TWOCONV).model).__name__ == "TwoConvConfig"

    class Mislabelled(Section):
        backbone: Literal["other"] = "other"

    with pytest.raises(CnnlabError) as err:
        register_backbone("mine", config=Mislabelled)(TwoConv)
    assert str(err.value) == (
        "backbone 'mine': its config Mislabelled must say `backbone: Literal['mine'] = 'mine'` "
        "(the recipe's `backbone` picks it by that tag); it has backbone = 'other'"
    )

    class Needy(nn.Module):
        def __init__(self, depth: int):
            super().__init__()

    with pytest.raises(CnnlabError, match=r"Needy\(depth\): .* needs a keyword default"):
        register_backbone("needy")(Needy)
    with pytest.raises(CnnlabError, match="'cnn' is built into cnnlab; only registered"):
        unregister("backbone", "cnn")


CELL = """
import cnnlab
from torch import nn

@cnnlab.register_backbone("cellnet")
class CellNet(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = {width}):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3)

    def forward(self, x):
        return self.conv(x)
"""


def test_a_notebook_cell_run_again_registers_its_new_definition():
    """Jupyter runs a cell in __main__ each time: the same class defined again replaces its
    earlier self, where another class under that name must still say replace=True."""
    recipe = {"model": {"backbone": "cellnet"}, "tasks": TASKS}
    for width in (8, 12):  # the cell, edited and run again
        exec(CELL.format(width=width), {"__name__": "__main__"})
        assert validate(recipe).model.width == width
    assert [r.name for r in registered()].count("cellnet") == 1
    with pytest.raises(CnnlabError, match="backbone 'cellnet' is already registered"):
        register_backbone("cellnet")(TwoConv)
    unregister("backbone", "cellnet")  # gone: the cell's first run is not put back
    assert "cellnet" not in list_backbones()


def test_a_task_type_with_probabilities_says_how_it_makes_them():
    class OnlyFlag(Regression):
        class config(RegressionConfig):
            type: Literal["onlyflag"] = "onlyflag"

        probabilistic = True

        def nll(self, logits, target):
            return torch.zeros(())

    with pytest.raises(CnnlabError) as err:
        register_task("onlyflag")(OnlyFlag)
    assert str(err.value) == (
        "task 'onlyflag': OnlyFlag is probabilistic but has no probabilities, outcomes; write "
        "them (examples/custom_task.py's Tags has all three) or drop probabilistic"
    )

    class Diagram(Regression):
        class config(RegressionConfig):
            type: Literal["diagram"] = "diagram"

        figures = ("regression", "reliability")

    with pytest.raises(CnnlabError, match=r"Diagram.figures has reliability, which needs prob"):
        register_task("diagram")(Diagram)


# ------------------------------------------------------------- training and figures


def test_a_registered_backbone_trains_resumes_exactly_draws_and_reloads(tmp_path):
    register_backbone("twoconv")(TwoConv)

    @register_figure("kernel-norms", "norm of each first-layer filter")
    def kernel_norms(view) -> list[Chart]:
        from cnnlab.viz.base import new_figure

        weight = view.model.backbone.net.conv1.weight  # the module's own names, kept
        fig = new_figure(3, 2)
        fig.subplots().bar(range(weight.shape[0]), weight.flatten(1).norm(dim=1).tolist())
        return [Chart("kernel_norms", "Kernel norms", fig)]

    recipe = tiny_twoconv(
        tmp_path, "train.epochs=2", "data.train_subset=600", "data.test_subset=100",
        "train.precision=fp32",
    )  # fmt: skip
    reference = train(recipe)

    def stop_after_first(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(CnnlabError, match="interrupted"):
        train(recipe, on_epoch=stop_after_first)
    (run_path,) = set((tmp_path / "runs").iterdir()) - {reference.path}
    resumed = train(recipe, resume=run_path)
    rows = [[{k: v for k, v in r.items() if k not in TIMING} for r in run.read_metrics()]
            for run in (reference, resumed)]  # fmt: skip
    assert len(rows[0]) == 2 and rows[0] == rows[1]
    assert reference.test_metrics() == resumed.test_metrics()
    state = load_checkpoint(reference.best_path)["model"]
    assert {"backbone.net.conv1.weight", "backbone.net.conv2.bias"} <= state.keys()

    # every figure: they hook the stage by its FeatureInfo name, find the module's
    # convolutions and activations, and the registered one draws beside them
    view = RunView(reference.path)
    for name in FIGURES:
        charts = make_charts(view, name)
        assert charts or name in ("pixels", "landscape"), name  # no such task; not computed
    assert render(reference.path, "kernel-norms", tmp_path / "figures")[0].stat().st_size > 2000
    env = json.loads((reference.path / "env.json").read_text())
    assert {"kind": "backbone", "name": "twoconv", "module": __name__} in env["components"]

    # without the registration, the run says what is missing and what to import
    unregister("backbone", "twoconv")
    with pytest.raises(CnnlabError) as err:
        RunFolder.open(reference.path).recipe()
    assert str(err.value) == (
        f"run {reference.path} used backbone 'twoconv', which is not registered in this "
        f"process; import the module that registers it (cnnlab --import {__name__} ...)"
    )


class Pyramid(nn.Module):
    """Three stages, each half the size: forward returns all three maps, as timm's
    `feature_info` says."""

    def __init__(self, in_channels: int = 3, width: int = 4):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1), nn.ReLU())
            for i in range(3)
        )
        self.feature_info = [
            {"num_chs": chans[i + 1], "reduction": 2 ** (i + 1), "module": f"stages.{i}"}
            for i in range(3)
        ]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


def test_every_stage_of_a_module_with_feature_info_takes_a_pixel_head():
    register_backbone("pyramid")(Pyramid)
    raw = {
        "model": {"backbone": "pyramid", "width": 4},
        "tasks": {"colour": {"type": "pixel_classification", "target": "colour", "stage": 1}},
    }
    recipe = validate(raw)
    tasks = fitted_tasks(recipe, classes=5)
    model = create_model(recipe.model, 3, (32, 32), tasks, channels_last=False)
    backbone = model.backbone
    assert [(s.channels, s.stride) for s in backbone.feature_info] == [(4, 2), (8, 4), (16, 8)]
    maps = backbone.forward_intermediates(torch.zeros(2, 3, 32, 32))
    assert [m.shape[1:] for m in maps] == [(4, 16, 16), (8, 8, 8), (16, 4, 4)]
    out = model(torch.zeros(2, 3, 32, 32))["colour"]
    assert out.shape == (2, 5, 32, 32)  # stage 1's map, upsampled by its stride 4
    assert list(feature_blocks(model)) == ["block 1", "block 2", "block 3"]
    assert backbone.forward_pooled(maps).shape == (2, backbone.num_features) == (2, 16)

    class Liar(Pyramid):
        def __init__(self, in_channels: int = 3, width: int = 4):
            super().__init__(in_channels, width)
            self.feature_info = self.feature_info[:2]

    register_backbone("liar")(Liar)
    with pytest.raises(CnnlabError, match=r"declares stages of \[4, 8\] channels but its forward"):
        create_model(validate({**raw, "model": {"backbone": "liar"}}).model, 3, (32, 32), tasks)


class WidthConfig(Section):
    backbone: Literal["pooled"] = "pooled"
    width: int = 8


class Pooled(Backbone):
    """A cnnlab Backbone of its own, with its own section."""

    def __init__(self, cfg: WidthConfig, in_channels: int, image_size: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, cfg.width, 3, padding=1)
        self.feature_info = [FeatureInfo("conv", cfg.width, 1)]
        self.num_features = cfg.width

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.conv(x)]

    def forward_pooled(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return maps[-1].amax(dim=(2, 3))


def test_a_backbone_subclass_registers_with_its_own_section():
    with pytest.raises(CnnlabError, match="give its section with register_backbone"):
        register_backbone("pooled")(Pooled)
    register_backbone("pooled", config=WidthConfig)(Pooled)
    recipe = validate({"model": {"backbone": "pooled", "width": 3}, "tasks": TASKS})
    model = create_model(recipe.model, 1, (28, 28), fitted_tasks(recipe))
    assert type(model.backbone) is Pooled and model(torch.zeros(2, 1, 28, 28))["cls"].shape == (
        2,
        10,
    )


# ------------------------------------------------------------- sources, tasks, figures


class StripesConfig(DataSection):
    source: Literal["stripes"] = "stripes"
    # a flip or a shift leaves stripes as they were: the label stays
    label_maps: ClassVar[dict[str, LabelMap | None]] = {"hflip": None, "translate": None}
    images: int = 400  # per split


def stripes(n: int, seed: int) -> ImageSet:
    """Images with horizontal (0) or vertical (1) stripes; target `label` and `ink`."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    rows = (torch.arange(12) % 3 == 0).to(torch.uint8).mul(200)  # (12,)
    images = torch.where(
        labels.view(n, 1, 1, 1) == 0, rows.view(1, 1, 12, 1), rows.view(1, 1, 1, 12)
    ).expand(n, 1, 12, 12)
    images = (images + torch.randint(0, 40, (n, 1, 12, 12), generator=g)).to(torch.uint8)
    return ImageSet(images.contiguous(), {"label": labels})


def stripes_info(cfg: StripesConfig) -> DataInfo:
    sizes = {"train": cfg.images, "test": cfg.images}
    return DataInfo("stripes", (1, 12, 12), {"label": ["rows", "columns"]}, sizes, "carved")


def stripes_load(cfg: StripesConfig) -> Dataset:
    """Horizontal or vertical stripes, 12x12 grey."""
    train, test = stripes(cfg.images, 0), stripes(cfg.images, 1)
    return Dataset("stripes", train, test, classes={"label": ["rows", "columns"]})


class LabelRegression(Regression):
    """A regression of the class index, standardized: a task type of one's own."""

    class config(RegressionConfig):
        type: Literal["label_regression"] = "label_regression"

    def fit(self, spec: TargetSpec, values=None) -> None:
        super().fit(dataclasses.replace(spec, classes=None), values)  # the index, knowingly


def test_a_registered_source_and_task_train_together(tmp_path):
    register_backbone("twoconv")(TwoConv)
    register_source("stripes", config=StripesConfig, describe=stripes_info, load=stripes_load)
    register_task("label_regression")(LabelRegression)
    raw = {
        "output_dir": str(tmp_path / "runs"),
        "data": {"source": "stripes", "images": 200},
        "model": {"backbone": "twoconv", "width": 4},
        "tasks": {"kind": {"type": "label_regression", "target": "label"}, **TASKS},
        "train": {"epochs": 2, "progress": False, "report": False, "device": "cpu",
                  "batch_size": 32, "precision": "fp32", "threads": 1},
    }  # fmt: skip
    recipe = validate(raw)
    assert describe(recipe.data).shape == (1, 12, 12)
    assert "unknown key 'data.imgs'" in error_of({**raw, "data": {"source": "stripes", "imgs": 3}})
    assert error_of({**raw, "tasks": {"k": {"type": "label_regression", "target": "label",
                                            "label_smoothing": 0.1}}}).startswith(
        "recipe: unknown key 'tasks.k.label_smoothing'; valid keys here: target, weight, head"
    )  # fmt: skip
    run = train(recipe)
    assert run.test_metrics()["test.cls.accuracy"] > 0.9  # stripes are easy
    assert "test.kind.rmse" in run.test_metrics()

    with pytest.raises(CnnlabError, match="source 'auto': its config must be a .*DataSection"):
        register_source("auto", config=WidthConfig, describe=stripes_info, load=stripes_load)
    plain = register_source("plain", describe=stripes_info, load=stripes_load)
    assert plain.doc == "Horizontal or vertical stripes, 12x12 grey."
    assert error_of({**raw, "data": {"source": "plain"}}).startswith(
        "recipe: data.augment.hflip: plain does not say how a left-right flip changes its "
    )
    register_source("plain", describe=stripes_info, load=stripes_load, replace=True,
                    label_maps={"hflip": None, "translate": None})  # fmt: skip
    assert validate({**raw, "data": {"source": "plain", "val_fraction": 0.2}}).data.source == (
        "plain"
    )
    with pytest.raises(CnnlabError, match="registered no `locate`"):
        plain.locate(None, False)


class AboveConfig(TaskSection):
    type: Literal["above"] = "above"
    cut: float = 0.3


class AboveHead(MLPHead):
    """One logit per image, (B,): is the number above the cut?"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(1)

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        return out.float().sigmoid()


class Above(Task):
    """A yes/no of one's own, read off a number target (a fraction, not a class index)."""

    config = AboveConfig
    metrics = ("loss",)
    step_metrics = ("right",)
    figures = ("mistakes", "reliability")
    probabilistic = True

    def fit(self, spec: TargetSpec, values=None) -> None:
        self.info = TargetInfo()

    def head(self, backbone) -> AboveHead:
        return AboveHead(backbone.num_features, 1, self.cfg.head)

    def yes(self, target: torch.Tensor) -> torch.Tensor:
        return (target.float() > self.cfg.cut).float()

    def loss(self, head, out, target):
        return F.binary_cross_entropy_with_logits(out.float(), self.yes(target))

    def step_sums(self, pred, target):
        return [((pred > 0.5).float() == self.yes(target)).float().mean()]

    def epoch_metrics(self) -> MetricCollection:
        return MetricCollection({})

    def update_metrics(self, metrics, head, out, target) -> None:
        pass

    def probabilities(self, out):
        return (out.float() / self.temperature).sigmoid()

    def nll(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits, self.yes(target))

    def outcomes(self, logits, target):
        p = logits.sigmoid()
        return torch.maximum(p, 1 - p), ((p > 0.5).float() == self.yes(target)).float()

    def caption(self, truth, pred, short=str):
        said, true = bool(pred > 0.5), bool(truth > self.cfg.cut)
        return f"{true} → {said}", said != true

    def worst(self, truth, pred, logits, n, short=str):
        index = (pred - self.yes(truth)).abs().argsort(descending=True)[:n]
        return Worst(index, [self.caption(truth[i], pred[i])[0] for i in index], "most wrong", "")


def test_a_task_type_with_one_logit_per_image_is_reported_calibrated_and_exported(
    tmp_path, monkeypatch
):
    """A head of one's own may answer (B,), and its task read a number as its target: the
    rows calibration and the reliability diagram bin keep the number, not its integer part."""
    shown = [s for s in SECTIONS if s[0] in ("curves", "predictions", "reliability")]
    monkeypatch.setattr("cnnlab.report.SECTIONS", shown)  # the report's part that reads it
    register_backbone("twoconv")(TwoConv)
    register_task("above")(Above)
    recipe = tiny_twoconv(
        tmp_path, "tasks.big={type: above, target: ink, cut: 0.15}", "train.report=true"
    )
    run = cnnlab.load_run(train(recipe).path)
    predictions = RunView(run.path).test_predictions
    rows, ink = predictions.rows["big"], predictions.truth["big"]  # the test images' ink
    assert ink.is_floating_point() and rows.logits.shape == ink.shape
    assert torch.equal(rows.targets, ink)
    assert 0 < int((ink > 0.15).sum()) < len(ink)  # yes and no both occur
    html = (run.path / "report.html").read_text()
    assert "reliability_big" in html and "mistakes_big" in html
    table = run.calibrate()
    t = float(table[table.task == "big"].temperature.iloc[0])
    sure, right = Above("big", AboveConfig(target="ink", cut=0.15)).outcomes(rows.logits / t, ink)
    ece = binary_calibration_error(sure, right.long(), n_bins=15)  # on the test images' inks
    fitted = json.loads((run.path / "calibration.json").read_text())["tasks"]["big"]
    assert fitted["test"]["after"]["ece"] == pytest.approx(float(ece), abs=1e-6)
    lines = run.export().lines()
    assert any(line.startswith("big: max |difference|") for line in lines)
    assert run.predict(torch.zeros(2, 1, 28, 28))["big"].values.shape == (2,)


class DiagnosisConfig(ClassificationConfig):
    type: Literal["diagnosis"] = "diagnosis"


class Diagnosis(Classification):
    """docs/components.md's example: specificity, the area under the ROC curve, and each
    class's recall."""

    config = DiagnosisConfig
    metrics = (*Classification.metrics, "specificity", "auroc")
    maximize = Classification.maximize | {"specificity", "auroc", "recall_of"}
    measures: ClassVar[dict] = {
        **Classification.measures,
        "specificity": ("MulticlassSpecificity", "macro"),
        "auroc": ("MulticlassAUROC", "macro"),
        "recall_of": ("MulticlassRecall", "none"),
    }


def test_one_class_of_a_metric_per_class_is_a_monitor(tmp_path, capsys):
    """`val.cls.recall_of_Shirt` picks the best epoch; a class the data lacks is refused before
    anything is decoded, with the classes there are."""
    register_task("diagnosis")(Diagnosis)
    assert Diagnosis.per_class == {"recall_of"} and not Classification.per_class
    monitor = "val.cls.recall_of_Shirt"
    sets = ["tasks.cls.type=diagnosis", "train.epochs=3", f"train.monitor={monitor}"]
    run = train(tiny_recipe(tmp_path, *sets))
    rows = [r for r in run.read_metrics() if monitor in r]
    assert len(rows) == 3 and {f"val.cls.recall_of_{c}" for c in ("Bag", "Coat")} <= set(rows[0])
    test = run.test_metrics()  # the area from the probabilities, not the answers: above 0.5
    assert 0.5 < test["test.cls.auroc"] <= 1 and 0 < test["test.cls.specificity"] <= 1
    best = max(rows, key=lambda r: (r[monitor], -r["val.loss"]))
    assert load_checkpoint(run.best_path)["loop"]["epoch"] == best["epoch"]
    EpochProgress.summary(rows[0], monitor)  # each epoch's line shows the monitor, not each class
    (line,) = capsys.readouterr().out.splitlines()
    assert f"{monitor} {rows[0][monitor]:.4f}" in line and "recall_of_Bag" not in line
    with pytest.raises(CnnlabError) as err:
        train(tiny_recipe(tmp_path, *sets[:2], "train.monitor=val.cls.recall_of_shirts"))
    assert str(err.value).startswith(
        "train.monitor 'val.cls.recall_of_shirts': tasks.cls has no class or component "
        "'shirts' (did you mean 'Shirt'?); its recall_of is reported for each of: T-shirt/top, "
    )
    assert len(list((tmp_path / "runs").iterdir())) == 1  # no folder for the refused one


def test_a_per_class_metric_a_task_type_does_not_report_stops_in_one_line(tmp_path):
    class Misnamed(Diagnosis):  # says "recalled" is per class, reports recall_of_<class>
        per_class = frozenset({"recalled"})

    register_task("diagnosis")(Misnamed)
    sets = ["tasks.cls.type=diagnosis", "train.monitor=val.cls.recalled_Shirt"]
    with pytest.raises(CnnlabError) as err:
        train(tiny_recipe(tmp_path, *sets))
    assert str(err.value).startswith(
        "'val.cls.recalled_Shirt' is not among the validation metrics tasks.cls reported "
        "(val.cls.loss, val.cls.accuracy, "
    )


def test_a_registered_figure_is_listed_and_gets_a_report_section():
    built_in = [sid for sid, _, _ in sections()]

    @register_figure("weight-norms", "norm of every weight tensor")
    def weight_norms(view, top: int = 5) -> list[Chart]:
        return []

    assert list_figures()["weight-norms"] == "norm of every weight tensor"
    title = "weight-norms: norm of every weight tensor"  # what it draws, not only its name
    assert sections()[-1] == ("weight-norms", title, ["weight-norms"])
    assert [sid for sid, _, _ in sections()][:-1] == built_in
    with pytest.raises(CnnlabError, match="figure 'curves' is already registered"):
        register_figure("curves")(weight_norms)
    unregister("figure", "weight-norms")
    assert "weight-norms" not in list_figures() and [s for s, _, _ in sections()] == built_in


# ------------------------------------------------------------------ importing code

COMPONENTS = '''
import torch
from torch import nn

from cnnlab.components import register_backbone


@register_backbone("twoconv")
class TwoConv(nn.Module):
    """Two convolutions, the second strided."""

    def __init__(self, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))
'''


def test_import_modules_takes_files_and_module_names(tmp_path, monkeypatch):
    (tmp_path / "my_components.py").write_text(COMPONENTS)
    import_modules([str(tmp_path / "my_components.py")])
    import_modules([str(tmp_path / "my_components.py")])  # once per process: no duplicate
    assert validate(TWOCONV).model.width == 8
    assert plugins.child_environment({})["CNNLAB_IMPORT"] == str(tmp_path / "my_components.py")
    with pytest.raises(CnnlabError) as err:
        import_modules(["no_such_components"])
    assert str(err.value).startswith("--import no_such_components: no module named ")
    with pytest.raises(CnnlabError, match=r"^--import missing\.py: no such file .*missing\.py"):
        import_modules(["missing.py"])


def test_import_of_a_module_name_from_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "team_components.py").write_text(COMPONENTS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    import_modules(["team_components"])
    assert validate(TWOCONV).model.backbone == "twoconv"
    assert plugins.imported_modules() == ["team_components"]


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip


def test_cli_train_imports_a_file(tmp_path):
    (tmp_path / "my_file.py").write_text(COMPONENTS)
    recipe = yaml.safe_load(DEMO.read_text())
    recipe["model"] = {"backbone": "twoconv", "width": 8}
    recipe["output_dir"] = str(tmp_path / "runs")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    sets = [o for o in TINY if not o.startswith("model.")]
    sets += ["data.train_subset=1000", "train.precision=fp32"]

    out = cli(
        "train",
        "--import",
        "my_file.py",
        "recipe.yaml",
        *(a for s in sets for a in ("--set", s)),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "runs").iterdir()
    env = json.loads((run / "env.json").read_text())
    assert env["components"] == [
        {"kind": "backbone", "name": "twoconv", "import": str(tmp_path / "my_file.py")}
    ]

    out = cli("train", "--import", "absent_module", "recipe.yaml", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: --import absent_module: no module named 'absent_module'")


def test_the_listing_commands_import_a_file_too(tmp_path):
    """`cnnlab backbones --import F` lists what F registers, as train does; a class without
    a docstring of its own is listed by its name, not by nn.Module's docstring."""
    (tmp_path / "my_file.py").write_text(
        COMPONENTS.replace('"""Two convolutions, the second strided."""', "")
    )
    out = cli("backbones", "--import", "my_file.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "twoconv    twoconv (registered)" in out.stdout and "Base class" not in out.stdout
    for command in ("tasks", "figures", "landscape"):
        assert "--import" in cli(command, "--help", cwd=tmp_path).stdout, command


def test_cli_count_imports_a_module_from_the_current_folder(tmp_path, monkeypatch):
    """`cnnlab --import MODULE count`, through the command's parser, in this process."""
    from typer.testing import CliRunner

    from cnnlab.cli import app

    (tmp_path / "my_components.py").write_text(COMPONENTS)
    recipe = yaml.safe_load(DEMO.read_text())
    recipe["model"] = {"backbone": "twoconv", "width": 8}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # --import puts this folder on it
    out = CliRunner().invoke(app, ["--import", "my_components", "count", "recipe.yaml"])
    assert out.exit_code == 0, out.output
    assert "backbone.net.conv1" in out.output and "(seed 002) do not apply" in out.output


def test_installed_entry_points_register_and_a_broken_one_is_one_warning(tmp_path):
    site = tmp_path / "site"
    (site / "lab_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "lab_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lab-plugin\nVersion: 0.1\n"
    )
    (site / "lab_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[cnnlab.components]\nnets = lab_plugin_nets\nbroken = lab_plugin_broken:setup\n"
    )
    (site / "lab_plugin_nets.py").write_text(COMPONENTS)
    (site / "lab_plugin_broken.py").write_text(
        "def setup():\n    raise RuntimeError('no GPU driver')\n"
    )
    out = cli("backbones", cwd=tmp_path, env={"PYTHONPATH": f"{ROOT}{os.pathsep}{site}"})
    assert out.returncode == 0, out.stderr
    assert "twoconv" in out.stdout and "Two convolutions, the second strided." in out.stdout
    assert out.stderr == (
        "warning: components of package lab-plugin not loaded (entry point broken = "
        "lab_plugin_broken:setup: RuntimeError: no GPU driver)\n"
    )


def test_the_schema_is_the_built_in_one_outside_a_scope():
    with registration_scope():
        register_backbone("twoconv")(TwoConv)
        assert validate(TWOCONV).model.backbone == "twoconv"
    assert "'twoconv': choose one of: cnn," in error_of(TWOCONV)
    assert components.registered() == []


def test_processes_a_sweep_starts_import_what_the_command_imported(tmp_path):
    """A sweep's workers and torchrun's ranks get $CNNLAB_IMPORT (`child_env`); `cnnlab`'s
    main imports it before reading the command line, as `cnnlab train --run-dir` does."""
    from cnnlab.sweeps.torchrun import child_env

    (tmp_path / "my_components.py").write_text(COMPONENTS)
    recipe = yaml.safe_load(DEMO.read_text())
    recipe["model"] = {"backbone": "twoconv", "width": 8}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    import_modules([str(tmp_path / "my_components.py")])
    assert child_env()["CNNLAB_IMPORT"] == str(tmp_path / "my_components.py")
    out = subprocess.run(
        [sys.executable, "-m", "cnnlab", "count", "recipe.yaml"], capture_output=True,
        text=True, env=child_env(), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "backbone.net.conv2" in out.stdout


def test_a_sweep_folder_and_a_resume_line_name_what_to_import(tmp_path):
    """`cnnlab select SWEEP` without the --import its sweep ran with said only that the
    base recipe's backbone is unknown; and the resume line after Ctrl-C left --import out."""
    from cnnlab.distributed import Ranks
    from cnnlab.sweeps.study import Settings, create_or_join

    spec = str(tmp_path / "sweep_components.py")
    (tmp_path / "sweep_components.py").write_text(COMPONENTS)
    (tmp_path / "lr.yaml").write_text(
        "method: grid\nparameters: {train.optimizer.lr: {values: [0.001, 0.003]}}\n"
    )
    base = yaml.safe_load(DEMO.read_text()) | {"model": {"backbone": "twoconv", "width": 8}}
    settings = Settings(method="grid", metric="val.loss", goal="minimize", trials=2)
    with registration_scope():
        import_modules([spec])  # `cnnlab --import sweep_components.py sweep ...`
        resume = Ranks().resume_hint("runs/x")
        assert resume.startswith(f"cnnlab --import {spec} train --resume runs/x (in Python: ")
        folder = create_or_join(tmp_path / "out", None, base, tmp_path / "lr.yaml", None, settings)
        assert folder.base()["model"]["backbone"] == "twoconv"
    with pytest.raises(CnnlabError) as err:  # a later process, without the --import
        folder.base()
    assert str(err.value) == (
        f"sweep {folder.path} used backbone 'twoconv', which is not registered in this "
        f"process; import the module that registers it (cnnlab --import {spec} ...)"
    )


def test_a_notebooks_own_import_is_handed_on_and_its_cells_are_refused(tmp_path, monkeypatch):
    """A notebook that registers with a plain `import notebook_components` hands the module
    on to the processes a sweep starts (by its file: they find it from any folder); one that
    registers in a cell of its own (__main__, which no process can import) is refused
    before any worker starts, naming the component, when the sweep names it."""
    from cnnlab.sweeps.launch import check_reachable
    from cnnlab.sweeps.torchrun import child_env

    (tmp_path / "notebook_components.py").write_text(COMPONENTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        __import__("notebook_components")  # the notebook's own `import`, not --import
        assert child_env()["CNNLAB_IMPORT"] == str(tmp_path / "notebook_components.py")
        recipe = yaml.safe_load(DEMO.read_text())
        recipe["model"] = {"backbone": "twoconv", "width": 8}
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        out = subprocess.run(
            [sys.executable, "-m", "cnnlab", "count", "recipe.yaml"], capture_output=True,
            text=True, env=child_env(), cwd=tmp_path / "elsewhere", timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "backbone.net.conv2" in out.stdout
    finally:
        sys.modules.pop("notebook_components", None)

    cell = type("CellNet", (TwoConv,), {"__module__": "__main__"})
    cnnlab.register_backbone("cellnet")(cell)
    sweep = tmp_path / "backbones.yaml"
    sweep.write_text(
        "method: grid\nmetric: {name: val.cls.accuracy}\n"
        "parameters: {model.backbone: {values: [cellnet, twoconv]}}\n"
    )
    with pytest.raises(CnnlabError) as refused:
        cnnlab.sweep(recipe, sweep, out=tmp_path / "sweeps", workers=2)
    assert str(refused.value) == (
        "the sweep names backbone 'cellnet', registered in this notebook or script (__main__), "
        "which its 2 worker processes cannot import: move it into a .py file and import that "
        "(a notebook's `import my_components` is handed on), or sweep with workers=1"
    )
    assert not (tmp_path / "sweeps").exists()  # refused before its folder is made
    with pytest.raises(CnnlabError, match="which a trial's 2 processes cannot import"):
        check_reachable(sweep.read_text(), 1, 2)
    check_reachable(sweep.read_text(), 1, 1)  # one worker: the trials run in this process
    check_reachable(sweep.read_text().replace("cellnet, ", ""), 2, 1)  # not named: no refusal
