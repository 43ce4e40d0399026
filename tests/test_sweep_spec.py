"""Sweep files in the W&B format: parsing, name maps, and checks before any trial runs."""

import re
from pathlib import Path

import pytest
import yaml

from cnnlab.catalog import RECIPES, SWEEPS
from cnnlab.errors import CnnlabError
from cnnlab.recipe import apply_overrides, read_yaml
from cnnlab.sweeps.spec import load_sweep
from cnnlab.sweeps.study import base_recipe, pruner_for, sampler_for
from tests.conftest import DEMO

SEED000 = RECIPES / "seed000_best_accuracy.yaml"


def base(path: Path = DEMO) -> dict:
    return base_recipe(read_yaml(path), str(path))


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


SWEEP_FILES = sorted(p for p in SWEEPS.glob("*.yaml") if not p.name.endswith(".map.yaml"))
MAP_FILES = sorted(SWEEPS.glob("*.map.yaml"))


def shipped_spec(path: Path):
    """A shipped sweep file checked against the recipe it was written for: the one its
    comment names ("Base: <recipe>"), else the demo (seed 000's for its own files)."""
    named = re.search(r"Base: (\w+)", path.read_text())
    recipe = SEED000 if path.name.startswith("seed000") else DEMO
    if named:
        recipe = RECIPES / f"{named[1]}.yaml"
    return load_sweep(path, base(recipe))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_shipped_sweep_file_validates(path):
    spec = shipped_spec(path)
    assert spec.params or spec.constants


@pytest.mark.parametrize("path", MAP_FILES, ids=lambda p: p.name)
def test_every_shipped_name_map_is_used_by_its_sweep_file(path):
    """Found beside its sweep file, and every name it maps is one the sweep file sweeps."""
    raw = yaml.safe_load(path.read_text())
    spec = shipped_spec(path.with_name(path.name.replace(".map.yaml", ".yaml")))
    swept = {p.name for p in spec.params} | set(spec.constants)
    assert set(spec.mapping) == set(raw["parameters"]) and set(spec.mapping) <= swept
    assert spec.metric_aliases == (raw.get("metrics") or {})


def test_seed000_groups_are_all_there():
    groups = {p.stem.removeprefix("seed000_") for p in SWEEPS.glob("seed000_*.yaml")}
    assert {"lambda", "optimizer", "dropout", "lr", "conv", "base_filters", "batch_size"} <= groups


def test_seed001_has_its_ten_configs():
    spec = load_sweep(SWEEPS / "seed001_configs.yaml", base(SEED000))
    assert spec.method == "grid" and spec.grid_size() == 10
    third = spec.overrides({"config": 3})
    assert third["tasks.cls.weight"] == 0.5 and third["tasks.ink.weight"] == 2.0
    assert third["train.batch_size"] == 128 and third["model.blocks"] == 3


def test_seed002_runs_unchanged_through_its_name_map():
    spec = load_sweep(SWEEPS / "seed002_bayes.yaml", base())
    assert spec.method == "bayes" and spec.metric == "val.cls.accuracy"
    assert spec.goal == "maximize"
    assert any("'program'" in n for n in spec.notes) and any("'project'" in n for n in spec.notes)
    names = {p.name for p in spec.params}
    assert names == {
        "conv_activation", "filter_org", "base_filter", "dense_neurons",
        "bn", "dropout", "data_aug", "batch_size",
    }  # fmt: skip
    out = spec.overrides(
        {"conv_activation": "Mish", "dense_neurons": 256, "data_aug": False, "bn": True}
    )
    assert out["model.activation"] == "mish" and out["tasks.cls.head.hidden"] == [256]
    assert out["data.augment.hflip"] is False and out["data.augment.translate"] == 0
    assert spec.resolve_metric("val_acc") == "val.cls.accuracy"


def test_distributions_map_to_optuna(tmp_path):
    path = write(
        tmp_path,
        """
method: random
metric: {name: val.loss}
parameters:
  train.optimizer.lr: {distribution: log_uniform_values, min: 0.0001, max: 0.1}
  train.optimizer.weight_decay: {min: 0.0, max: 0.1}
  model.base_filters: {min: 8, max: 32}
  train.batch_size: {distribution: q_uniform, min: 32, max: 128, q: 32}
  tasks.cls.head.hidden: {values: [[64], [128, 64]]}
  model.kernel_size: {value: 5}
early_terminate: {type: hyperband, max_iter: 27, s: 2, eta: 3}
""",
    )
    spec = load_sweep(path, base())
    dist = {p.name: p.form.space() for p in spec.params}
    assert dist["train.optimizer.lr"].log and dist["train.optimizer.lr"].low == 0.0001
    assert type(dist["train.optimizer.weight_decay"]).__name__ == "FloatDistribution"
    assert type(dist["model.base_filters"]).__name__ == "IntDistribution"
    batch = spec.param("train.batch_size")  # W&B's q_uniform: uniform, then rounded to q
    assert batch.decode(79.0) == 64 and batch.decode(81.0) == 96 and type(batch.decode(81.0)) is int
    assert batch.grid_values() == [32, 64, 96, 128]
    assert spec.goal == "minimize" and spec.constants == {"model.kernel_size": 5}
    hidden = spec.param("tasks.cls.head.hidden")
    assert hidden.decode(hidden.form.space().choices[1]) == [128, 64]
    assert spec.overrides({"tasks.cls.head.hidden": [128, 64]})["tasks.cls.head.hidden"] == [
        128,
        64,
    ]
    assert spec.early_terminate == {"min_resource": 3, "reduction_factor": 3, "last_band": 9}
    assert type(pruner_for(spec)).__name__ == "SuccessiveHalvingPruner"
    assert type(sampler_for(spec, 10, 0)).__name__ == "RandomSampler"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("method: grid\nmetric: {name: val.loss}\nparameters: {conv_activation: {values: [a]}}",
         "'conv_activation' names no recipe field.*name map"),
        ("method: grid\nmetric: {name: val.loss}\nparameters: {model.activation: {values: [tanh]}}",
         "'model.activation' = 'tanh'"),
        ("method: grid\nmetric: {name: val_acc}\nparameters: {model.blocks: {values: [2]}}",
         "metric 'val_acc' is not reported; choose one of: val.loss"),
        ("method: hyper\nmetric: {name: val.loss}\nparameters: {model.blocks: {values: [2]}}",
         "method = 'hyper': Input should be 'grid', 'random' or 'bayes'"),
        ("method: grid\nmetric: {name: val.loss}\nparameters: {model.blocks: {values: [2]}}\n"
         "run_caps: 3",
         r"unknown key 'run_caps' \(did you mean 'run_cap'\?\); valid keys here: method, metric"),
        ("method: grid\nmetric: {name: val.loss}\n"
         "parameters: {train.optimizer.lr: {min: 0.1, max: 1.0}}",
         "method grid needs a list of `values`"),
        ("method: random\nmetric: {name: val.loss}\n"
         "parameters: {train.optimizer.lr: {distribution: normal, mean: 0, sigma: 1}}",
         r"'train.optimizer.lr' \(normal\): unknown key 'mean'; valid keys here: distribution, "
         "mu, sigma"),
        ("method: random\nmetric: {name: val.loss}\n"
         "parameters: {train.optimizer.lr: {distribution: gamma, min: 0.1, max: 1}}",
         "unknown distribution 'gamma'; use one of: constant, categorical"),
        ("method: random\nmetric: {name: val.loss}\n"
         "parameters: {model.activation: {values: [relu, gelu], probabilities: [0.5, 0.4]}}",
         "probabilities add up to 0.9; make them add up to 1"),
        ("method: random\nmetric: {name: val.loss}\n"
         "parameters: {model.activation: {values: [relu, gelu], probabilities: [1.0]}}",
         "1 probability for 2 values; give one each"),
        ("method: random\nmetric: {name: val.loss}\n"
         "parameters: {train.optimizer.lr: {distribution: normal, mu: 0.01, sigma: 0.01}}",
         r"'train.optimizer.lr' = -0.0209.*greater than 0"),
        ("method: random\nmetric: {name: val.loss}\n"
         "parameters: {train: {parameters: {optimizer: {lr: {min: 0.1, max: 1}}}}}",
         "'train.optimizer': no form in \\['lr'\\].*or nested `parameters`"),
        ("method: random\nmetric: {name: val.loss}\nparameters: {model.blocks: {values: [2]}}\n"
         "early_terminate: {type: envelope}",
         "early_terminate.type = 'envelope': Input should be 'hyperband'"),
        ("method: random\nmetric: {name: val.loss}\nparameters: {model.blocks: {values: [2]}}\n"
         "early_terminate: {type: hyperband, max_iter: 27}",
         "early_terminate: give min_iter, or max_iter with s >= 1"),
        ("method: random\nmetric: {name: val.loss}\nparameters: {model.blocks: {values: [2]}}\n"
         "early_terminate: {type: hyperband, min_iter: 1, eta: 1}",
         "early_terminate.eta = 1: Input should be greater than or equal to 2"),
        ("method: random\nmetric: {name: val.loss}\nparameters: {model.blocks: {values: [2]}}\n"
         "early_terminate: {type: hyperband, min_iter: 0}",
         "early_terminate.min_iter = 0: Input should be greater than or equal to 1"),
        ("method: random\nmetric: {name: val.loss}\nparameters: {model.blocks: {values: [2]}}\n"
         "early_terminate: {type: hyperband, eta: three}", "early_terminate.eta = 'three'"),
        ("method: bayes\nparameters: {train.optimizer.lr: {min: 0.001, max: 0.01}}",
         "method bayes models the metric, so it needs one: add metric: "
         "{name: val.cls.accuracy, goal: maximize}"),
    ],
)  # fmt: skip
def test_bad_sweep_files_stop_with_one_clear_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(CnnlabError, match=message):
        spec = load_sweep(path, base())
        spec.grid()  # grid problems surface when the sampler is built


@pytest.mark.parametrize("name", ["s.yaml", "s.map.yaml"])
def test_a_sweep_file_or_map_that_is_not_text_is_one_line(tmp_path, name):
    sweep = write(tmp_path, "method: grid\nparameters: {train.optimizer.lr: {values: [0.1]}}")
    (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # a picture, by mistake
    with pytest.raises(CnnlabError, match=r"is not UTF-8 text \(byte 0x89 at offset 0\)") as err:
        load_sweep(sweep, base())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        ("train.optimiser.lr", "did you mean train.optimizer.lr? (or map it in the name map "
         "s.map.yaml beside the sweep file)"),
        ("mdl.base_filters", "did you mean model.base_filters?"),
        ("train.optimizer.learning_rate", "did you mean train.optimizer.lr?"),  # another name
        ("conv_activation", "write a dotted recipe path, or map it in the name map s.map.yaml "
         "beside the sweep file: `parameters: {conv_activation: <recipe path>}`"),
    ],
)  # fmt: skip
def test_an_unknown_parameter_name_gets_the_close_path_and_no_made_up_example(tmp_path, name, fix):
    """A typo is told its spelling; the name map's example shows no field nobody asked for
    (it used to say `{train.optimiser.lr: model.activation}` whatever the name)."""
    path = write(tmp_path, f"method: grid\nmetric: {{name: val.loss}}\n"
                           f"parameters: {{{name}: {{values: [16]}}}}")  # fmt: skip
    with pytest.raises(CnnlabError) as err:
        load_sweep(path, base())
    message = str(err.value)
    assert message.startswith(f"sweep parameter {name!r} names no recipe field (unknown key ")
    assert fix in message and "\n" not in message
    assert "model.activation" not in message


def test_every_misfit_parameter_is_named_in_one_line(tmp_path):
    """Two misspelt parameters took two runs to learn of: one line names both now."""
    path = write(tmp_path, "method: grid\nmetric: {name: val.loss}\nparameters: "
                           "{train.optimizer.learning_rate: {values: [0.1]}, "
                           "tasks.cls.class_weight: {values: [balanced]}}")  # fmt: skip
    with pytest.raises(CnnlabError) as err:
        load_sweep(path, base())
    message = str(err.value)
    assert "\n" not in message
    first, second = message.split("; sweep parameter ")
    assert first.startswith("sweep parameter 'train.optimizer.learning_rate' names no recipe")
    assert "did you mean train.optimizer.lr?" in first
    assert second.startswith("'tasks.cls.class_weight' names no recipe field")
    assert "did you mean tasks.cls.class_weights?" in second


def test_name_map_values_and_unknown_entries(tmp_path):
    sweep = write(
        tmp_path, "method: grid\nmetric: {name: acc}\nparameters: {act: {values: [ReLU, Tanh]}}"
    )
    write(
        tmp_path,
        yaml.safe_dump(
            {
                "parameters": {"act": {"path": "model.activation", "values": {"ReLU": "relu"}}},
                "metrics": {"acc": "val.cls.accuracy"},
            }
        ),
        "s.map.yaml",
    )
    with pytest.raises(CnnlabError, match="value 'Tanh' has no entry in the name map"):
        load_sweep(sweep, base())
    write(tmp_path, yaml.safe_dump({"parameters": {"ack": "model.activation"}}), "other.yaml")
    with pytest.raises(CnnlabError, match="maps 'ack', which the sweep file does not sweep"):
        load_sweep(sweep, base(), tmp_path / "other.yaml")


def test_a_missing_goal_follows_the_metric_and_says_so(tmp_path):
    """W&B minimizes unless told; an accuracy sweep without a goal is maximized, with a note."""
    acc = load_sweep(write(tmp_path, "method: grid\nmetric: {name: val.cls.accuracy}\n"
                           "parameters: {model.blocks: {values: [2]}}"), base())  # fmt: skip
    assert acc.goal == "maximize" and any("W&B would minimize" in n for n in acc.notes)
    loss = load_sweep(write(tmp_path, "method: grid\nmetric: {name: val.loss}\n"
                            "parameters: {model.blocks: {values: [2]}}"), base())  # fmt: skip
    assert loss.goal == "minimize" and not any("goal" in n for n in loss.notes)


def test_grid_and_random_without_a_metric_use_the_recipes_monitor(tmp_path):
    """W&B accepts a grid or random sweep with no metric; the trials rank by train.monitor."""
    text = "method: {}\nparameters: {{model.blocks: {{values: [2, 3]}}}}"
    rmse = base_recipe(apply_overrides(read_yaml(DEMO), ["train.monitor=val.ink.rmse"]), "demo")
    for method in ("grid", "random"):
        spec = load_sweep(write(tmp_path, text.format(method)), rmse)
        assert (spec.metric, spec.goal) == ("val.ink.rmse", "minimize")
        assert "no metric in the sweep file: minimizing the recipe's train.monitor" in spec.notes[0]
    acc = load_sweep(write(tmp_path, text.format("grid")), base())  # the demo monitors accuracy
    assert (acc.metric, acc.goal) == ("val.cls.accuracy", "maximize")


def test_run_cap_caps_every_sweep_as_w_and_b_caps_its_runs(tmp_path):
    from cnnlab.sweeps.launch import _budget

    grid = write(tmp_path, "method: grid\nmetric: {name: val.loss}\nrun_cap: 2\n"
                 "parameters: {model.blocks: {values: [1, 2, 3]}}\n")  # fmt: skip
    assert _budget(load_sweep(grid, base()), None) == 2
    rand = write(tmp_path, "method: random\nmetric: {name: val.loss}\nrun_cap: 3\n"
                 "parameters: {train.optimizer.lr: {min: 0.001, max: 0.01}}\n")  # fmt: skip
    assert _budget(load_sweep(rand, base()), 5) == 3
    assert _budget(load_sweep(rand, base()), None) == 3
