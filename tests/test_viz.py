"""Figures of a run: each computes the right numbers, works on every backbone, and leaves
the model as it found it (hooks removed, flags restored), even when something fails."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cnnlab.build import build
from cnnlab.components import register_figure, registration_scope
from cnnlab.data import batches
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import Recorder, SplitPredictions, unit_max
from cnnlab.experiment import train
from cnnlab.models import BACKBONES
from cnnlab.plugins import import_flags, import_modules
from cnnlab.precision import autocast_for
from cnnlab.recipe import load_recipe
from cnnlab.report import _section
from cnnlab.runs import RunFolder, load_checkpoint
from cnnlab.tasks import evaluate
from cnnlab.tasks.calibration import Rows
from cnnlab.tasks.classification import confident_errors
from cnnlab.viz import FIGURES, Chart, RunView, drawn, make_charts
from cnnlab.viz.attributions import _explained as explained_tasks
from cnnlab.viz.attributions import explain
from cnnlab.viz.base import grid_shape, new_figure
from cnnlab.viz.confusion import (
    confusion_charts,
    confusion_counts,
    group_accuracy,
    group_errors,
)
from cnnlab.viz.data_makeup import BINS, _histograms, rare_classes
from cnnlab.viz.dead_units import dead_table
from cnnlab.viz.features import _filter_images, capture
from cnnlab.viz.guided import guided_gradient
from cnnlab.viz.hooks import (
    activation_modules,
    analysis_mode,
    feature_blocks,
    forward_hooks,
    last_conv,
)
from cnnlab.viz.mosaic import DPI, GAP, Tile, colored, fit, mosaic, rgb, side_for, wrap
from cnnlab.viz.predictions import parse_grid
from tests.conftest import ROOT, fitted_tasks, run_cli


def no_hooks_left(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


def recorded(model: nn.Module, batches, views=None) -> SplitPredictions:
    """The units a pass over `batches` records (as the test pass every figure shares)."""
    recorder = Recorder({}, None, [], 0, activation_modules)
    with torch.inference_mode(), analysis_mode(model), recorder.watching(model):
        evaluate(model, None, batches, contextlib.nullcontext, views, recorder.add)
    return recorder.result()


def alive_units(model: nn.Module, batches) -> dict[str, torch.Tensor]:
    return recorded(model, batches).alive


@pytest.fixture(scope="module")
def view(report_run) -> RunView:
    return RunView(report_run[0])


# ------------------------------------------------------------ every figure, every backbone


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_figure_on_every_backbone(backbone, tiny, tmp_path, report_run):
    # The shared run already is a cnn: no second training for it.
    shared = backbone == "cnn"
    smallest = {
        "resnet": ", n: 1",
        "plainnet": ", n: 1",
        "colorizer": ", filters: 4",
        "timm": ", input_size: 32",  # the pretrained network at 32 px, not its own 224
    }.get(backbone, "")  # one block per stage; the fewest filters
    path = (
        report_run[0]
        if shared
        else train(tiny(f"model={{backbone: {backbone}{smallest}}}", "data.train_subset=500")).path
    )
    view = RunView(path)
    for name in FIGURES:
        charts = make_charts(view, name)
        # no such task in the recipe; no landscape computed for the run
        assert charts or name in ("regression", "pixels", "landscape"), name
        for chart in charts:
            png = chart.save(tmp_path / backbone)
            assert png.stat().st_size > 2000, png  # a real picture, not an empty canvas
            for ax in chart.figure.axes:  # every visible panel of a plot is labelled
                if ax.get_visible() and ax.lines:
                    assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())
    assert no_hooks_left(view.model)


# -------------------------------------------------------------------- numbers are right


def test_confusion_counts_sum_to_the_test_set_and_match_predictions(view):
    (chart, *_) = make_charts(view, "confusion")
    counts = chart.extra["counts"]
    preds = view.test_predictions
    assert counts.shape == (10, 10)
    assert int(counts.sum()) == len(view.split("test")) == 500
    manual = torch.zeros(10, 10, dtype=torch.long)
    for t, p in zip(preds.truth["cls"].tolist(), preds.pred["cls"].tolist(), strict=True):
        manual[t, p] += 1
    assert torch.equal(counts, manual)
    # the figures predict in the run's precision (bf16 here), so the matrix's diagonal is
    # exactly the accuracy the test metrics report (in fp32 a few near-ties flip)
    test = json.loads((view.run.path / "test_metrics.json").read_text())
    assert view.precision == "bf16"
    assert int(counts.diag().sum()) == round(test["test.cls.accuracy"] * 500)
    names = [row["class"] for row in chart.table]
    assert names == view.task_classes("cls") and "Ankle boot" in names


def test_group_errors_add_up_by_group():
    names = ["a+b:1", "a+b:2", "a+c:1", "b+c:1"]
    cm = torch.tensor([[5, 2, 1, 0], [3, 4, 0, 0], [0, 0, 6, 2], [1, 0, 0, 7]])
    groups, g = group_errors(cm, names)
    assert groups == ["a+b", "a+c", "b+c"]
    assert g.tolist() == [[5, 1, 0], [0, 0, 2], [1, 0, 0]]  # diagonal (correct) excluded
    assert int(g.sum()) == int(cm.sum() - cm.diag().sum())
    assert group_errors(cm, ["x", "y", "z", "w"]) is None
    by_group = {r["group"]: r for r in group_accuracy(cm, names)}
    assert by_group["a+b"] == {"group": "a+b", "images": 15, "accuracy": 0.6,
                               "group right": round(14 / 15, 4)}  # fmt: skip
    assert by_group["b+c"]["accuracy"] == 0.875 and by_group["a+c"]["group right"] == 0.75
    assert torch.equal(
        confusion_counts(torch.tensor([0, 1]), torch.tensor([1, 1]), 2),
        torch.tensor([[0, 1], [0, 1]]),
    )


def test_many_classes_stay_readable(tmp_path):
    """GSN-like: 135 classes named "pair:count" get unlabelled matrices plus by-group views."""
    pairs = [f"{a}+{b}" for i, a in enumerate("SCUDRL") for b in "SCUDRL"[i + 1 :]]
    names = [f"{p}:{k}" for p in pairs for k in range(1, 10)]
    gen = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 135, (4000,), generator=gen)
    pred = torch.where(
        torch.rand(4000, generator=gen) < 0.7, truth, torch.randint(0, 135, (4000,), generator=gen)
    )
    cm = confusion_counts(truth, pred, 135)
    charts = {c.key: c for c in confusion_charts("cls", cm, names)}
    assert set(charts) == {
        "confusion_cls",
        "per_class_cls",
        "confused_pairs_cls",
        "group_errors_cls",
    }
    matrix_ax = charts["confusion_cls"].figure.axes[0]
    assert matrix_ax.get_xlabel() == "predicted class (index)"  # no 135 crammed names
    assert not {t.get_text() for t in matrix_ax.get_xticklabels()} & set(names)
    assert charts["group_errors_cls"].extra["groups"].shape == (15, 15)
    assert int(charts["group_errors_cls"].extra["groups"].sum()) == int((truth != pred).sum())
    assert len(charts["confused_pairs_cls"].table) == 15
    for chart in charts.values():
        assert chart.save(tmp_path).stat().st_size > 2000


def test_a_number_targets_values_are_each_splits_share_by_whole_numbers_for_counts():
    """Cells counted per image: a bar for each whole number (none between, none of a 1.6
    density), each split's bars summing to 1 whatever its size; unlabelled (NaN) left out."""
    fig = new_figure(4, 3)
    ax = fig.subplots()
    counts = {"train": torch.tensor([0.0, 1, 1, 2, 5, float("nan")]), "val": torch.tensor([1.0, 2])}
    _histograms(ax, "count", counts)
    train, val = (patch.get_xy() for patch in ax.patches)  # a step outline per split
    assert sorted(set(train[:, 0])) == [k - 0.5 for k in range(7)]  # -0.5, 0.5, ..., 5.5
    assert train[:, 1].max() == pytest.approx(2 / 5) and val[:, 1].max() == pytest.approx(1 / 2)
    assert ax.get_ylabel() == "share of the split's images"
    ax.clear()
    _histograms(ax, "ink", {"train": torch.linspace(0, 1, 101)})  # a measure: even bins
    (train,) = (patch.get_xy() for patch in ax.patches)
    assert len(set(train[:, 0])) == BINS + 1 and train[:, 1].max() < 0.1


def test_the_data_figure_counts_each_split_and_names_the_rare_classes(view):
    (chart,) = make_charts(view, "data")
    sizes = {s: len(view.split(s)) for s in ("train", "val", "test")}
    assert chart.extra["sizes"] == sizes
    assert chart.caption.startswith(
        f"Images: train {sizes['train']:,}, validation {sizes['val']:,}, test {sizes['test']:,}."
    )
    labels = chart.extra["counts"]["label"]  # cls reads it; ink is drawn as a histogram
    for split, counts in labels.items():
        truth = view.split(split).targets["label"]
        assert counts == torch.bincount(truth, minlength=10).tolist(), split
    assert set(chart.extra["counts"]) == {"label"}
    assert chart.caption.endswith("Every class has at least 10 training images.")
    names = [f"c{i}" for i in range(5)]
    counts = {"train": [50, 3, 40, 9, 0], "val": [5, 1, 4, 0, 0]}
    assert rare_classes("kind", names, counts) == [
        "kind: no training images of 'c4': a class without them cannot be learnt (add some, "
        "or leave it out of the classes).",
        "kind: few images in 'c1' (3 train, 1 validation); 'c3' (9 train, 0 validation): "
        "their metrics rest on those few (one image moves a per-class accuracy by many points).",
    ]
    assert rare_classes("mask", names, counts, "pixels") == [  # few pixels are many
        "mask: no training pixels of 'c4': a class without them cannot be learnt (add some, "
        "or leave it out of the classes)."
    ]


def test_regression_figure_agrees_with_the_test_metrics(view):
    (chart,) = make_charts(view, "regression")
    test = json.loads((view.run.path / "test_metrics.json").read_text())
    assert chart.extra["n"] == 500
    assert chart.extra["rmse"] == pytest.approx(test["test.ink.rmse"], rel=1e-4)
    assert chart.extra["mae"] == pytest.approx(test["test.ink.mae"], rel=1e-4)


class Guided(nn.Module):
    """Reference guided activation: its own derivative, then only positive gradient passes."""

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, act):
            ctx.save_for_backward(x)
            ctx.act = act
            return act(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                (through,) = torch.autograd.grad(ctx.act(leaf), leaf, grad)
            return through.clamp(min=0), None

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.Fn.apply(x, self.act)


def swap_activations(model: nn.Module, old: type, make) -> nn.Module:
    """A copy of `model` with every `old` activation replaced by make(); weights kept."""
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if type(child) is old:
                setattr(m, child_name, make())
    return model


def manual_guided(model: nn.Module, layer_name: str, channel: int, x: torch.Tensor, act):
    ref = swap_activations(model, act, lambda: Guided(act()))
    layer = dict(ref.backbone.named_modules())[layer_name]
    out = {}
    handle = layer.register_forward_hook(lambda m, i, y: out.__setitem__("y", y))
    x = x.detach().clone().requires_grad_(True)
    try:
        ref.eval().forward_features(x)
    finally:
        handle.remove()
    out["y"][:, channel].amax(dim=(1, 2)).sum().backward()
    return x.grad


@pytest.mark.parametrize("act", [nn.ReLU, nn.Mish, nn.GELU, nn.LeakyReLU], ids=lambda a: a.__name__)
def test_guided_backprop_equals_a_manual_guided_computation(view, act):
    """Captum's rule on ReLU, and the same rule on the activations Captum leaves alone."""
    model = swap_activations(view.model, nn.ReLU, act)  # trained weights, another activation
    name, conv = last_conv(model)
    x = view.batch("test", torch.tensor([3, 7]))
    for channel in (0, 5):
        ours = guided_gradient(model, conv, channel, x)
        ref = manual_guided(model, name, channel, x, act)
        assert ours.shape == x.shape
        assert ours.abs().sum() > 0
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    # and it is not the plain gradient: the guided rule really changed something
    plain = x.detach().clone().requires_grad_(True)
    out = {}
    with forward_hooks({"c": conv}, lambda n, m, y: out.__setitem__("y", y)):
        model.eval().forward_features(plain)
    out["y"][:, 0].amax(dim=(1, 2)).sum().backward()
    assert not torch.allclose(plain.grad, guided_gradient(model, conv, 0, x))
    # one channel per image: each image gets its own channel's map (same batch, same kernels:
    # at ReLU's exact ties another batch size may route a max elsewhere)
    both = guided_gradient(model, conv, torch.tensor([0, 5]), x)
    torch.testing.assert_close(both[0], guided_gradient(model, conv, 0, x)[0])
    torch.testing.assert_close(both[1], guided_gradient(model, conv, 5, x)[1])
    assert no_hooks_left(model)


def test_guided_backprop_figure_picks_the_most_exciting_image(view):
    (chart,) = make_charts(view, "guided-backprop", neurons=4)
    assert len(chart.extra["channels"]) == 4
    _, conv = last_conv(view.model)
    x = view.batch("test", torch.arange(500))
    with autocast_for(view.device, view.precision)():  # the precision the figure predicts in
        acts = capture(view.model, {"c": conv}, x)["c"]
    peaks = acts.amax(dim=(2, 3))  # (N, C)
    for c, i in zip(chart.extra["channels"], chart.extra["images"], strict=True):
        assert peaks[:, c].argmax().item() == i


def test_dead_units_counts_units_forced_dead(view):
    model = copy.deepcopy(view.model)
    batches = list(view.batches("val"))
    before = alive_units(model, batches)
    # Force units dead: BN of block 1 outputs -1 for channels 0-2 -> ReLU never fires;
    # hidden units 0-9 of the cls head get weight 0, bias -1.
    bn = model.backbone.blocks[0][1]
    bn.weight.data[:3], bn.bias.data[:3] = 0.0, -1.0
    middle = alive_units(model, batches)  # later layers see different features now
    lin = model.heads["cls"][0]
    lin.weight.data[:10], lin.bias.data[:10] = 0.0, -1.0
    after = alive_units(model, batches)
    block_act, head_act = "backbone.blocks.0.2", "heads.cls.1"
    assert set(after) == set(before) and {block_act, head_act} <= set(after)
    expect_block = before[block_act].clone()
    expect_block[:3] = False
    expect_head = middle[head_act].clone()
    expect_head[:10] = False
    assert torch.equal(after[block_act], expect_block)
    assert torch.equal(after[head_act], expect_head)
    assert (~after[head_act]).sum() >= 10
    assert no_hooks_left(model)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_a_units_largest_output_in_either_memory_layout(layout):
    y = torch.randn(3, 5, 7, 4).to(memory_format=layout)
    y[:, 2] = -1.0  # a dead unit
    y[1, 4, 6, 3] = 9.0  # one unit's peak, at its last position
    expected = y.transpose(0, 1).reshape(5, -1).amax(1)
    assert torch.equal(unit_max(y), expected) and unit_max(y)[2] == -1 and unit_max(y)[4] == 9
    assert torch.equal(unit_max(y[:, :, 0, 0]), y[:, :, 0, 0].amax(0))  # a dense layer's
    assert torch.equal(unit_max(torch.tensor([-2.0, 3.0, -1.0])), torch.tensor([3.0]))  # one


# --------------------------------------------------- hooks: removed, in-place, reuse


def test_hooks_are_removed_after_an_exception(view):
    blocks = feature_blocks(view.model)
    with pytest.raises(RuntimeError):
        capture(view.model, blocks, torch.zeros(2, 5, 28, 28))  # wrong channel count
    assert no_hooks_left(view.model)
    with pytest.raises(ValueError), forward_hooks(blocks, lambda n, m, y: None):
        raise ValueError("inside the block")
    assert no_hooks_left(view.model)

    def boom(name, module, y):
        raise KeyError(name)

    with pytest.raises(KeyError), forward_hooks(blocks, boom):
        view.model.forward_features(view.batch("test", torch.tensor([0])))
    assert no_hooks_left(view.model)


def test_inplace_activations_are_switched_off_and_restored(view):
    model = copy.deepcopy(view.model)
    batches = list(view.batches("val"))
    reference = alive_units(model, batches)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    for m in relus:
        m.inplace = True
    model.train()
    with analysis_mode(model):
        assert not model.training and not any(m.inplace for m in relus)
    assert model.training and all(m.inplace for m in relus)
    assert {k: v.tolist() for k, v in alive_units(model, batches).items()} == {
        k: v.tolist() for k, v in reference.items()
    }


def test_a_reused_activation_module_is_refused():
    act = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(1, 4, 3), act, nn.Conv2d(4, 4, 3), act)
    predictions = recorded(model, [(torch.randn(2, 1, 8, 8), {})])
    assert predictions.reused == {"1": 2}
    with pytest.raises(CnnlabError, match="module '1' runs 2 times per forward.*reused"):
        dead_table(predictions)
    assert no_hooks_left(model)


def test_units_are_those_of_each_image_as_it_is_not_of_its_other_views():
    """The test pass averages test-time views; the units count the first, the image itself."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
    model[0].weight.data[:, 0, 0, 0] = torch.tensor([1.0, -1.0])  # unit 1 fires on -x only
    model[0].bias.data.zero_()
    x = torch.rand(3, 1, 4, 4) + 0.1  # positive: unit 1 never fires on the image itself

    def two_views(m: nn.Module, images: torch.Tensor):
        return {"out": (m(images) + m(-images)) / 2}

    both = recorded(model, [(x, {}), (x, {})], two_views)
    assert list(both.alive) == ["1"] and torch.equal(both.alive["1"], torch.tensor([True, False]))
    assert both.reused == {}  # two views are two forwards, not a reused module
    assert torch.equal(recorded(model, [(-x, {})]).alive["1"], torch.tensor([False, True]))


def test_the_dead_units_are_counted_over_the_test_set_by_the_shared_pass(view):
    model = copy.deepcopy(view.model)
    seen: dict[str, torch.Tensor] = {}

    def record(name, module, y):
        fired = (y > 0).transpose(0, 1).flatten(1).any(1)
        seen[name] = seen[name] | fired if name in seen else fired

    hooks = forward_hooks(activation_modules(model), record)
    autocast = autocast_for(view.device, view.precision)()
    with torch.inference_mode(), analysis_mode(model), hooks, autocast:
        for x, _ in view.batches("test"):
            model(x)
    assert view.test_predictions.alive  # the pass every figure shares, made before the figure
    forwards = []
    handle = view.model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        (chart,) = make_charts(view, "dead-units")
    finally:
        handle.remove()
    assert not forwards  # no pass of its own
    dead = sum(int((~a).sum()) for a in seen.values())
    assert chart.extra == {"dead": dead, "total": sum(len(a) for a in seen.values())}
    assert (
        f"{dead} of " in chart.caption and f"on the {len(view.split('test'))} test" in chart.caption
    )
    assert "still passes a gradient" not in chart.caption  # ReLU's units: dead indeed


def test_units_of_a_smooth_activation_that_never_fire_are_not_called_unable_to_learn(
    view, monkeypatch
):
    """A walkthrough's Mish network had "70 of 352" dead units, read as ReLU's dead ones."""
    module = sys.modules["cnnlab.viz.dead_units"]  # the package's name is the figure function
    monkeypatch.setattr(module, "activation_layers", lambda model: {"a": nn.Mish()})
    (chart,) = make_charts(view, "dead-units")
    assert chart.caption.endswith(
        " Under Mish a unit never above 0 still passes a gradient (its slope below 0 is not 0, "
        "as ReLU's is): it never fired, but it can still learn."
    )


# ----------------------------------------------------------------- shapes and options


def test_feature_maps_show_every_block(view):
    charts = make_charts(view, "feature-maps", images=2, channels=3)
    assert [c.key for c in charts] == ["feature_maps_1", "feature_maps_2"]
    shapes = charts[0].extra["shapes"]
    assert list(shapes) == ["block 1", "block 2", "block 3"]
    assert [s[1:] for s in shapes.values()] == [(8, 14, 14), (16, 7, 7), (32, 3, 3)]
    assert charts[0].extra["grid"] == (4, 3)  # (input row + 3 blocks) x 3 channels


def test_tile_sides_avoid_resampling_where_they_can():
    assert side_for(224, 200) == 224  # close enough: the image's own pixels
    assert side_for(224, 112) == 112  # half, so its 56, 28, 14 px block maps scale by 2, 4, 8
    assert side_for(28, 200) == 196 and side_for(3, 90) == 90  # whole multiples
    assert side_for(224, 150) == 150  # neither is close: the target, smoothed


def test_fit_keeps_the_aspect_and_enlarges_small_images_as_squares():
    filt = rgb(torch.rand(3, 3, 3))
    big = fit(filt, 90)
    assert big.shape == (90, 90, 3)
    assert (big[:30, :30] == filt[0, 0]).all() and (big[60:, 30:60] == filt[2, 1]).all()
    wide = fit(rgb(torch.rand(3, 20, 40)), 100)
    assert wide.shape == (50, 100, 3)
    gray = rgb(torch.full((1, 4, 4), 0.5))
    assert gray.shape == (4, 4, 3) and (gray == 128).all()  # one channel shown in gray


def test_a_mosaic_places_each_tile_with_its_frame_and_texts():
    red = rgb(torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 8, 8))
    tiles = [[Tile(red, "a", "wrong", "#0000ff", frame=2), None], [None, Tile(red, "b")]]
    fig = mosaic(tiles, 16, "title", ["row 1", "row 2"])
    canvas = fig.axes[0].images[0].get_array()
    assert fig.get_size_inches() * DPI == pytest.approx(canvas.shape[1::-1])
    reds = (canvas == [255, 0, 0]).all(-1)
    assert reds.sum() == 2 * 16 * 16  # two tiles, each 8 px enlarged to 16
    assert (canvas == [0, 0, 255]).all(-1).sum() == 20 * 20 - 16 * 16  # the 2 px frame
    ys, xs = reds.nonzero()
    assert xs.min() < canvas.shape[1] / 2 < xs.max() and ys.min() < canvas.shape[0] / 2 < ys.max()
    texts = [t.get_text() for t in fig.texts]
    assert sorted(texts) == sorted(["title", "row 1", "row 2", "a", "wrong", "b"])
    assert [t.get_color() for t in fig.texts if t.get_text() == "wrong"] == ["#0000ff"]
    spread = colored(torch.arange(4.0).view(2, 2), "gray")
    assert spread[0, 0].tolist() == [0, 0, 0] and spread[1, 1].tolist() == [255, 255, 255]


def test_a_text_wider_than_its_tile_wraps_to_it():
    """A caption of several tags broke out of its tile over the next one's: it wraps, at a
    space first, and a text that fits stays one line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    grey = rgb(torch.full((3, 8, 8), 0.5))
    long = "disc+square+triangle → disc+square+triangle"
    fig = mosaic([[Tile(grey, label=long), Tile(grey, label="disc → disc")]], 160)
    renderer = FigureCanvasAgg(fig).get_renderer()
    texts = {t.get_text(): t.get_window_extent(renderer).width for t in fig.texts}
    assert texts.keys() == {"disc+square+triangle →\ndisc+square+triangle", "disc → disc"}
    assert max(texts.values()) <= 160 + GAP
    assert wrap("a,b,c,d,e,f,g,h,i,j,k,l,m,n", 40, 7).count("\n") >= 2  # no space: at a comma
    assert wrap("abcdefghijklmnopqrstuvwxyz", 40, 7) == "abcdefghijklmnopqrstuvwxyz"  # whole


def test_confident_errors_are_the_surest_wrong_ones_at_the_temperature():
    logits = torch.tensor([[4.0, 0.0], [0.0, 3.0], [0.0, 1.0], [2.5, 0.0], [0.0, 9.0]])
    truth = torch.tensor([1, 0, 0, 1, 1])  # the last is right, however sure
    index, said, sure, true_p = confident_errors(logits, truth, 1.0, 3)
    assert index.tolist() == [0, 1, 3] and said.tolist() == [0, 1, 0]
    assert torch.allclose(sure + true_p, torch.ones(3, dtype=torch.float64))
    assert torch.isclose(sure[0], torch.tensor(4.0, dtype=torch.float64).sigmoid())
    every, _, cooler, _ = confident_errors(logits, truth, 2.0, 5)
    assert every.tolist() == [0, 1, 3, 2] and cooler[0] < sure[0]  # T > 1: less sure


def test_mistakes_shows_each_tasks_worst_test_images(view):
    """The classification's surest wrong answers, the regression's largest errors."""
    cls, ink = make_charts(view, "mistakes", images=5)
    preds, rows = view.test_predictions, view.test_predictions.rows["cls"]
    wrong = (preds.pred["cls"] != preds.truth["cls"]).nonzero().squeeze(1)
    index = cls.extra["index"]
    assert cls.key == "mistakes_cls" and len(index) == 5 and set(index) <= set(wrong.tolist())
    sure = (rows.logits.double() / view.tasks["cls"].temperature).softmax(1).amax(1)
    assert sure[index].tolist() == sorted(sure[index].tolist(), reverse=True)
    assert sure[index[-1]] >= sure[wrong].sort(descending=True).values[4] - 1e-12
    assert f"{len(wrong):,} of {len(preds.pred['cls']):,} test images are wrong" in cls.caption
    error = (preds.pred["ink"] - preds.truth["ink"]).abs()
    assert ink.key == "mistakes_ink" and ink.extra["index"] == error.topk(5).indices.tolist()


def test_filter_grids():
    assert grid_shape(64) == (8, 8) and grid_shape(32) == (6, 6) and grid_shape(8) == (3, 3)
    rgb = _filter_images(torch.randn(64, 3, 5, 5))
    assert rgb.shape == (64, 3, 5, 5) and rgb.min() == 0 and rgb.amax(dim=(1, 2, 3)).eq(1).all()
    gray = _filter_images(torch.randn(16, 8, 3, 3))  # deeper inputs: mean over channels
    assert gray.shape == (16, 1, 3, 3)


def test_predictions_grid(view):
    (chart,) = make_charts(view, "predictions", grid="4x5")
    assert len(chart.extra["index"]) == 20 and len(set(chart.extra["index"])) == 20
    title = max((t.get_text() for t in chart.figure.texts), key=len)  # how each task reads
    assert title.splitlines()[1:] == [f"{n}: {t.legend}" for n, t in view.tasks.items()]
    assert parse_grid("10x3") == (10, 3) and parse_grid(" 2 X 7 ") == (2, 7)
    for bad in ("10x", "x3", "0x3", "10*3", "", "100x1"):
        with pytest.raises(CnnlabError, match="ROWSxCOLS"):
            parse_grid(bad)


def cli(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """`cnnlab ARGS` in this process (no second torch import): (status, stdout, stderr)."""
    from cnnlab.cli import main

    monkeypatch.setattr("sys.argv", ["cnnlab", *args])
    try:
        main()
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    out = capsys.readouterr()
    return status, out.out, out.err


def test_viz_cli_draws_pngs_and_rejects_bad_input(report_run, tmp_path, capsys, monkeypatch):
    run = str(report_run[0])
    out = run_cli(
        "viz", run, "feature-maps", "--images", "2", "--channels", "3", "--out", str(tmp_path)
    )  # one real subprocess, as a user types it
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "feature_maps_1.png",
        "feature_maps_2.png",
    ]
    cases = {
        ("viz", run, "heatmap"): "figure 'heatmap' is unknown; choose one of: curves, ",
        ("viz", run, "confsion"): "figure 'confsion' is unknown (did you mean 'confusion'?); ",
        ("viz", run, "gradcam"): "figure 'gradcam' is unknown (did you mean 'attributions'? its "
        "description names it); ",  # Grad-CAM is one of its maps
        ("viz", run, "predictions", "--grid", "10x"): "expected ROWSxCOLS",
        ("viz", run, "filters", "--grid", "2x2"): "--grid does not apply to filters",
        ("viz", run, "feature-maps", "--channels", "0"): "--channels 0: choose 1 to 64",
        ("viz", run, "attributions", "--ig-steps", "0"): "--ig-steps 0: choose 1 to 256",
        ("viz", run, "curves", "--ig-steps", "3"): "--ig-steps does not apply to curves",
        ("viz", run, "predictions", "--steps", "3"): "its options: --grid",
        ("viz", str(tmp_path), "filters"): "is not a run folder",
        ("viz", run, "pixels"): "pixels draws nothing for this run (its tasks: cls (",
        ("viz", run, "landscape"): f"landscape draws nothing for this run yet; compute it "
        f"first: cnnlab landscape {run} (then viz or report draw it)",
        ("report", str(tmp_path / "nope")): "is not a folder",
    }
    for args, message in cases.items():
        status, _, err = cli(capsys, monkeypatch, *args)
        assert status == 2, (args, err)
        assert message in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
    status, stdout, _ = cli(capsys, monkeypatch, "figures")
    assert status == 0 and "guided-backprop" in stdout and "dead-units" in stdout
    sanity = tmp_path / "sanity"
    status, _, err = cli(
        capsys, monkeypatch, "viz", run, "sanity", "--steps", "2", "--out", str(sanity)
    )
    assert status == 0, err
    assert sorted(p.name for p in sanity.iterdir()) == ["sanity.png", "sanity_maps.png"]


def test_an_unknown_figure_says_what_the_run_imported_to_draw_it(tmp_path):
    from cnnlab.viz import get_figure

    recorded = [{"kind": "figure", "name": "class-recall", "import": "my_figures.py"}]
    (tmp_path / "env.json").write_text(json.dumps({"components": recorded}))
    with pytest.raises(CnnlabError) as err:
        get_figure("class-recall", tmp_path)
    assert str(err.value).endswith(
        "; or, for one of your own: import the module that registers it "
        "(cnnlab --import my_figures.py ...)"
    )
    with pytest.raises(CnnlabError) as err:
        get_figure("heatmap", tmp_path)  # nothing recorded: how to bring one's own
    assert str(err.value).endswith(
        "; or, for one of your own: import the module that registers it (cnnlab --import "
        "MODULE ...)"
    )


def test_a_figure_of_ones_own_takes_its_options_from_the_command_line(
    report_run, tmp_path, capsys, monkeypatch
):
    """`cnnlab viz RUN NAME --bins 5`: each option typed as the figure's keyword default."""
    given = []

    def bars(view: RunView, bins: int = 3, log: bool = False, label: str = "x") -> list[Chart]:
        given.append({"bins": bins, "log": log, "label": label})
        return make_charts(view, "curves")

    run, out = str(report_run[0]), str(tmp_path)
    with registration_scope():
        register_figure("bars")(bars)
        args = ("viz", run, "bars", "--bins", "5", "--log=yes", "--out", out)
        status, stdout, err = cli(capsys, monkeypatch, *args)
        assert status == 0, err
        assert given == [{"bins": 5, "log": True, "label": "x"}]
        assert stdout.strip().endswith("curves.png")
        cases = {
            ("--bins", "five"): "--bins: 'five' is not an int",
            ("--log", "maybe"): "--log: 'maybe' is not true or false",
            ("--bin", "5"): "--bin does not apply to bars; its options: --bins, --log, --label",
            ("--bins",): "--bins needs a value",
            ("stray",): "viz: unexpected 'stray'; a figure's options are --NAME VALUE",
        }
        for extra, message in cases.items():
            status, _, err = cli(capsys, monkeypatch, "viz", run, "bars", *extra)
            assert status == 2 and err.strip() == f"error: {message}", err
    assert len(given) == 1


def test_a_figure_of_ones_own_that_fails_is_a_warning_and_the_report_goes_on(
    view, tmp_path, capsys
):
    def broken(view: RunView) -> list[Chart]:
        return [].plot()  # the user's bug

    with registration_scope(), ThreadPoolExecutor(1) as pool:
        register_figure("broken")(broken)
        section = _section(view, "broken", "Broken", ["broken", "curves"], tmp_path, pool)
        then = f"cnnlab{import_flags()} viz {view.run.path} broken"  # with what drew it
    said = "figure 'broken' failed (AttributeError: 'list' object has no attribute 'plot')"
    assert section.missing == "broken failed: AttributeError: 'list' object has no attribute 'plot'"
    assert "curves" in [b.key for b in section.blocks]  # the figures after it still drawn
    err = capsys.readouterr().err
    assert f"warning: {said}; the report shows the rest. Its traceback: {then}\n" in err


def test_a_figure_with_nothing_to_show_says_why(view, monkeypatch):
    """A run that got every test image right has no mistake to show: one line says so (the
    report shows it in the section), where an empty figure said nothing."""
    with pytest.raises(CnnlabError, match=r"^pixels draws nothing for this run \(its tasks: cls"):
        drawn(view, "pixels", make_charts(view, "pixels"))
    predictions = view.test_predictions
    logits = predictions.rows["cls"].logits
    said = logits.argmax(1)  # as if every label were what the model says
    perfect = dataclasses.replace(
        predictions,
        truth={**predictions.truth, "cls": said},
        pred={**predictions.pred, "cls": said},
        rows={**predictions.rows, "cls": Rows(logits, said)},
    )
    monkeypatch.setitem(view.__dict__, "test_predictions", perfect)
    monkeypatch.setattr(view, "tasks_with", lambda figure: ["cls"])
    with pytest.raises(CnnlabError) as err:
        make_charts(view, "mistakes")
    assert str(err.value) == (
        f"mistakes: every one of the {len(view.split('test'))} test images is right for cls; "
        "no mistake to show"
    )


def test_images_are_not_explained_by_a_run_that_answers_per_pixel(capsys):
    recipe = load_recipe(ROOT / "cnnlab" / "recipes" / "table_example.yaml")
    every = fitted_tasks(recipe)
    tasks = {n: t for n, t in every.items() if "pixels" in t.figures}
    assert list(tasks) == ["mask"]
    with pytest.raises(CnnlabError, match="every task of this run answers per pixel"):
        explain(SimpleNamespace(tasks=tasks), torch.zeros(1, 3, 8, 8))
    # a run of a mask and numbers: the mask's task is said to be left out, not dropped unsaid
    assert explained_tasks(every, None) == ["kind", "area"]
    assert capsys.readouterr().err == (
        "explain: mask answers per pixel, not explained (a map explains one number per image); "
        "look at its predicted masks instead (predict, the pixels figure)\n"
    )
    assert explained_tasks(every, "area") == ["area"]  # one task's maps alone
    with pytest.raises(CnnlabError, match=r"^explain: mask answers per pixel, and a map "):
        explain(SimpleNamespace(tasks=every), torch.zeros(1, 3, 8, 8), task="mask")
    with pytest.raises(CnnlabError) as err:
        explain(SimpleNamespace(tasks=every), torch.zeros(1, 3, 8, 8), task="aera")
    assert str(err.value) == (
        "explain: no task 'aera' (did you mean 'area'?); the run's: kind, area, mask"
    )


def test_a_run_without_checkpoint_is_one_clear_error(report_run, tmp_path):
    (tmp_path / "recipe.yaml").write_text((report_run[0] / "recipe.yaml").read_text())
    with pytest.raises(CnnlabError) as err:
        RunView(tmp_path)
    assert str(err.value) == (
        f"figures and predictions: {tmp_path} has no best weights (checkpoints/best.pt): it "
        "has not finished an epoch; train it again"
    )
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")  # stopped within its first epoch
    with pytest.raises(CnnlabError, match=rf"epoch; continue it: cnnlab train --resume {tmp_path}"):
        RunView(tmp_path)


def test_figures_never_touch_training_state(report_run, tmp_path):
    run: Path = report_run[0]
    watched = [
        run / "checkpoints" / "last.pt",
        run / "checkpoints" / "best.pt",
        run / "metrics.jsonl",
        run / "recipe.yaml",
        run / "status.json",
    ]
    before = {p: p.read_bytes() for p in watched}
    view = RunView(run)
    for name in ("filters", "dead-units", "guided-backprop"):
        make_charts(view, name)
    assert {p: p.read_bytes() for p in watched} == before


def test_figures_of_a_run_whose_metrics_end_in_a_torn_line(report_run, tmp_path):
    """A full disk or a copy cut short: the good epochs are drawn, the torn line is named."""
    run = Path(shutil.copytree(report_run[0], tmp_path / "run"))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train.loss": 0.4')
    out = run_cli("viz", str(run), "curves", "--out", str(tmp_path / "figs"))
    assert out.returncode == 0, out.stderr
    assert "skipped unreadable line(s) 3" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "figs" / "curves.png").stat().st_size > 10_000


def test_a_run_is_rebuilt_with_the_input_statistics_it_trained_with(report_run, monkeypatch):
    """A report, an evaluation or a resume take the input's mean and std from the checkpoint:
    measuring them again read the whole training set once more (minutes for a set larger
    than memory), and gives the same numbers."""
    run = RunFolder.open(report_run[0])
    saved = load_checkpoint(run.best_path, "cpu")
    measured = build(run.recipe()).splits  # a new run measures them
    assert measured.mean.tolist() == saved["normalize"]["mean"]
    assert measured.std.tolist() == saved["normalize"]["std"]

    def measure(*args, **kwargs):
        raise AssertionError("the statistics were measured again")

    monkeypatch.setattr(batches, "channel_stats", measure)
    view = RunView(report_run[0])
    torch.testing.assert_close(view.splits.mean, measured.mean, rtol=0, atol=0)
    torch.testing.assert_close(view.splits.std, measured.std, rtol=0, atol=0)
    old = {k: v for k, v in saved.items() if k != "normalize"}  # a checkpoint from before
    with pytest.raises(AssertionError, match="measured again"):
        build(run.recipe(), old, weights="judged")


EXAMPLE = ROOT / "examples" / "custom_figure.py"


def test_custom_figure_draws_from_the_command_line_and_python(report_run, tmp_path):
    """examples/custom_figure.py, imported as the docs say: `cnnlab viz` draws it; its
    numbers are the run's own test answers."""
    run = report_run[0]
    out = run_cli("--import", str(EXAMPLE), "viz", str(run), "confidence", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "confidence_cls.png")]  # no ink: a regression
    with registration_scope():
        import_modules([str(EXAMPLE)])
        (chart,) = make_charts(RunView(run), "confidence", bins=5)
    tested = json.loads((run / "test_metrics.json").read_text())["test.cls.accuracy"]
    answers = int(chart.caption.split(" of ")[1].split()[0].replace(",", ""))
    assert chart.extra["right"] / answers == pytest.approx(tested, abs=1e-6)
    assert len(chart.figure.axes[0].patches) == 2 * 5  # two stacked sets of 5 bins


def test_a_chart_is_written_as_savefig_writes_it(view, tmp_path):
    """The report draws a chart, then compresses its PNG while it draws the next: the file is
    the one `savefig` writes, byte for byte (fresh charts each: a second draw of one figure
    may lay it out a pixel apart)."""
    import matplotlib

    from cnnlab.viz.base import PNG, RC

    for name in ("predictions", "confusion", "curves"):
        (a, *_), (b, *_) = make_charts(view, name), make_charts(view, name)
        with matplotlib.rc_context(RC):
            a.figure.savefig(tmp_path / "savefig.png", **PNG)
        canvas = b.figure.canvas
        assert b.save(tmp_path).read_bytes() == (tmp_path / "savefig.png").read_bytes(), name
        assert b.figure.canvas is canvas  # a figure of one's own keeps its canvas


def test_one_tasks_loss_is_drawn_once_as_the_total():
    """A single task's loss is the total loss (times its weight): a panel of its own drew
    the same curve twice."""
    from cnnlab.viz.curves import _panels

    task = SimpleNamespace(metrics=("loss", "accuracy"))
    one = _panels(SimpleNamespace(tasks={"cls": task}))
    assert one == [("total loss", ["loss"]), ("cls: metrics", ["cls.accuracy"])]
    two = _panels(SimpleNamespace(tasks={"cls": task, "ink": SimpleNamespace(metrics=("loss",))}))
    assert [title for title, _ in two] == ["total loss", "cls: loss", "cls: metrics", "ink: loss"]
