"""Test-time views: which views there are, that a view's answer is mapped back through the
source's label maps (checked against the picture, not against those maps), and a run."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch
from torch import nn

from cnnlab.config import HeadConfig
from cnnlab.data.fashion_mnist import FashionMNISTConfig
from cnnlab.data.gsn import CLASS_NAMES, COUNT_NAMES, GSNConfig, class_targets, pair_class
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import evaluate_run
from cnnlab.experiment import train
from cnnlab.precision import autocast_for
from cnnlab.tasks import TargetSpec, task_class
from cnnlab.tasks.classification import ClassificationConfig
from cnnlab.tasks.regression import RegressionConfig, RegressionHead
from cnnlab.tta import View, ViewAverage, distinct_views
from cnnlab.viz.features import capture
from cnnlab.viz.hooks import last_conv
from cnnlab.viz.run_view import RunView
from tests.test_augment import TRIANGLES, pointing, triangles


def test_views_are_the_distinct_symmetries_and_undo_inverts_apply():
    assert len(distinct_views(["hflip", "vflip", "rot90"])) == 8
    assert len(distinct_views(["hflip", "rot90"])) == 8
    assert len(distinct_views(["hflip", "vflip"])) == 4
    assert distinct_views(["hflip"]) == [View(), View(hflip=True)]
    x = torch.randn(2, 3, 5, 5)
    for view in distinct_views(["hflip", "vflip", "rot90"]):
        assert torch.equal(view.undo(view.apply(x)), x)


def test_shifted_views_move_the_image_one_pixel_and_uncover_black():
    assert len(distinct_views(["hflip", "translate"])) == 10
    x = torch.rand(2, 3, 6, 6)
    black = torch.tensor([-1.0, -2.0, -3.0])
    down = View(shift=(1, 0)).apply(x, black)
    assert torch.equal(down[:, :, 1:], x[:, :, :-1])
    assert torch.equal(down[:, :, 0], black.view(1, 3, 1).expand(2, 3, 6))
    left = View(shift=(0, -1)).apply(x.contiguous(memory_format=torch.channels_last), black)
    assert torch.equal(left[..., :-1], x[..., 1:]) and (left[..., -1] == black.view(1, 3, 1)).all()
    assert left.is_contiguous(memory_format=torch.channels_last)  # the model's layout kept
    for view in distinct_views(["hflip", "translate"]):  # undo: back in place, edge repeated
        back = view.undo(view.apply(x, black))
        assert torch.equal(back[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1])
    with pytest.raises(CnnlabError, match="translate is not declared by gsn"):
        ViewAverage(["translate"], gsn_tasks(), GSNConfig(root="x"), (28, 28))


def test_class_targets_list_every_class_with_its_counts():
    t = class_targets()
    assert torch.equal(pair_class(t["counts"]), t["pair"])
    assert t["counts"].sum(1).eq(10).all() and len(t["pair"]) == len(CLASS_NAMES)


class Oracle(nn.Module):
    """Answers from the picture alone: a lone triangle's direction (read from its pixels)
    gives "squares 9 + that triangle 1" as a one-hot class and as counts."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleDict(
            {"cls": nn.Identity(), "cnt": RegressionHead(1, HeadConfig(), outputs=6)}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        counts = torch.zeros(x.shape[0], 6)
        counts[:, 0] = 9
        for i, img in enumerate(x):
            counts[i, 2 + TRIANGLES.index(pointing(img))] = 1
        logits = torch.nn.functional.one_hot(pair_class(counts), len(CLASS_NAMES)) * 20.0
        return {"cls": logits, "cnt": counts}


def gsn_tasks() -> dict:
    cls_cfg, cnt_cfg = ClassificationConfig(target="pair"), RegressionConfig(target="counts")
    tasks = {"cls": task_class(cls_cfg)("cls", cls_cfg), "cnt": task_class(cnt_cfg)("cnt", cnt_cfg)}
    tasks["cls"].fit(TargetSpec(classes=CLASS_NAMES))
    tasks["cnt"].fit(TargetSpec(components=COUNT_NAMES))
    return tasks


def test_every_view_of_gsn_maps_back_to_the_images_own_labels():
    x, truth = triangles()
    oracle = Oracle()
    views = ViewAverage(["hflip", "vflip", "rot90"], gsn_tasks(), GSNConfig(root="x"), (28, 28))
    assert len(views.views) == 8
    out = views(oracle, x)
    single = oracle(x)["cls"].softmax(1)
    # all eight views agree once mapped back: the average is the single view's answer
    torch.testing.assert_close(out["cls"].exp(), single)
    assert torch.equal(out["cls"].argmax(1), truth["pair"])
    torch.testing.assert_close(out["cnt"], truth["counts"])
    # and without the mapping, the views would disagree: a turned triangle is another class
    turned = oracle(View(turns=1).apply(x))["cls"].argmax(1)
    assert not torch.equal(turned, truth["pair"])


def test_undeclared_views_and_sources_that_cannot_map_classes_are_refused():
    class NoClassTargets(GSNConfig):
        class_targets: ClassVar[dict] = {}

    with pytest.raises(CnnlabError, match="cannot say where a view sends each class of 'pair'"):
        ViewAverage(["hflip"], gsn_tasks(), NoClassTargets(root="x"), (28, 28))
    with pytest.raises(CnnlabError, match="rot90 needs square images"):
        ViewAverage(["rot90"], gsn_tasks(), GSNConfig(root="x"), (28, 30))

    class Undeclared(FashionMNISTConfig):
        label_maps: ClassVar[dict] = {"hflip": None, "translate": None}

    with pytest.raises(CnnlabError, match="vflip is not declared by fashion_mnist"):
        ViewAverage(["vflip"], {}, Undeclared(), (28, 28))


def test_a_run_with_views_is_tested_and_evaluated_with_them(tiny):
    plain = train(tiny("train.epochs=1", "data.train_subset=2000"))
    viewed = train(tiny("train.epochs=1", "data.train_subset=2000", "train.tta=[hflip,translate]"))
    a, b = (json.loads(r.test_path.read_text()) for r in (plain, viewed))
    assert a["test.cls.accuracy"] != b["test.cls.accuracy"]  # same weights, ten views averaged
    assert evaluate_run(viewed.path) == b
    shown = RunView(viewed.path).test_predictions  # the figures show what the test measured
    accuracy = (shown.pred["cls"] == shown.truth["cls"]).float().mean().item()
    assert accuracy == pytest.approx(b["test.cls.accuracy"], abs=1e-6)
    assert len(shown.peaks) == len(shown.truth["cls"])  # one row of peaks per image
    # the peaks are those of the image as it is (the first view), not of a shifted mirror
    view = RunView(viewed.path)
    x, _ = next(iter(view.batches("test")))
    with autocast_for(view.device, view.precision)():
        first = capture(view.model, {"conv": last_conv(view.model)[1]}, x)["conv"]
    assert torch.equal(shown.peaks[: len(x)], first.float().amax(dim=(2, 3)))
