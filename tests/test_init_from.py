"""train.init_from: a new run that starts from a trained run's weights, and trains on by its
own recipe."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml

import cnnlab
from cnnlab import build as build_module
from cnnlab.build import build
from cnnlab.data import shapes_table
from cnnlab.errors import CnnlabError
from cnnlab.experiment import train
from cnnlab.loop import Trainer
from cnnlab.models.weights import read_state_dict
from cnnlab.runs import RunFolder, load_checkpoint
from tests.conftest import edit_table
from tests.test_train import comparable, interrupt_after


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> RunFolder:
    """One tiny trained run (with a weight average, so judged and trained weights differ)."""
    from tests.conftest import tiny_recipe

    return train(tiny_recipe(tmp_path_factory.mktemp("first"), "train.ema_decay=0.9"))


def equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def no_data(monkeypatch) -> None:
    """Reading any pixel fails: what is checked here is checked before the data."""

    def refuse(*args, **kwargs):
        raise AssertionError("the data was read")

    monkeypatch.setattr(build_module, "prepare_splits", refuse)


def test_a_new_run_starts_at_the_runs_judged_weights_and_trains_on(first, tiny, capsys):
    judged = load_checkpoint(first.best_path)
    assert not equal_states(judged["model"], judged["train_model"])  # the average differs
    recipe = tiny(f"train.init_from={first.path}", "train.optimizer.lr=0.0005")
    built = build(recipe)
    assert equal_states(built.model.state_dict(), judged["model"])  # backbone and heads
    assert built.started == []  # nothing left out

    run = train(recipe)
    assert run.status()["state"] == "finished"
    assert run.recipe().train.init_from == str(first.path)  # recorded in its recipe.yaml
    assert f"weights from {first.path} (epoch 1)" in capsys.readouterr().out
    trained = load_checkpoint(run.last_path)["model"]
    assert not equal_states(trained, judged["model"])  # it trained
    # it went on from there: one more epoch beats the first run's first
    assert run.read_metrics()[0]["val.loss"] < first.read_metrics()[0]["val.loss"]


def test_from_python_with_the_runs_own_recipe_and_its_checkpoint_file(first, tmp_path):
    """What a user from Lightning writes: the run's recipe, more epochs, its weights."""
    run = cnnlab.load_run(first.path)
    new = cnnlab.train(
        run.recipe,
        {"train.epochs": 1, "train.init_from": run.path / "checkpoints" / "best.pt"},
        run_dir=tmp_path / "more",
    )
    assert new.status["state"] == "finished"
    assert new.recipe.train.init_from == str(first.best_path)


def test_a_model_built_another_way_is_refused_before_the_data_and_leaves_no_folder(
    first, tiny, tmp_path, monkeypatch
):
    no_data(monkeypatch)
    recipe = tiny(f"train.init_from={first.path}", "model.base_filters=16")
    with pytest.raises(CnnlabError) as err:
        train(recipe)
    line = str(err.value)
    assert line.startswith(f"train.init_from {first.path}: key 'backbone.")
    assert "has shape" in line and "this run's model must be built as that run's was" in line
    assert "(model.base_filters is 8 there, 16 here)" in line and "\n" not in line
    assert not (tmp_path / "runs").exists()  # no run folder made


@pytest.mark.parametrize(
    "given, message",
    [
        ("nowhere", r"^train.init_from: nowhere not found; give a run folder"),
        ("{tmp}/empty", r"^train.init_from: .* is not a run folder \(no recipe.yaml\)"),
        ("{tmp}/run", r"^train.init_from: .* has no best weights \(checkpoints/best.pt\)"),
        ("{tmp}/run/recipe.yaml", r"^train.init_from: .* is not a readable checkpoint"),
        ("{tmp}/plain.pt", r"is not a cnnlab checkpoint; .* backbone go in model.weights\)$"),
    ],
)
def test_a_folder_without_weights_is_refused_before_the_data(
    tiny, tmp_path, monkeypatch, given, message
):
    no_data(monkeypatch)
    (tmp_path / "empty").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text("name: x\n")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CnnlabError, match=message):
        build(tiny(f"train.init_from={given.format(tmp=tmp_path)}"))


def test_model_weights_given_a_runs_checkpoint_names_init_from(first, tiny, monkeypatch):
    with pytest.raises(CnnlabError, match=f"set train.init_from={first.path} and drop"):
        read_state_dict(first.best_path)
    no_data(monkeypatch)  # and a recipe says so before its data is read
    model = f"{{backbone: timm, name: resnet18, weights: {first.best_path}}}"
    with pytest.raises(CnnlabError, match="is a cnnlab run's checkpoint .* train.init_from="):
        build(tiny(f"model={model}"))


def test_resuming_the_new_run_continues_it_exactly_without_reading_the_first(first, tiny, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(first.path, source)
    recipe = tiny(f"train.init_from={source}", "train.epochs=2", "data.train_subset=1000")
    reference = train(recipe)

    run = RunFolder.create(recipe)
    trainer = Trainer(build(recipe), run)
    interrupt_after(trainer, 20)  # in its second epoch
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    shutil.rmtree(source)  # its own last.pt holds everything
    resumed = train(recipe, resume=run.path)
    assert comparable(resumed) == comparable(reference)


# ------------------------------------------------------- a head with other classes


def table_recipe(folder: Path, tmp_path: Path, **train) -> dict:
    raw = yaml.safe_load((Path(cnnlab.__file__).parent / "recipes/table_example.yaml").read_text())
    raw["data"]["table"] = str(folder / "labels.csv")
    raw["data"]["targets"] = {k: raw["data"]["targets"][k] for k in ("kind", "area")}
    raw["tasks"] = {k: raw["tasks"][k] for k in ("kind", "area")}
    raw["model"]["filters"] = 8
    raw["train"].update(epochs=1, batch_size=32, progress=False, threads=1, device="cpu")
    raw["train"].update(report=False, precision="fp32", monitor="val.loss", **train)
    raw["output_dir"] = str(tmp_path / "runs")
    return raw


def test_a_head_with_another_number_of_classes_starts_fresh_and_says_so(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    three = tmp_path / "three"
    shapes_table.write(three, 120, 16, seed=3)
    old = train(cnnlab.load_recipe(table_recipe(three, tmp_path)))
    two = tmp_path / "two"  # the same images, triangles now counted as squares
    shutil.copytree(three, two)
    edit_table(two, lambda i, row: row.update(kind=row["kind"].replace("triangle", "square")))

    recipe = cnnlab.load_recipe(table_recipe(two, tmp_path, init_from=str(old.path)))
    built = build(recipe)
    said = (
        f"tasks.kind's head starts fresh: {old.path} had 3 classes, this run has 2; the "
        "backbone and the other heads start from its weights"
    )
    assert built.started == [said]
    judged, now = load_checkpoint(old.best_path)["model"], built.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in judged.items() if not k.startswith("heads.kind."))
    weights = [v for k, v in now.items() if k.startswith("heads.kind.") and k.endswith("weight")]
    assert weights[-1].shape[0] == 2  # its outputs: one per class now

    run = train(recipe)
    assert run.status()["state"] == "finished"
    out = capsys.readouterr().out
    assert f"weights from {old.path} (epoch 1)\n{said}" in out


def test_a_task_added_gets_a_fresh_head_and_a_task_dropped_leaves_its_own(tmp_path, monkeypatch):
    """A backbone from a run, a task of one's own on it: the common next step."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shapes_table.write(tmp_path / "shapes", 120, 16, seed=3)
    old = train(cnnlab.load_recipe(table_recipe(tmp_path / "shapes", tmp_path)))
    raw = table_recipe(tmp_path / "shapes", tmp_path, init_from=str(old.path))
    raw["tasks"] = {"kind": raw["tasks"]["kind"], "size": {"type": "regression", "target": "area"}}
    built = build(cnnlab.load_recipe(raw))
    assert built.started == [
        f"tasks.size's head starts fresh: {old.path} had no such task",
        f"{old.path}'s tasks.area is not in this recipe: its head is left",
    ]
    judged, now = load_checkpoint(old.best_path)["model"], built.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in judged.items() if not k.startswith("heads.area."))
    assert any(k.startswith("heads.size.") for k in now)
