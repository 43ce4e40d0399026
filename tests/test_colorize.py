"""Seed 001's colorization: the palette, the colour target, the grey input, the per-pixel
task and its head, and runs of the shipped recipe on three colour sources."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cnnlab.catalog import RECIPES
from cnnlab.data import colorize as col
from cnnlab.data import describe
from cnnlab.data.batches import prepare_splits
from cnnlab.data.cifar10 import CIFAR10Config
from cnnlab.data.stats import channel_stats
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import evaluate_run
from cnnlab.experiment import train
from cnnlab.models import FeatureInfo, create_backbone
from cnnlab.models.colorizer import ColorizerConfig
from cnnlab.recipe import load_recipe
from cnnlab.tasks import TargetSpec, task_class
from cnnlab.tasks.pixel import PixelClassificationConfig
from cnnlab.viz import RunView, make_charts
from tests.conftest import run_cli
from tests.test_cifar10 import fake_cifar
from tests.test_image_folder import make_tree

RECIPE = RECIPES / "colorize.yaml"
COLOURS = torch.tensor([[200, 30, 30], [20, 160, 40], [30, 40, 220], [240, 240, 240]])


def four_colour_images(n: int = 12, size: int = 16) -> torch.Tensor:
    """uint8 (n, 3, size, size), every pixel one of COLOURS, in seeded blocks of 4x4."""
    gen = torch.Generator().manual_seed(0)
    pick = torch.randint(len(COLOURS), (n, size // 4, size // 4), generator=gen)
    pick = pick.repeat_interleave(4, 1).repeat_interleave(4, 2)
    return COLOURS[pick].permute(0, 3, 1, 2).to(torch.uint8).contiguous()


# --------------------------------------------------------------------------- palette


def test_k_means_finds_the_colours_an_image_set_is_made_of():
    images = four_colour_images()
    cfg = col.ColorizeConfig(colours=4, sample_pixels=1000)
    palette = col.fit_palette(images, cfg, seed=0)
    order = col.luminance(COLOURS.float().view(-1, 3, 1, 1)).flatten().argsort()
    assert torch.equal(palette.long(), COLOURS[order])  # exactly, dark to light
    assert torch.equal(col.fit_palette(images, cfg, seed=0), palette)  # seeded
    names = col.palette_names(palette)
    assert all(len(n) == 7 and n.startswith("#") for n in names)
    assert torch.equal(col.palette_from_names(names), palette)  # saved as class names
    assert col.palette_from_names(["cat", "dog"]) is None and col.palette_from_names([]) is None


def test_the_target_is_each_pixels_nearest_palette_colour():
    gen = torch.Generator().manual_seed(1)
    palette = torch.randint(0, 256, (24, 3), generator=gen).to(torch.uint8)
    x = torch.rand(5, 3, 9, 7, generator=gen)
    got = col.nearest_colour(palette)(x)
    p = palette.float() / 255
    distance = (x.permute(0, 2, 3, 1).unsqueeze(-2) - p).square().sum(-1)  # (B, H, W, K)
    assert got.shape == (5, 9, 7) and torch.equal(got, distance.argmin(-1))


def test_the_model_sees_the_luminance_and_its_statistics_are_streamed():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    assert torch.allclose(col.luminance(red), torch.full((1, 1, 2, 2), 0.299))
    images = four_colour_images()
    mean, std = channel_stats(images, col.luminance)
    grey = col.luminance(images.double()) / 255
    assert mean.shape == (1,) and torch.allclose(mean.double(), grey.mean().view(1))
    assert torch.allclose(std.double(), grey.std().view(1), atol=1e-6)


# ---------------------------------------------------------------------- description


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    fake_cifar(root, per_batch=40, n_test=20)
    return root


def test_colorizing_makes_a_grey_input_and_a_per_pixel_target(cifar):
    info = describe(CIFAR10Config(root=str(cifar), colorize={"colours": 8}))
    assert info.shape == (1, 32, 32) and info.targets["colour"] == col.placeholder_names(
        col.ColorizeConfig(colours=8)
    )
    grey = load_recipe(RECIPE, ["data.source=fashion_mnist"]).data
    with pytest.raises(CnnlabError, match=r"^data.colorize: fashion_mnist images have 1 ch"):
        describe(grey)


def test_a_run_keeps_its_palette_rather_than_refitting(cifar):
    cfg = CIFAR10Config(root=str(cifar), colorize={"colours": 3})
    fitted = prepare_splits(cfg, 0, {"colour"}, torch.device("cpu"))
    names = fitted.classes["colour"]
    assert fitted.in_channels == 1 and len(names) == 3
    saved = ["#000000", "#808080", "#ffffff"]
    kept = prepare_splits(cfg, 0, {"colour"}, torch.device("cpu"), saved_classes={"colour": saved})
    assert kept.classes["colour"] == saved
    x, targets = next(kept.eval_batches("val", 8, {"colour"}))
    assert x.shape == (8, 1, 32, 32) and targets["colour"].shape == (8, 32, 32)
    images = kept.val.images[:8].float() / 255
    assert torch.equal(targets["colour"], col.nearest_colour(col.palette_from_names(saved))(images))


# ----------------------------------------------------------------------- the task


def pixel_task(**cfg):
    config = PixelClassificationConfig(target="colour", head={"hidden": [], "dropout": 0}, **cfg)
    task = task_class(config)("colour", config)
    return task


def test_a_head_on_a_coarse_stage_paints_at_full_size():
    task = pixel_task(stage=0)
    task.fit(TargetSpec(classes=["a", "b", "c"], per_pixel=True))
    backbone = SimpleNamespace(feature_info=[FeatureInfo("blocks.0", 8, 2), FeatureInfo("b", 4, 4)])
    head = task.head(backbone)
    assert head.stage == 0
    out = head(torch.randn(2, 8, 16, 16))
    assert out.shape == (2, 3, 32, 32) and head.decode(out).shape == (2, 32, 32)
    deep = pixel_task(stage=5)
    deep.fit(TargetSpec(classes=["a", "b", "c"], per_pixel=True))
    with pytest.raises(CnnlabError, match=r"stage 5: the backbone has 2 stages"):
        deep.head(backbone)


def test_balanced_weights_give_rare_classes_the_weight_of_common_ones():
    task = pixel_task(class_weights="balanced")
    values = torch.tensor([[[0, 0, 0], [0, 0, 1]]])  # 5 of class 0, 1 of class 1, none of 2
    task.fit(TargetSpec(classes=["a", "b", "c"], per_pixel=True), lambda: values)
    w = task.weights
    assert w[2] == 0 and torch.isclose(w[1] / w[0], torch.tensor(5.0)) and w.mean() == 1.0
    head = task.head(SimpleNamespace(feature_info=[FeatureInfo("x", 4, 1)]))
    out = torch.randn(2, 3, 2, 3)
    target = torch.randint(0, 2, (2, 2, 3))
    expected = F.cross_entropy(out, target, weight=w)
    assert torch.isclose(task.loss(head, out, target), expected)
    with pytest.raises(CnnlabError, match="class_weights has 2 entries for 3 classes"):
        pixel_task(class_weights=[1.0, 2.0]).fit(
            TargetSpec(classes=["a", "b", "c"], per_pixel=True)
        )


def test_the_per_pixel_loss_is_the_mean_over_pixels_of_minus_log_softmax():
    task = pixel_task()
    task.fit(TargetSpec(classes=["a", "b"], per_pixel=True))
    head = task.head(SimpleNamespace(feature_info=[FeatureInfo("x", 4, 1)]))
    out = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # (1 image, 2 classes, 1 x 2 pixels)
    target = torch.tensor([[[0, 1]]])
    # pixel 1: class a, logits (2, 0); pixel 2: class b, logits (0, 0)
    by_hand = (-math.log(math.e**2 / (math.e**2 + 1)) - math.log(0.5)) / 2
    assert task.loss(head, out, target).item() == pytest.approx(by_hand)
    (step,) = task.step_sums(head.decode(out), target)
    assert step.item() == 0.5  # pixel 1 right; pixel 2 a tie, argmax picks class a: wrong


def test_pixel_accuracy_and_mean_iou_count_pixels():
    task = pixel_task()
    task.fit(TargetSpec(classes=["a", "b"], per_pixel=True))
    metrics = task.epoch_metrics()
    truth = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    metrics.update(pred, truth)
    got = task.epoch_values(metrics.compute())
    # class 0: 1 right of 2 true, 1 predicted -> IoU 1/2; class 1: 2 of 2, 3 predicted -> 2/3
    assert got["accuracy"] == pytest.approx(0.75) and got["miou"] == pytest.approx(7 / 12)
    assert task.caption(truth[0], pred[0]) == ("75% of pixels right", False)


# ----------------------------------------------------------- the recipe, end to end

QUICK = [
    "train.epochs=1", "train.progress=false", "train.device=cpu", "train.threads=1",
    "train.precision=fp32", "model.filters=8", "model.kernel_size=3",
]  # fmt: skip


def sets(*args: str) -> list[str]:
    return [a for s in args for a in ("--set", s)]


def test_the_shipped_recipe_on_scikit_images_photographs_trains_and_reports(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli("train", "colorize", *sets(*QUICK, f"output_dir={runs}", "data.train_images=128",
                  "data.val_images=32", "data.test_images=32"))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = runs.iterdir()
    test = json.loads((run / "test_metrics.json").read_text())
    assert 0.0 < test["test.colour.accuracy"] <= 1.0 and 0.0 < test["test.colour.miou"] <= 1.0
    html = (run / "report.html").read_text()
    assert "Per-pixel predictions" in html and "palette, share of pixels" in html
    assert (run / "figures" / "pixels_colour.png").stat().st_size > 5000
    view = RunView(run)
    grid, classes = make_charts(view, "pixels")
    assert grid.caption.split("Columns: ")[1].removesuffix(".").split(", ") == [
        "the grey input the model sees",
        "its prediction",
        "the palette target it learnt from",
        "the original photograph",
    ]  # four, as drawn: the photograph beside the grey input (a mask's run draws three)
    train_targets = torch.cat(
        [t["colour"] for _, t in view.splits.eval_batches("train", 64, {"colour"})]
    )
    common = torch.bincount(train_targets.flatten(), minlength=24).argmax()
    test_targets = torch.cat(  # the figures' images are the test images, as every figure's
        [t["colour"] for _, t in view.splits.eval_batches("test", 64, {"colour"})]
    )
    baseline = (test_targets == common).float().mean().item()
    assert classes.extra["baseline"] == pytest.approx(baseline) and "would score" in classes.caption
    said = f"Pixel accuracy {test['test.colour.accuracy']:.1%} on test; "  # the metric's value
    assert classes.caption.startswith(said) and "test images" in grid.title
    again = evaluate_run(run)  # the saved palette: the same test metrics
    assert again["test.colour.accuracy"] == pytest.approx(test["test.colour.accuracy"])


@pytest.mark.parametrize("source", ["cifar10", "image_folder"])
def test_any_colour_source_colorizes(source, cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = cifar if source == "cifar10" else make_tree(tmp_path)
    size = ["data.image_size=32"] if source == "image_folder" else []
    over = [*QUICK, *size, f"data.source={source}", f"data.root={root}", "train.batch_size=16"]
    run = train(load_recipe(RECIPE, [*over, f"output_dir={tmp_path}", "train.report=false"]))
    test = json.loads((run.path / "test_metrics.json").read_text())
    assert 0 <= test["test.colour.accuracy"] <= 1 and 0 <= test["test.colour.miou"] <= 1


def test_a_per_pixel_head_on_the_plain_cnn(cifar, tmp_path):
    """Any backbone with a spatial stage: the CNN's first block (stride 2), upsampled."""
    cnn = "model={backbone: cnn, blocks: 2, base_filters: 8}"
    over = [*QUICK, "data.source=cifar10", f"data.root={cifar}", cnn, "tasks.colour.stage=0"]
    recipe = load_recipe(RECIPE, [*over, f"output_dir={tmp_path}", "train.report=false"])
    view = RunView(train(recipe).path)
    head = view.model.heads["colour"]
    assert head.stage == 0 and head.stride == 2
    x = view.batch("val", torch.arange(4))
    assert view.model(x)["colour"].shape == (4, 24, 32, 32)  # upsampled to the image


@pytest.mark.parametrize("size", [32, 64])
def test_the_colorizer_climbs_back_to_the_image_size(size):
    cfg = ColorizerConfig(filters=4, kernel_size=5, decoder_out=6)
    net = create_backbone(cfg, 1, (size, size))
    maps = net.forward_intermediates(torch.zeros(2, 1, size, size))
    assert [m.shape[1:] for m in maps] == [
        (4, size // 2, size // 2), (8, size // 4, size // 4), (16, size // 8, size // 8),
        (8, size // 4, size // 4), (4, size // 2, size // 2), (6, size, size),
    ]  # fmt: skip
    ups = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(u.kernel_size, u.stride) for u in ups] == [((2, 2), (2, 2))] * 3
    with pytest.raises(ValueError, match="kernel_size 4 is even"):
        ColorizerConfig(kernel_size=4)
