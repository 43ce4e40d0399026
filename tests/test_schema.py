"""The recipe's JSON Schema: the shipped file is what `cnnlab schema` prints, every shipped
recipe passes it, and it refuses what the loader refuses (an unknown key, a wrong type)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml
from torch import nn
from typer.testing import CliRunner

from cnnlab.catalog import RECIPES
from cnnlab.cli import app
from cnnlab.components import register_backbone, registration_scope
from cnnlab.errors import CnnlabError
from cnnlab.recipe import validate
from cnnlab.schema import MODELINE, REGENERATE, SHIPPED, recipe_schema

SHIPPED_RECIPES = sorted(RECIPES.glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SHIPPED.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_schema_is_what_cnnlab_schema_prints():
    printed = CliRunner().invoke(app, ["schema"])
    assert printed.exit_code == 0, printed.output
    assert printed.output == SHIPPED.read_text(), f"the shipped schema is stale: {REGENERATE}"


@pytest.mark.parametrize("path", SHIPPED_RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_passes_and_names_the_schema(path, validator):
    assert path.read_text().splitlines()[0] == MODELINE
    raw = yaml.safe_load(path.read_text())
    assert [e.message for e in validator.iter_errors(raw)] == []


BROKEN = {
    "unknown key": {"train": {"epoch": 3}},
    "wrong type": {"train": {"epochs": "three"}},
    "out of range": {"train": {"batch_size": 0}},
    "unknown backbone key": {"model": {"backbone": "resnet", "blocks": 3}},
    "unknown task type": {"tasks": {"cls": {"type": "segmentation", "target": "label"}}},
}


@pytest.mark.parametrize("change", BROKEN.values(), ids=list(BROKEN))
def test_a_broken_recipe_fails_the_schema_and_the_loader(change, validator):
    raw = yaml.safe_load((RECIPES / "fashion_fast.yaml").read_text())
    for section, value in change.items():
        raw[section] = {**raw.get(section, {}), **value} if section != "model" else value
    assert list(validator.iter_errors(raw)), "the schema let a broken recipe through"
    with pytest.raises(CnnlabError):
        validate(raw)


ACCEPTED = {
    "data without source is Fashion-MNIST's": {"data": {"val_fraction": 0.2}},
    "a timm model's name as backbone": {"model": {"backbone": "resnet18", "pretrained": False}},
}


@pytest.mark.parametrize("change", ACCEPTED.values(), ids=list(ACCEPTED))
def test_the_loaders_shorthands_pass_the_schema(change, validator):
    """The unions the loader tells apart with a function: the schema must not refuse them."""
    raw = {"tasks": {"cls": {"type": "classification", "target": "label"}}, **change}
    validate(raw)
    assert [e.message for e in validator.iter_errors(raw)] == []


def test_a_registered_backbone_joins_the_schema():
    class Tiny(nn.Module):
        def __init__(self, in_channels: int = 1, width: int = 8):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, width, 3)

        def forward(self, x):
            return self.conv(x)

    with registration_scope():
        register_backbone("tiny_for_schema")(Tiny)
        schema = recipe_schema()
    raw = {"tasks": {"cls": {"type": "classification", "target": "label"}}}
    raw["model"] = {"backbone": "tiny_for_schema", "width": 4}
    assert [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(raw)] == []
    raw["model"]["depth"] = 2
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(raw))
