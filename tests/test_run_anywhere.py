"""A run folder works from any folder: the recipe's relative data paths (image_folder's
`data.root: shapes`) are read where cnnlab ran the training when they are not in the current
folder, a copy in the current folder still comes first, and where neither holds them one
line names both places."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnlab
from cnnlab.data.table import TableConfig
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import evaluate_run
from cnnlab.experiment import train
from cnnlab.recipe import validate
from cnnlab.runs import RunFolder
from cnnlab.viz import render


def shapes(root: Path, classes: int = 4, count: int = 10) -> Path:
    """root/c<i>/ with `count` 20x20 PNGs each, each class its own brightness."""
    rng = np.random.default_rng(0)
    for i in range(classes):
        (root / f"c{i}").mkdir(parents=True)
        for j in range(count):
            pixels = rng.integers(0, 60, (20, 20, 3)) + 60 * i
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"c{i}" / f"{j}.png")
    return root


def recipe(out: Path, epochs: int = 1) -> dict:
    """Seconds of training on ./shapes, named relative to the folder cnnlab runs in."""
    return {
        "name": "anywhere",
        "output_dir": str(out),
        "data": {"source": "image_folder", "root": "shapes", "image_size": 16},
        "model": {"backbone": "cnn", "blocks": 2, "base_filters": 4, "filter_org": "same"},
        "tasks": {"cls": {"type": "classification", "target": "label"}},
        "train": {
            "epochs": epochs,
            "batch_size": 8,
            "monitor": "val.cls.accuracy",
            "progress": False,
            "device": "cpu",
            "precision": "fp32",
            "threads": 1,
            "report": False,
        },
    }


@pytest.fixture
def place(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(the folder training runs in, holding shapes/; another folder, empty); cwd: the first."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    shapes(here / "shapes")
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    return here, elsewhere


def test_a_run_is_evaluated_and_drawn_from_another_folder(place, tmp_path, monkeypatch):
    here, elsewhere = place
    run = train(validate(recipe(tmp_path / "runs")))
    saved = run.recipe_path.read_text()
    monkeypatch.chdir(elsewhere)
    assert evaluate_run(run.path) == run.test_metrics()  # the same images, the same numbers
    assert json.loads((run.path / "env.json").read_text())["cwd"] == str(here)
    assert render(run.path, "confusion", elsewhere / "figures")
    assert cnnlab.load_run(run.path).recipe.data.root == "shapes"  # the recipe as trained
    assert run.recipe_path.read_text() == saved
    (elsewhere / "shapes").mkdir()  # a folder of that name here comes first, as always
    with pytest.raises(CnnlabError, match="holds no class folders"):
        evaluate_run(run.path)


def test_data_found_nowhere_is_one_line_naming_both_places(place, tmp_path, monkeypatch):
    here, elsewhere = place
    run = train(validate(recipe(tmp_path / "runs")))
    shutil.move(here / "shapes", tmp_path / "moved")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(CnnlabError) as err:
        evaluate_run(run.path)
    msg = str(err.value)
    assert msg.startswith(f"data.root: shapes is not in {elsewhere}, where cnnlab runs, ")
    assert f"nor in {here}, where {run.path} trained; put it back in {here}, or run" in msg
    assert "\n" not in msg


def test_an_older_run_without_the_recorded_folder_works_from_its_own(place, tmp_path, monkeypatch):
    _, elsewhere = place
    run = train(validate(recipe(tmp_path / "runs")))
    env = json.loads((run.path / "env.json").read_text())
    del env["cwd"]
    (run.path / "env.json").write_text(json.dumps(env))
    assert evaluate_run(run.path) == run.test_metrics()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(CnnlabError, match="does not record the folder it trained in"):
        evaluate_run(run.path)


def test_a_run_resumes_from_another_folder_keeping_its_recipe(place, tmp_path, monkeypatch):
    here, elsewhere = place
    reference = train(validate(recipe(tmp_path / "reference", epochs=2)))

    def stop(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(CnnlabError, match="interrupted"):
        train(validate(recipe(tmp_path / "runs", epochs=2)), on_epoch=stop)
    (folder,) = (tmp_path / "runs").iterdir()
    saved = (folder / "recipe.yaml").read_text()
    monkeypatch.chdir(elsewhere)
    run = RunFolder(cnnlab.resume(folder).path)
    assert run.status()["state"] == "finished" and len(run.read_metrics()) == 2
    assert run.test_metrics() == reference.test_metrics()
    assert run.recipe_path.read_text() == saved  # the recipe it trained with, as it was
    assert run.trained_in() == here  # still where its data is, not where it was resumed


def test_a_table_is_looked_for_where_the_run_trained(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    targets = {"cls": {"kind": "category", "column": "label"}}
    (tmp_path / "my_data").mkdir()
    (tmp_path / "my_data/labels.csv").write_text("image,label\n")
    cfg = TableConfig(table="my_data/labels.csv", targets=targets)
    cfg.of_run(tmp_path / "runs/x", tmp_path)
    assert cfg.located().table == str(tmp_path / "my_data/labels.csv")
    rooted = TableConfig(root="my_data", table="labels.csv", targets=targets)
    rooted.of_run(tmp_path / "runs/x", tmp_path)  # the table is relative to data.root
    assert rooted.located().model_dump() == {
        **rooted.model_dump(),
        "root": str(tmp_path / "my_data"),
    }
