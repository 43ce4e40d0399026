"""The recipe's and the sweep file's JSON Schemas: each shipped file is what `cnnlab schema`
prints, every shipped recipe and sweep file passes it, and it refuses what the loader refuses
(an unknown key, a wrong type) while accepting the loader's shorthands."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml
from torch import nn
from typer.testing import CliRunner

from cnnlab.catalog import RECIPES, SWEEPS
from cnnlab.cli import app
from cnnlab.components import register_backbone, registration_scope
from cnnlab.errors import CnnlabError
from cnnlab.recipe import read_yaml, validate
from cnnlab.schema import MODELINE, REGENERATE, SHIPPED, recipe_schema
from cnnlab.sweeps import schema as sweep
from cnnlab.sweeps.spec import load_sweep
from cnnlab.sweeps.study import base_recipe

SHIPPED_RECIPES = sorted(RECIPES.glob("*.yaml"))
SHIPPED_SWEEPS = sorted(p for p in SWEEPS.glob("*.yaml") if not p.name.endswith(".map.yaml"))


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


# ------------------------------------------------------------------------ sweep files


@pytest.fixture(scope="module")
def sweep_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(sweep.SHIPPED.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_sweep_schema_is_what_cnnlab_schema_prints():
    printed = CliRunner().invoke(app, ["schema", "--sweep"])
    assert printed.exit_code == 0, printed.output
    assert printed.output == sweep.SHIPPED.read_text(), f"stale: {sweep.REGENERATE}"


@pytest.mark.parametrize("path", SHIPPED_SWEEPS, ids=lambda p: p.stem)
def test_every_shipped_sweep_file_passes_and_names_the_schema(path, sweep_validator):
    assert path.read_text().splitlines()[0] == sweep.MODELINE
    raw = yaml.safe_load(path.read_text())
    assert [e.message for e in sweep_validator.iter_errors(raw)] == []


SWEEP_BROKEN = {
    "unknown key": {"method": "grid", "paramters": {}},
    "unknown method": {"method": "gird", "parameters": {"train.epochs": {"values": [1]}}},
    "a block with no form": {"method": "grid", "parameters": {"train.epochs": {"valuez": [1]}}},
    "an unknown distribution": {
        "method": "random",
        "parameters": {"train.optimizer.lr": {"distribution": "gaussian", "mu": 0, "sigma": 1}},
    },
}
SWEEP_ACCEPTED = {
    "integer min and max": {
        "method": "random",
        "parameters": {"train.epochs": {"min": 1, "max": 3}},
    },
    "categorical with probabilities": {
        "method": "random",
        "parameters": {
            "train.epochs": {
                "distribution": "categorical",
                "values": [1, 2],
                "probabilities": [0.5, 0.5],
            }
        },
    },
    "nested parameters": {
        "method": "random",
        "parameters": {"train": {"parameters": {"epochs": {"values": [1, 2]}}}},
    },
}


def _load_sweep(raw: dict, tmp_path) -> None:
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    demo = RECIPES / "fashion_fast.yaml"
    load_sweep(tmp_path / "s.yaml", base_recipe(read_yaml(demo), str(demo)))


@pytest.mark.parametrize("raw", SWEEP_BROKEN.values(), ids=list(SWEEP_BROKEN))
def test_a_broken_sweep_file_fails_the_schema_and_the_loader(raw, sweep_validator, tmp_path):
    assert list(sweep_validator.iter_errors(raw)), "the schema let a broken sweep file through"
    with pytest.raises(CnnlabError):
        _load_sweep(raw, tmp_path)


@pytest.mark.parametrize("raw", SWEEP_ACCEPTED.values(), ids=list(SWEEP_ACCEPTED))
def test_the_sweep_loaders_forms_pass_the_schema(raw, sweep_validator, tmp_path):
    _load_sweep(raw, tmp_path)
    assert [e.message for e in sweep_validator.iter_errors(raw)] == []
