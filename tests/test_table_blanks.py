"""A table whose target columns have blank cells (partial labels): `data.targets.NAME.blank`
stops the run (the default, naming the field), drops the rows, or keeps them unlabelled for
that target, where losses, metrics, calibration, figures and export count labelled rows
only."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torchmetrics.functional.classification import multiclass_f1_score

import cnnlab
from cnnlab.api import load_recipe
from cnnlab.data import describe, shapes_table, table
from cnnlab.errors import CnnlabError
from cnnlab.experiment import train
from cnnlab.runs import load_checkpoint
from cnnlab.tasks import EpochMeter, TargetSpec, create_tasks
from cnnlab.tasks.base import NO_CLASS
from cnnlab.tasks.calibration import scores
from cnnlab.viz import RunView, make_charts
from tests.conftest import edit_table, run_cli
from tests.test_train import assert_same_run, interrupted

ROWS, SIZE = 100, 16  # train rows 0-79, val 80-89, test 90-99 (shapes_table's split)
BLANK = {"kind": 3, "area": 4, "squares": 5, "mask": 7}  # a column's cell blank every k rows


@pytest.fixture(scope="module")
def blanks(tmp_path_factory) -> Path:
    """A shapes table whose kind, area, squares (a vector's component) and mask columns have
    blank cells: row i's cell of column c is blank when i % BLANK[c] == 1."""
    folder = tmp_path_factory.mktemp("blanks")
    shapes_table.write(folder, ROWS, SIZE, seed=5)

    def blank(i: int, row: dict) -> None:
        for column, k in BLANK.items():
            if i % k == 1:
                row[column] = ""

    return edit_table(folder, blank)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def recipe_dict(folder: Path, tmp_path: Path, blank: str | None = "unlabelled") -> dict:
    """The shipped table_example on `folder`, shrunk to seconds, every target's `blank`
    set (None: left at its default); the class task weighs its classes and smooths."""
    raw = yaml.safe_load((Path(cnnlab.__file__).parent / "recipes/table_example.yaml").read_text())
    raw["data"]["table"] = str(folder / "labels.csv")
    raw["data"]["augment"] = {"hflip": True, "translate": 0}
    for spec in raw["data"]["targets"].values():
        spec.update({"blank": blank} if blank else {})
    raw["model"]["filters"] = 8
    raw["tasks"]["kind"].update(class_weights="balanced", label_smoothing=0.1)
    raw["tasks"]["counts"] = {"type": "regression", "target": "counts"}
    raw["train"].update(epochs=2, batch_size=32, progress=False, threads=1, device="cpu")
    raw["train"].update(report=False, precision="fp32", monitor="val.kind.accuracy")
    raw["output_dir"] = str(tmp_path / "runs")
    return raw


def no_runs(tmp_path: Path) -> bool:
    runs = tmp_path / "runs"
    return not runs.exists() or not any(runs.iterdir())


# ------------------------------------------------------------------------- losses


def fitted(**tasks) -> dict:
    made = create_tasks(load_recipe(tasks_recipe(tasks)).tasks)
    values = torch.tensor([0.0, 1.0, float("nan"), 3.0])  # a regression's: one blank
    for task in made.values():
        classes = ["a", "b", "c"] if task.cfg.type == "classification" else None
        task.fit(TargetSpec(classes=classes), lambda: values)
    return made


def tasks_recipe(tasks: dict) -> dict:
    return {"data": {"source": "fashion_mnist"}, "model": {"backbone": "cnn"}, "tasks": tasks}


def test_a_loss_counts_labelled_rows_and_a_batch_without_one_is_zero_not_nan():
    tasks = fitted(
        cls={"type": "classification", "target": "label", "label_smoothing": 0.1,
             "class_weights": [0.5, 1.0, 2.0]},
        reg={"type": "regression", "target": "ink", "loss": "smooth_l1"},
    )  # fmt: skip
    cls, reg = tasks["cls"], tasks["reg"]
    assert reg.info.mean == pytest.approx(4 / 3)  # NaN left out of the standardization
    head = cls.carry_weights(torch.nn.Module())
    logits = torch.randn(5, 3, requires_grad=True)
    target = torch.tensor([0, NO_CLASS, 2, 1, NO_CLASS])
    expected = F.cross_entropy(
        logits[[0, 2, 3]], target[[0, 2, 3]], weight=head.class_weight, label_smoothing=0.1
    )
    assert cls.loss(head, logits, target).item() == pytest.approx(expected.item())
    none = cls.loss(head, logits, torch.full((5,), NO_CLASS))
    none.backward()
    assert none.item() == 0.0 and torch.equal(logits.grad, torch.zeros(5, 3))

    rhead = reg.head(SimpleNamespace(num_features=4))
    out = torch.randn(4, requires_grad=True)
    y = torch.tensor([1.0, float("nan"), 2.0, float("nan")])
    ok = ~y.isnan()
    expected = F.smooth_l1_loss(out[ok], rhead.encode(y[ok]))
    assert reg.loss(rhead, out, y).item() == pytest.approx(expected.item())
    none = reg.loss(rhead, out, torch.full((4,), float("nan")))
    none.backward()
    assert none.item() == 0.0 and torch.equal(out.grad, torch.zeros(4))


# ------------------------------------------------------------------ stop, drop, refuse


def test_a_blank_cell_stops_by_default_naming_the_field_that_keeps_its_row(blanks, tmp_path):
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(recipe_dict(blanks, tmp_path, blank=None))
    message = str(err.value)
    assert "column 'kind': no class on lines" in message and "\n" not in message
    assert "set data.targets.kind.blank: drop (such rows left out) or unlabelled" in message
    assert "data.targets.area.blank" in message and no_runs(tmp_path)


def test_drop_leaves_out_the_rows_with_one_line_per_target(blanks, tmp_path, capsys):
    raw = recipe_dict(blanks, tmp_path, blank="drop")
    for name in ("counts", "mask"):  # kind and area drop their blank rows
        del raw["data"]["targets"][name]
        raw["tasks"].pop(name)
    cfg = load_recipe(raw).data
    kept = [i for i in range(ROWS) if i % 3 != 1 and i % 4 != 1]
    split = lambda lo, hi: sum(lo <= i < hi for i in kept)  # noqa: E731
    assert describe(cfg).sizes == {"train": split(0, 80), "val": split(80, 90),
                                   "test": split(90, 100)}  # fmt: skip
    capsys.readouterr()
    data = table.load(cfg)
    line = capsys.readouterr().err
    assert (
        "table: left out 33 rows without kind (data.targets.kind.blank: drop), 25 rows "
        "without area (data.targets.area.blank: drop)" in line
    )
    assert f"{len(kept)} rows stay" in line
    assert len(data.train) + len(data.val) + len(data.test) == len(kept)
    assert (data.train.targets["kind"] >= 0).all() and not data.test.targets["area"].isnan().any()


def test_a_target_without_a_labelled_training_row_is_refused_in_one_line(blanks, tmp_path):
    def unlabelled(i: int, row: dict) -> None:
        row["area"] = "" if row["split"] == "train" else row["area"] or "0.5"

    folder = rewritten(blanks, tmp_path, unlabelled)
    with pytest.raises(CnnlabError) as err:
        cnnlab.train(recipe_dict(folder, tmp_path))
    message = str(err.value)
    assert message.startswith("target 'area': none of its 80 training rows has a label")
    assert "take the task on 'area' out of the recipe" in message and "\n" not in message
    assert no_runs(tmp_path)


# ------------------------------------------------------------- missing-value markers


def rewritten(folder: Path, tmp_path: Path, change) -> Path:
    """A copy of `folder` whose labels.csv rows (dicts) `change(i, row)` edits in place."""
    out = tmp_path / "rewritten"
    shutil.copytree(folder, out)
    return edit_table(out, change)


MARKERS = ["NA", "N/A", "NaN", "nan", "null", "NULL", "None", "#N/A", "na", "  "]


def marked(column: str):
    """An edit writing what R, pandas, Excel or SQL write for a missing value (MARKERS, in
    turn) into the blank cells of `column`."""

    def change(i: int, row: dict) -> None:
        if i % BLANK[column] == 1:
            row[column] = MARKERS[(i // BLANK[column]) % len(MARKERS)]

    return change


def test_na_and_the_other_missing_value_markers_are_blank_cells(blanks, tmp_path):
    """R's NA in a severity column under blank: unlabelled was "not a number ... or remove
    its row": each marker now reads as an empty cell does, and `blank` decides."""
    folder = rewritten(blanks, tmp_path, lambda i, row: [marked(c)(i, row) for c in BLANK])
    rows = table.read_rows(load_recipe(recipe_dict(folder, tmp_path)).data)
    expected = table.read_rows(load_recipe(recipe_dict(blanks, tmp_path)).data)
    for name in ("kind", "area", "counts"):
        assert np.array_equal(rows.values[name], expected.values[name], equal_nan=True), name
    assert rows.masks["mask"] == expected.masks["mask"]  # a mask's NA names no file
    assert any("'None' (" in note and "read as blank" in note for note in rows.notes)


def test_a_marker_under_stop_says_it_reads_as_missing_and_names_blank(blanks, tmp_path):
    folder = rewritten(blanks, tmp_path, lambda i, row: row.update(area=row["area"] or "NA"))
    with pytest.raises(CnnlabError) as err:
        table.read_rows(load_recipe(recipe_dict(folder, tmp_path, blank=None)).data)
    message = str(err.value)
    assert "column 'area': no value (read as missing) on lines 3, 7, 11," in message
    assert "(all 'NA'); column 'squares'" in message
    assert (
        "fill in each empty cell or remove its row, or set data.targets.area.blank: drop "
        "(such rows left out) or unlabelled"
        in message
        and "\n" not in message
    )


def test_a_class_named_like_a_marker_is_blank_unless_the_classes_list_it(blanks, tmp_path):
    """ "None" may be a class (no disease): read as blank it is said in a line at loading, or
    in the refusal under stop, each naming data.targets.NAME.classes; listed, it is a class."""
    folder = rewritten(blanks, tmp_path, lambda i, row: row.update(kind=row["kind"] or "None"))
    raw = recipe_dict(folder, tmp_path)
    raw["data"]["targets"]["kind"]["blank"] = "stop"
    with pytest.raises(CnnlabError) as err:
        table.read_rows(load_recipe(raw).data)
    assert "column 'kind': no class (read as missing) on lines 3, 6, 9," in str(err.value)
    assert "33 bad values" in str(err.value) and "no class on" not in str(err.value)  # once
    assert "if 'None' is a class, list the classes in data.targets.kind.classes" in str(err.value)
    raw["data"]["targets"]["kind"]["blank"] = "unlabelled"
    rows = table.read_rows(load_recipe(raw).data)
    assert rows.classes["kind"] == ["disc", "square", "triangle"]
    assert (rows.values["kind"][1::3] == NO_CLASS).all()
    assert rows.notes == [
        "table: column 'kind': 'None' (33 rows) read as blank (a missing value; "
        "data.targets.kind.blank: unlabelled); if 'None' is a class, list the classes in "
        "data.targets.kind.classes"
    ]
    raw["data"]["targets"]["kind"]["classes"] = ["disc", "None", "square", "triangle"]
    rows = table.read_rows(load_recipe(raw).data)
    assert (rows.values["kind"][1::3] == 1).all() and not rows.notes


def test_cnnlab_check_says_what_loading_says_of_the_rows(blanks, tmp_path):
    """`cnnlab check` said "sound" and nothing else of a table whose 'None' cells were read
    as blank and whose missing file was left out: the lines training gives came only then."""
    folder = rewritten(blanks, tmp_path, lambda i, row: row.update(kind=row["kind"] or "None"))
    (folder / "images" / "00005.png").unlink()
    raw = recipe_dict(folder, tmp_path)
    raw["data"]["targets"]["kind"]["blank"] = "unlabelled"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    done = run_cli("check", str(tmp_path / "r.yaml"))
    assert done.returncode == 0, done.stderr
    said = done.stderr.splitlines()
    assert said[0].startswith("table: warning: 1 row skipped, naming a file that does not exist")
    assert said[1].startswith("table: column 'kind': 'None' (33 rows) read as blank")
    assert said[2].startswith("table: kind has 3 classes (rows): disc ")
    assert done.stdout.startswith("table_example: sound. Data table: train 79, val 10, test 10")


def test_a_word_in_a_column_that_allows_blanks_is_emptied_not_its_row_removed(blanks, tmp_path):
    folder = rewritten(blanks, tmp_path, lambda i, row: row.update(area=row["area"] or "n.d."))
    with pytest.raises(CnnlabError) as err:
        table.read_rows(load_recipe(recipe_dict(folder, tmp_path)).data)
    assert str(err.value).endswith(
        "write each number plainly (0.25, 1e-3: a decimal point, no units or words), or empty "
        "the cell (data.targets.area.blank: unlabelled keeps its row for the other targets)"
    )
    assert "remove its row" not in str(err.value)


# ---------------------------------------------------------------------- unlabelled


def test_unlabelled_rows_train_the_other_targets_and_count_in_no_metric(blanks, tmp_path, capsys):
    raw = recipe_dict(blanks, tmp_path)
    raw["train"]["report"] = True
    run = cnnlab.train(raw)
    said = capsys.readouterr().err
    assert "data: labelled rows (the others train their other targets): area: " in said
    assert "; kind: 53 of 80 train, 7 of 10 val, 7 of 10 test; mask: " in said
    for row in run.metrics.to_dict("records"):
        losses = [v for k, v in row.items() if k.endswith("loss")]
        assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    metrics, view = run.test_metrics, RunView(run.path)
    preds = view.test_predictions

    truth, pred = preds.truth["kind"], preds.pred["kind"]
    ok = truth != NO_CLASS
    assert 0 < int(ok.sum()) < len(truth)  # test rows without a class are there
    assert metrics["test.kind.accuracy"] == pytest.approx((pred[ok] == truth[ok]).float().mean())
    f1 = multiclass_f1_score(pred[ok], truth[ok], 3, average="macro")
    assert metrics["test.kind.f1"] == pytest.approx(float(f1))
    task = view.tasks["kind"]
    ece = scores(task, preds.rows["kind"], task.temperature)["ece"]
    assert len(preds.rows["kind"].targets) == int(ok.sum())
    assert metrics["test.kind.ece"] == pytest.approx(ece, abs=2e-3)
    for name in ("area", "counts"):
        truth, pred = preds.truth[name], preds.pred[name]
        ok = ~truth.isnan()
        err = pred[ok] - truth[ok]
        assert 0 < int(ok.sum()) < truth.numel()
        assert metrics[f"test.{name}.mae"] == pytest.approx(float(err.abs().mean()), rel=1e-5)
        assert metrics[f"test.{name}.rmse"] == pytest.approx(float(err.square().mean().sqrt()),
                                                             rel=1e-5)  # fmt: skip
    squares = ~preds.truth["counts"][:, 1].isnan()
    err = preds.pred["counts"][squares, 1] - preds.truth["counts"][squares, 1]
    assert metrics["test.counts.rmse_squares"] == pytest.approx(float(err.square().mean().sqrt()))
    truth, pred = preds.truth["mask"], preds.pred["mask"]
    ok = truth != NO_CLASS
    assert (~ok).flatten(1).all(1).any()  # a blank mask cell: no pixel labelled
    assert metrics["test.mask.accuracy"] == pytest.approx((pred[ok] == truth[ok]).float().mean())

    html = (run.path / "report.html").read_text()
    for key in ("confusion_kind", "mistakes_kind", "mistakes_area", "regression_area",
                "reliability_kind", "pixels_mask", "predictions"):  # fmt: skip
        assert key in html, key
    (data,) = make_charts(view, "data")
    assert "kind: no label for 27 of 80 train, 3 of 10 validation, 3 of 10 test" in data.caption
    (grid,) = make_charts(view, "predictions", grid="4x5")
    texts = [t.get_text() for t in grid.figure.findobj(lambda o: hasattr(o, "get_text"))]
    assert any("(no label)" in t for t in texts) and any("area ? →" in t for t in texts)
    parity = run.export().parity
    assert parity.accuracy["kind"][0] == pytest.approx(metrics["test.kind.accuracy"])
    with warnings.catch_warnings():  # two tiny epochs: temperatures far from 1, said so
        warnings.simplefilter("ignore")
        run.calibrate()  # fitted on the 7 labelled validation rows, judged on the 7 of test
    fitted = json.loads((run.path / "calibration.json").read_text())["tasks"]["kind"]
    assert fitted["val"]["rows"] == 7 and fitted["test"]["rows"] == 7
    assert math.isfinite(fitted["temperature"]) and math.isfinite(fitted["test"]["after"]["nll"])


def test_a_run_with_unlabelled_rows_resumes_exactly(blanks, tmp_path):
    raw = recipe_dict(blanks, tmp_path)
    raw["train"]["tta"] = ["hflip"]  # test-time views of rows without a label too
    recipe = load_recipe(raw)
    reference = train(recipe)
    run = interrupted(recipe, 2)  # mid-epoch 1: the meter's labelled counts in last.pt
    assert load_checkpoint(run.last_path)["loop"]["step"] == 2
    assert len(reference.read_metrics()) == 2
    assert_same_run(train(recipe, resume=run.path), reference)
    assert all(v == v for v in reference.test_metrics().values())  # no NaN


def test_an_older_checkpoints_epoch_sums_resume_in_the_labelled_layout():
    """Sums an older cnnlab saved mid-epoch (each task's means times the images) restore
    with each task's labelled count taken as the images: the same epoch metrics."""
    tasks = fitted(
        cls={"type": "classification", "target": "label"},
        reg={"type": "regression", "target": "ink"},
    )
    meter = EpochMeter(tasks, torch.device("cpu"), detailed=False)
    # 10 images: loss 2.0; cls loss 1.5, accuracy 0.6; reg loss 0.5, mae 0.3, mse 0.16
    old = torch.tensor([10, 2.0, 1.5, 0.6, 0.5, 0.3, 0.16], dtype=torch.float64) * 10
    old[0] = 10
    meter.restore({"sums": old})
    assert meter.sums[[2, 5]].tolist() == [10, 10]  # each task's labelled images
    got = meter.compute("train")
    assert got["train.loss"] == pytest.approx(2.0)
    assert got["train.cls.loss"] == pytest.approx(1.5)
    assert got["train.cls.accuracy"] == pytest.approx(0.6)
    assert got["train.reg.mae"] == pytest.approx(0.3)
    assert got["train.reg.rmse"] == pytest.approx(0.4)
