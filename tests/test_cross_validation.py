"""k-fold cross-validation (cnnlab/cross_validation.py, `data.folds`): every training image
is validation exactly once, classes and groups dealt evenly, each fold an ordinary run, and
the folds' metrics summed up as the folds' own files say."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
import torch
import yaml

import cnnlab
from cnnlab.data import shapes_table
from cnnlab.data.split import stratified_folds
from cnnlab.errors import CnnlabError
from tests.conftest import edit_table, run_cli, table_classifier
from tests.test_train import interrupted


def test_each_row_is_in_one_fold_and_each_class_is_dealt_evenly():
    labels = torch.tensor([0] * 23 + [1] * 7 + [2] * 2)
    fold = stratified_folds(labels, len(labels), 5, seed=3)
    assert fold.shape == (32,) and set(fold.tolist()) == set(range(5))
    for cls in range(3):
        counts = torch.bincount(fold[labels == cls], minlength=5)
        assert counts.max() - counts.min() <= 1  # 23: 5,5,5,4,4; 7: 2,2,1,1,1
    # the two images of class 2 do not both start at fold 0: each class goes on from the last
    assert torch.bincount(fold, minlength=5).tolist() == [7, 7, 6, 6, 6]
    assert torch.equal(fold, stratified_folds(labels, len(labels), 5, seed=3))  # seeded
    assert not torch.equal(fold, stratified_folds(labels, len(labels), 5, seed=4))
    groups = torch.arange(32) // 4  # eight patients of four images each
    by_group = stratified_folds(labels, 32, 4, seed=0, groups=groups)
    assert all(len(set(by_group[groups == g].tolist())) == 1 for g in range(8))
    assert torch.bincount(by_group, minlength=4).tolist() == [8, 8, 8, 8]


def test_a_fold_is_named_within_the_folds():
    with pytest.raises(CnnlabError, match=r"data.fold 5: the folds are numbered 0 to 4"):
        cnnlab.load_recipe("fashion_fast", {"data.folds": 5, "data.fold": 5})
    with pytest.raises(CnnlabError, match=r"data.fold 2 needs data.folds \(how many parts\)"):
        cnnlab.load_recipe("fashion_fast", {"data.fold": 2})


@pytest.fixture(scope="module")
def pooled(tmp_path_factory) -> Path:
    """A shapes table whose validation rows are training rows: the folds carve validation."""
    folder = tmp_path_factory.mktemp("pooled")
    shapes_table.write(folder, 120, 16, seed=2)
    return edit_table(folder, lambda i, row: row.update(split=row["split"].replace("val", "train")))


def recipe(folder: Path, tmp_path: Path) -> dict:
    return table_classifier(folder, tmp_path, "kind", monitor="val.kind.accuracy")


def splits_of(run: Path) -> dict[str, set[str]]:
    with open(run / "splits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {s: {r["file"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}


def test_every_training_image_is_validation_once_and_the_summary_is_the_folds(
    pooled, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    found = cnnlab.cross_validate(recipe(pooled, tmp_path), folds=3, out=tmp_path / "cv")
    assert len(found.runs) == 3 and found.folder == tmp_path / "cv"
    assert all(run.path.parent == found.folder for run in found.runs)
    parts = [splits_of(run.path) for run in found.runs]
    pool = parts[0]["train"] | parts[0]["val"]
    with open(pooled / "labels.csv", newline="") as f:
        assert pool == {r["image"] for r in csv.DictReader(f) if r["split"] == "train"}
    assert set().union(*(p["val"] for p in parts)) == pool  # each image validation once
    assert sum(len(p["val"]) for p in parts) == len(pool)
    assert all(p["train"] | p["val"] == pool and p["test"] == parts[0]["test"] for p in parts)
    assert [r.recipe.data.fold for r in found.runs] == [0, 1, 2]

    table = found.table
    assert table["fold"].tolist() == [0, 1, 2]
    for run, (_, row) in zip(found.runs, table.iterrows(), strict=True):
        assert row["test.kind.accuracy"] == pytest.approx(run.test_metrics["test.kind.accuracy"])
        best = run.metrics.loc[run.metrics["epoch"] == row["best_epoch"]].iloc[0]
        assert row["val.kind.accuracy"] == pytest.approx(best["val.kind.accuracy"])
    accuracy = found.summary.loc["test.kind.accuracy"]
    values = table["test.kind.accuracy"].tolist()
    assert accuracy["mean"] == pytest.approx(statistics.fmean(values))
    assert accuracy["std"] == pytest.approx(statistics.stdev(values))
    assert (accuracy["min"], accuracy["max"]) == (min(values), max(values))
    assert (found.folder / "folds.png").stat().st_size > 5000
    with open(found.folder / "summary.csv", newline="") as f:
        saved = {row["metric"]: row for row in csv.DictReader(f)}
    assert float(saved["test.kind.accuracy"]["mean"]) == pytest.approx(accuracy["mean"])
    with pytest.raises(CnnlabError, match=r"cv: .*/cv is not empty; give a new folder"):
        cnnlab.cross_validate(recipe(pooled, tmp_path), folds=3, out=tmp_path / "cv")


def test_a_source_with_its_own_validation_split_is_refused_before_any_folder(tmp_path):
    folder = tmp_path / "shapes"
    shapes_table.write(folder, 60, 16, seed=2)  # its split column names val rows
    (tmp_path / "kinds.yaml").write_text(yaml.safe_dump(recipe(folder, tmp_path)))
    out = run_cli("cv", str(tmp_path / "kinds.yaml"), "--folds", "3",
                  env={"XDG_CACHE_HOME": str(tmp_path / "cache")})  # fmt: skip
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == (
        "error: data.folds: table gives its own validation split, which cross-validation "
        "would replace; remove data.folds, or give the validation rows to training (a "
        "table: write train in their split column) and let the folds carve it"
    )
    assert not (tmp_path / "runs").exists()
    checked = run_cli("check", str(tmp_path / "kinds.yaml"), "--set", "data.folds=3",
                      env={"XDG_CACHE_HOME": str(tmp_path / "cache")})  # fmt: skip
    assert checked.stderr.strip().splitlines()[-1] == out.stderr.strip().splitlines()[-1]
    neither = run_cli("cv")
    assert neither.stderr.strip() == (
        "error: give a recipe (cnnlab cv RECIPE --folds 5), or --resume FOLDER alone to go on "
        "with one cnnlab cv began"
    )


def test_the_command_prints_each_fold_and_the_mean_and_spread(pooled, tmp_path):
    (tmp_path / "kinds.yaml").write_text(yaml.safe_dump(recipe(pooled, tmp_path)))
    out = run_cli("cv", str(tmp_path / "kinds.yaml"), "--folds", "2", "--out", str(tmp_path / "cv"),
                  env={"XDG_CACHE_HOME": str(tmp_path / "cache")})  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "cv: fold 1 of 2 (validation: part 0 of the training set)"
    assert lines[1].startswith(f"cv: fold 1 of 2: {tmp_path / 'cv'}/kind-fold0-")
    assert "; val.kind.accuracy " in lines[1] and ", test.kind.accuracy " in lines[1]
    with open(tmp_path / "cv" / "summary.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["metric"] == "test.kind.accuracy")
    mean, std = float(row["mean"]), float(row["std"])
    assert f"  test.kind.accuracy           {mean:.4f} ± {std:.4f}  (" in out.stdout
    assert lines[-1] == f"their learning curves side by side: cnnlab compare {tmp_path / 'cv'}"


def test_an_interrupted_cross_validation_goes_on_where_it_stopped(pooled, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from cnnlab import cross_validation

    real = cross_validation.train

    def ctrl_c_in_fold_1(recipe, resume=None):
        if recipe.data.fold != 1:
            return real(recipe, resume=resume)
        interrupted(recipe, steps=2)  # as Ctrl-C leaves it: a checkpoint to resume from
        raise CnnlabError("interrupted at epoch 1, step 2; continue with: cnnlab train --resume")

    monkeypatch.setattr(cross_validation, "train", ctrl_c_in_fold_1)
    with pytest.raises(CnnlabError) as err:
        cnnlab.cross_validate(recipe(pooled, tmp_path), folds=3, out=tmp_path / "cv")
    assert err.value.lines()[-1] == (
        f"cv: fold 2 of 3 did not finish; the finished folds are kept: cnnlab cv --resume "
        f"{tmp_path / 'cv'} goes on"
    )
    found = cross_validation.folds_found(tmp_path / "cv")
    first = cross_validation.fold_runs(found[0])[0].path
    _, stopped = cross_validation.fold_runs(found[1])
    assert stopped is not None  # its last checkpoint, to resume from

    monkeypatch.setattr(cross_validation, "train", real)
    found = cnnlab.cross_validate(resume=tmp_path / "cv")
    assert [r.path for r in found.runs][:2] == [first, stopped]  # kept, then resumed in place
    assert [r.recipe.data.fold for r in found.runs] == [0, 1, 2]
    assert all(r.test_metrics for r in found.runs) and len(found.table) == 3
    with pytest.raises(CnnlabError, match="give a recipe, or resume= the folder of one begun"):
        cnnlab.cross_validate()
    with pytest.raises(CnnlabError, match=r"cv: 0 folds; give 2 to 20"):
        cnnlab.cross_validate(recipe(pooled, tmp_path), folds=0)


def test_the_picture_puts_each_folds_validation_and_test_metric_side_by_side():
    from cnnlab.cross_validation import drawn

    table = [
        {"val.kind.accuracy": 0.6, "test.kind.accuracy": 0.7, "val.area.rmse": 0.1},
        {"val.kind.accuracy": 0.8, "test.kind.accuracy": 0.5, "val.area.rmse": 0.3},
    ]
    chart = drawn(table, {"kind": ["accuracy", "f1"], "area": ["rmse"], "none": ["loss"]})
    kind, area = chart.figure.axes  # a panel per task with a metric in the table
    dots = [line.get_ydata().tolist() for line in kind.get_lines() if line.get_marker() == "o"]
    assert dots == [[0.6, 0.8], [0.7, 0.5]]  # validation, then test: one dot per fold
    assert [t.get_text() for t in kind.get_xticklabels()] == ["val accuracy", "test accuracy"]
    assert kind.get_title() == "kind: 2 folds" and area.get_title() == "area: 2 folds"
