"""Backbones: the registry, the `model` section it builds, and the feature stages each
backbone reports, checked against the maps it really computes."""

from __future__ import annotations

import re
from typing import Literal

import pytest
import torch
import yaml
from pydantic import TypeAdapter, ValidationError

from cnnlab.config import Section
from cnnlab.errors import CnnlabError
from cnnlab.models import BACKBONES, Backbone, create_backbone, tagged_by_backbone
from cnnlab.models.cnn import CNNConfig
from cnnlab.recipe import load_recipe
from cnnlab.viz.hooks import feature_blocks, forward_hooks
from tests.conftest import DEMO, run_cli

# ------------------------------------------------------------------------ registry


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_entry_answers_to_its_name_and_builds_from_defaults(name):
    entry = BACKBONES[name]
    cfg = entry.config()  # every key has a default: `model: {backbone: <name>}` is a recipe
    assert cfg.backbone == name and issubclass(entry.module, Backbone) and entry.doc
    backbone = create_backbone(cfg, 1, (28, 28))
    assert type(backbone) is entry.module
    assert backbone(torch.zeros(2, 1, 28, 28)).shape == (2, backbone.num_features)


def test_an_unknown_backbone_is_one_line_naming_the_choices():
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, ["model.backbone=resnet9"])
    msg = str(err.value)
    assert "\n" not in msg and "model.backbone = 'resnet9'" in msg
    assert f"choose one of: {', '.join(BACKBONES)}, or a timm model name" in msg
    for typed in ("efficientnet_lite", "efficientnet_lte0"):  # lite0 has offline weights
        with pytest.raises(CnnlabError) as err:
            load_recipe(DEMO, [f"model.backbone={typed}"])
        assert "; did you mean efficientnet_lite0, efficientnet_lite4, " in str(err.value)


def test_an_unknown_model_key_names_the_backbones_own_keys():
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, ["model.blokcs=2"])
    msg = str(err.value)
    assert "\n" not in msg and "unknown key 'model.blokcs'" in msg
    assert msg.endswith("valid keys here: " + ", ".join(CNNConfig.model_fields))


class _Other(Section):
    """A stand-in second backbone: the union the registry builds once there are two."""

    backbone: Literal["other"] = "other"
    width: int = 1


def test_two_configs_are_told_apart_by_backbone():
    union = TypeAdapter(tagged_by_backbone([CNNConfig, _Other]))
    assert union.validate_python({"backbone": "other", "width": 3}) == _Other(width=3)
    assert union.validate_python({"blocks": 2}) == CNNConfig(blocks=2)  # no key: the first
    assert union.dump_python(_Other(width=3)) == {"backbone": "other", "width": 3}
    with pytest.raises(ValidationError) as err:
        union.validate_python({"backbone": "other", "blocks": 2})  # a cnn key on another
    assert err.value.errors()[0]["type"] == "extra_forbidden"
    with pytest.raises(ValidationError) as err:
        union.validate_python({"backbone": "vit"})
    assert "'cnn', 'other'" in err.value.errors()[0]["msg"]


def test_with_two_backbones_model_errors_still_read_as_written(monkeypatch):
    import cnnlab.recipe as recipe_module

    class TwoBackbones(recipe_module.Recipe):
        model: tagged_by_backbone([CNNConfig, _Other]) = CNNConfig()

    monkeypatch.setattr(recipe_module, "Recipe", TwoBackbones)
    assert load_recipe(DEMO, ["model={backbone: other}"]).model == _Other()
    cnn_keys = ", ".join(CNNConfig.model_fields)
    with pytest.raises(
        CnnlabError,
        match=re.escape(
            f"'model.blokcs' (did you mean 'model.blocks'?); valid keys here: {cnn_keys}"
        )
        + "$",
    ):
        load_recipe(DEMO, ["model.blokcs=2"])
    with pytest.raises(
        CnnlabError,
        match=r"model\.backbone = 'vit': choose one of: cnn, other; register your own with "
        r"@cnnlab\.register_backbone \(see cnnlab --import\)$",
    ):
        load_recipe(DEMO, ["model.backbone=vit"])


# -------------------------------------------------------------------- feature stages


def check_stages(backbone: Backbone, x: torch.Tensor) -> list[torch.Tensor]:
    """The maps of forward_intermediates have the shapes feature_info gives; the others agree."""
    n, _, h, w = x.shape
    maps = backbone.forward_intermediates(x)
    assert len(maps) == len(backbone.feature_info) >= 1
    for fmap, info in zip(maps, backbone.feature_info, strict=True):
        assert fmap.shape == (n, info.channels, h // info.stride, w // info.stride)
        if h % info.stride == 0:  # an exact reduction: the stride is the size ratio
            assert h / fmap.shape[-2] == info.stride
    strides = [info.stride for info in backbone.feature_info]
    deepest = strides.index(max(strides))  # an encoder goes down; a decoder climbs back
    assert strides[: deepest + 1] == sorted(strides[: deepest + 1])
    assert strides[deepest:] == sorted(strides[deepest:], reverse=True)
    assert torch.equal(backbone.forward_features(x), maps[-1])
    assert backbone(x).shape == (n, backbone.num_features)
    return maps


# A pretrained timm network resizes its input and pads like TensorFlow (a map of ceil(H / s)):
# its strides are checked where they are exact, at a multiple of 32 it is not resized from.
SIZES = {"timm": (64,)}
SETTINGS = {"timm": {"input_size": 64, "pretrained": False}}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_reports_the_stages_it_computes(name):
    torch.manual_seed(0)
    cfg = BACKBONES[name].config(**SETTINGS.get(name, {}))
    for size in SIZES.get(name, (28, 32)):
        for channels in (1, 3):
            backbone = create_backbone(cfg, channels, (size, size)).eval()
            check_stages(backbone, torch.randn(2, channels, size, size))


@pytest.mark.parametrize("pool", [1, 2, 3])
@pytest.mark.parametrize("blocks", [1, 2, 3, 4])
@pytest.mark.parametrize("global_pool", [False, True])
def test_feature_info_matches_the_maps(pool, blocks, global_pool):
    torch.manual_seed(0)
    for size in (28, 32):
        for channels in (1, 3):
            cfg = CNNConfig(blocks=blocks, pool=pool, global_pool=global_pool, base_filters=4)
            if size // pool**blocks < 1:
                with pytest.raises(CnnlabError, match="shrink"):
                    create_backbone(cfg, channels, (size, size))
                continue
            backbone = create_backbone(cfg, channels, (size, size)).eval()
            x = torch.randn(2, channels, size, size)
            maps = check_stages(backbone, x)
            assert len(maps) == blocks and backbone.feature_info[0].stride == pool
            assert [m.shape[1] for m in maps] == cfg.block_filters()
            pooled = maps[-1].mean((2, 3)) if global_pool else maps[-1].flatten(1)
            out = backbone(x)
            assert out.shape == (2, backbone.num_features)
            torch.testing.assert_close(out, pooled)


def test_stage_names_are_the_modules_that_output_the_maps():
    cfg = CNNConfig(blocks=3, filters=[4, 6, 8], convs_per_block=2, pool=2)
    backbone = create_backbone(cfg, 3, (32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    hooked: dict[str, torch.Tensor] = {}
    stages = {s.name: backbone.get_submodule(s.name) for s in backbone.feature_info}
    with forward_hooks(stages, lambda n, m, y: hooked.__setitem__(n, y)):
        maps = backbone.forward_intermediates(x)
    assert list(hooked) == [s.name for s in backbone.feature_info]
    for fmap, got in zip(maps, hooked.values(), strict=True):
        assert torch.equal(fmap, got)
    # the figures show the same stages, in the same order
    assert list(feature_blocks(backbone).values()) == list(stages.values())


def test_figures_refuse_a_backbone_without_stages():
    with pytest.raises(CnnlabError, match="Sequential has no feature_info"):
        feature_blocks(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)))


# ----------------------------------------------------------------------------- CLI


def test_backbones_command_lists_each_with_its_keys_and_defaults():
    out = run_cli("backbones")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name, entry in BACKBONES.items():
        (i,) = [i for i, line in enumerate(lines) if line.split()[:1] == [name]]
        assert entry.doc in lines[i]
        section = yaml.safe_load(lines[i + 1].strip())["model"]  # a recipe's model section
        assert list(section) == list(entry.config.model_fields)
        assert entry.config.model_validate(section) == entry.config()
