"""ResNet(n) and PlainNet(n): seed 004's parameter counts, option-A shortcuts, stages."""

from __future__ import annotations

import pytest
import torch

from cnnlab.experiment import train
from cnnlab.models import create_model
from cnnlab.recipe import load_recipe
from tests.conftest import DEMO, fitted_tasks, run_cli

LINEAR_HEAD = ["tasks.ink=null", "tasks.cls.head={hidden: [], dropout: 0}"]
LINEAR_HEAD.append("train.monitor=val.cls.accuracy")


def build(backbone: str, n: int, shape=(3, 32, 32)):
    recipe = load_recipe(DEMO, [f"model={{backbone: {backbone}, n: {n}}}", *LINEAR_HEAD])
    return create_model(recipe.model, shape[0], shape[1:], fitted_tasks(recipe))


@pytest.mark.parametrize("backbone", ["resnet", "plainnet"])
@pytest.mark.parametrize(("n", "params"), [(3, 270_410), (9, 855_050), (18, 1_732_010)])
def test_parameter_counts_are_seed_004s(backbone, n, params):
    """Seed 004's Tables 1 and 2: depth 20 / 56 / 110, CIFAR-10 input, a linear 10-way head."""
    model = build(backbone, n)
    assert sum(p.numel() for p in model.parameters()) == params
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 * n + 1  # + the output layer: depth 6n + 2


def test_shortcuts_carry_the_input_and_plainnet_has_none():
    """With every conv weight and bias zero, a block's residual branch gives 0: ResNet
    passes the (subsampled, zero-padded) input on, PlainNet passes nothing."""
    x = torch.rand(2, 16, 8, 8)
    for backbone, expect_identity in (("resnet", True), ("plainnet", False)):
        model = build(backbone, 1)
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.zeros_(m.weight)
                torch.nn.init.zeros_(m.bias)
        model.eval()
        stage2 = model.backbone.stages[1][0]  # 16 -> 32 channels, stride 2
        out = stage2(x)  # (2, 32, 4, 4)
        assert out.shape == (2, 32, 4, 4)
        expected = torch.zeros_like(out)
        if expect_identity:
            expected[:, 8:24] = x[:, :, ::2, ::2]  # 8 zero channels on each side
        assert torch.equal(out, expected), backbone


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_feature_info_matches_the_stage_maps(shape):
    backbone = build("resnet", 1, shape).backbone
    maps = backbone.forward_intermediates(torch.zeros(2, *shape))
    assert len(maps) == len(backbone.feature_info) == 3
    for info, fmap in zip(backbone.feature_info, maps, strict=True):
        side = -(-shape[1] // info.stride)  # stride 2 with padding 1 rounds up: 28 -> 14 -> 7
        assert fmap.shape == (2, info.channels, side, side), info
    assert backbone(torch.zeros(2, *shape)).shape == (2, backbone.num_features) == (2, 64)


def test_a_resnet_trains_on_fashion_mnist(tiny):
    run = train(tiny("model={backbone: resnet, n: 1}", "train.epochs=2"))
    rows = run.read_metrics()
    # 2,000 images, two epochs: learning, well above chance (0.1), not yet good (0.50 here)
    assert len(rows) == 2 and rows[-1]["val.cls.accuracy"] > 0.4


def test_backbones_lists_them():
    out = run_cli("backbones")
    assert out.returncode == 0 and "resnet" in out.stdout and "plainnet" in out.stdout
