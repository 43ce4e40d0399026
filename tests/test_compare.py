"""`cnnlab compare` / `cnnlab.compare`: ordinary runs side by side. Tiny runs of the demo
recipe that differ in one field each: the table names it with both values, the test metrics
are each run's test_metrics.json, the curves have one line per run per panel, the page
renders in headless Chromium with user text as text, a loss that is another function is
said, runs with other tasks compare on what they share, and every mistake is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import cnnlab
from cnnlab.api import train
from cnnlab.comparison import compare
from cnnlab.errors import CnnlabError
from tests.browser import chromium, visit
from tests.conftest import run_cli, tiny_recipe
from tests.test_report import FIGURES_JS

# fp32 for all: `auto` decides by timing, and on a busy host two runs chose differently
SMALL = ["data.train_subset=600", "data.test_subset=200", "train.epochs=2", "train.precision=fp32"]
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """base; filters: model.base_filters 4 (not the loss); smooth: no label smoothing (the
    loss); cls_only: without the ink task. Each trained once, read by every test."""
    tmp = tmp_path_factory.mktemp("compare")
    variants = {
        "base": [],
        "filters": ["model.base_filters=4"],
        "smooth": ["tasks.cls.label_smoothing=0.0"],
        "cls_only": ["tasks.ink=null"],
    }
    return {
        name: train(tiny_recipe(tmp / name, *SMALL, *sets, f"name={name}")).path
        for name, sets in variants.items()
    }


def test_the_table_names_the_differing_field_and_each_runs_test_metrics(runs, tmp_path):
    found = compare([runs["base"], runs["filters"]], out=tmp_path / "out")
    assert found.differs == ["model.base_filters"]
    table = found.table
    assert list(table["run"]) == [runs["base"].name, runs["filters"].name]
    assert list(table["model.base_filters"]) == [8, 4]
    assert list(table.columns[:2]) == ["run", "model.base_filters"]  # what differs comes first
    for row, run in zip(table.to_dict("records"), (runs["base"], runs["filters"]), strict=True):
        test = json.loads((run / "test_metrics.json").read_text())
        assert row["best epoch"] == test.pop("best_epoch")
        assert {k: row[k] for k in test} == test  # every test metric, exactly
        assert row["training minutes"] > 0
    assert found.notes == []  # the same loss: nothing to say
    assert found.page == tmp_path / "out" / "compare.html"
    assert {p.name for p in found.folder.iterdir()} == {
        "compare.html", "compare.csv", "losses.png", "metrics.png",
    }  # fmt: skip
    html = found.page.read_text()
    assert "<th>model.base_filters</th>" in html and 'id="loss-note"' not in html
    recalls = found.classes["cls"]  # what a macro mean hides: each class, a column per run
    assert list(recalls.columns) == ["class", "test images", *table["run"]]
    assert len(recalls) == 10 and "Ankle boot" in set(recalls["class"])  # Fashion-MNIST's
    for run, row in zip(table["run"], table.to_dict("records"), strict=True):
        images = recalls["test images"]
        overall = (recalls[run] * images).sum() / images.sum()  # the recalls, weighed: accuracy
        assert overall == pytest.approx(row["test.cls.accuracy"], abs=1e-6)
    assert 'id="classes"' in html and "cls: test recall per class (" in "\n".join(found.lines())
    assert "<script src" not in html and "Plotly.newPlot" in html  # self-contained


def test_the_curves_have_one_line_per_run_per_panel(runs, tmp_path):
    names = ["base", "filters"]
    found = compare([runs[n] for n in names], out=tmp_path, names=names)
    losses, metrics = found.charts
    titles = [a.get_title() for a in losses.figure.axes if a.get_visible()]
    assert titles == ["train.loss", "val.loss", "val.cls.loss", "val.ink.loss"]
    titles = [a.get_title() for a in metrics.figure.axes if a.get_visible()]
    assert {"val.cls.accuracy", "val.cls.f1", "val.ink.rmse"} <= set(titles)
    assert not any(t.endswith("loss") for t in titles)
    for chart in found.charts:
        panels = [a for a in chart.figure.axes if a.get_visible()]
        for ax in panels:  # one line (and its markers) per run
            assert len(ax.collections) == 2 and len(ax.lines) == 2, ax.get_title()
        assert [t.get_text() for t in panels[0].get_legend().get_texts()] == names
        traces: dict[str, list[str]] = {}
        for trace in chart.plotly.data:
            traces.setdefault(trace.xaxis, []).append(trace.name)
            assert [x for x in trace.x if x is not None] == [1, 2]  # two epochs each
        assert list(traces.values()) == [names] * len(panels)
        shown = [t.name for t in chart.plotly.data if t.showlegend is not False]
        assert shown == names  # the legend names each run once, for every panel


def test_the_page_renders_in_chromium_and_user_text_stays_text(runs, tmp_path):
    names = [EVIL, "b & <i>co</i>"]
    found = compare([runs["base"], runs["smooth"]], out=tmp_path, names=names)
    html = found.page.read_text()
    assert EVIL not in html and "<i>co</i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "b &amp; &lt;i&gt;co" in html
    check = f"""({{figures: {FIGURES_JS},
        text: document.body.innerText, title: document.title,
        italic: document.querySelectorAll('main i').length}})"""
    with chromium() as browser:
        page = visit(browser, found.page.as_uri(), check)
    assert page.console_errors == [] and page.dialogs == []
    seen = page.value
    drawn = {f["id"]: f["drawn"] and f["w"] > 300 and f["h"] > 200 for f in seen["figures"]}
    assert drawn == {"plot-losses": True, "plot-metrics": True}
    assert EVIL in seen["text"] and "b & <i>co</i>" in seen["text"] and seen["italic"] == 0
    assert seen["title"] == f"cnnlab compare: {EVIL}, b & <i>co</i>"


def test_losses_that_are_different_functions_get_a_note(runs, tmp_path):
    with pytest.warns(UserWarning, match="loss curves are not comparable"):
        found = cnnlab.compare([cnnlab.load_run(runs["base"]), runs["smooth"]], out=tmp_path)
    assert found.differs == ["tasks.cls.label_smoothing"]
    assert list(found.table["tasks.cls.label_smoothing"]) == [0.1, 0.0]
    (note,) = found.notes
    assert note.startswith("The loss curves are not comparable across these runs")
    assert f"tasks.cls.label_smoothing is 0.1 in {runs['base'].name}, 0.0 in " in note
    assert note.endswith("Compare the metrics instead.")
    html = found.page.read_text()
    assert 'id="loss-note"' in html and html.index("plot-losses") < html.index('id="loss-note"')
    assert html.count("loss curves are not comparable") == 1  # under the chart, not twice
    shown = found._repr_html_()  # a notebook shows the table
    assert "</table>" in shown and "tasks.cls.label_smoothing" in shown


def test_runs_with_other_tasks_compare_what_they_share(runs, tmp_path):
    found = compare([runs["base"], runs["cls_only"]], out=tmp_path)
    left_out, lossy = found.notes
    base = runs["base"].name
    assert left_out.startswith("left out, as not every run has them: ")
    assert "ink.loss" in left_out and "ink.rmse" in left_out and f"(only in {base})" in left_out
    assert f"task ink is only in {base}" in lossy
    assert found.differs == ["tasks.ink"]  # the task dropped: one field, not its every key
    assert list(found.table["tasks.ink"]) == ["regression", "—"]  # not in that run
    assert not [c for c in found.table.columns if ".ink." in c]
    assert "test.cls.accuracy" in found.table.columns
    panels = [a.get_title() for c in found.charts for a in c.figure.axes if a.get_visible()]
    assert "val.cls.accuracy" in panels and not [p for p in panels if "ink" in p]
    assert "val.cls.loss" not in panels  # one task in common: its loss is the total


def test_the_command_prints_a_line_per_run_and_writes_beside_not_into_the_runs(runs, tmp_path):
    before = {p: sorted(p.rglob("*")) for p in (runs["base"], runs["filters"])}
    out = run_cli("compare", str(runs["base"]), str(runs["filters"]), "--names", "a,b",
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "differing recipe fields: model.base_filters"
    test = json.loads((runs["filters"] / "test_metrics.json").read_text())
    assert lines[2].startswith("b  model.base_filters=4  best epoch ")
    assert f"cls.accuracy {test['test.cls.accuracy']:.4f}" in lines[2]
    assert f"ink.rmse {test['test.ink.rmse']:.4f}" in lines[2]
    (folder,) = tmp_path.glob("compare-*")  # the default: ./compare-<time>
    assert lines[-1] == f"report: {folder.name}/compare.html"  # from where the user is
    assert (folder / "compare.html").is_file()
    assert {p: sorted(p.rglob("*")) for p in before} == before  # nothing written into a run
    # a folder that holds runs stands for them; `report` on it says to compare
    both = tmp_path / "cmp"
    both.mkdir()
    for name in ("base", "filters"):
        shutil.copytree(runs[name], both / name)
    out = run_cli("compare", str(both), "--out", str(tmp_path / "o"))
    assert out.returncode == 0 and "report: " in out.stdout, out.stderr
    out = run_cli("report", str(both))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: {both} is not a run folder but holds 2 runs; compare them with "
        f"cnnlab compare {both}"
    )


def test_each_mistake_is_one_line(runs, tmp_path):
    base, other = runs["base"], runs["filters"]
    out = run_cli("compare", str(base), str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {tmp_path} is not a run folder (no recipe.yaml); " + (
        "runs live in runs/<name>-<time>"
    )
    with pytest.raises(CnnlabError, match=r"compare needs two run folders or more; got 1 \("):
        compare([base])
    started = tmp_path / "started"
    shutil.copytree(other, started)
    (started / "metrics.jsonl").write_text("")
    with pytest.raises(CnnlabError, match=f"^{started} has no finished epoch yet"):
        compare([base, started])
    with pytest.raises(CnnlabError, match=f"^compare: {base} is given twice$"):
        compare([base, base])
    with pytest.raises(CnnlabError, match="--names gives 1 names for 2 runs"):
        compare([base, other], names=["a"])
    with pytest.raises(CnnlabError, match="'a' names two of them"):
        compare([base, other], names=["a", "a"])
    with pytest.raises(CnnlabError, match="is inside the run"):
        compare([base, other], out=base / "comparison")
    assert not (base / "comparison").exists()


def test_runs_without_test_metrics_show_val_at_the_best_epoch_and_values_as_yaml(runs, tmp_path):
    """A sweep's trials have no test metrics: every run's validation metrics at its best
    epoch stand in, said so; a recipe's null reads null (as YAML writes it), not None."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs["base"], a)
    shutil.copytree(runs["filters"], b)
    (a / "test_metrics.json").unlink()  # as a trial that `select --test` did not pick
    recipe = yaml.safe_load((b / "recipe.yaml").read_text())
    recipe["train"]["init_from"] = "runs/pretrained"
    (b / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    found = compare([a, b], out=tmp_path / "out")
    assert found.differs == ["model.base_filters", "train.init_from"]
    assert list(found.table["train.init_from"]) == ["null", "runs/pretrained"]
    assert found.numbers == "val at the best epoch"
    rows = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    (row,) = found.table.to_dict("records")[:1]
    best = next(r for r in rows if r["epoch"] == row["best epoch"])
    assert {k: row[k] for k in best if k.startswith("val.")} == {
        k: v for k, v in best.items() if k.startswith("val.")
    }  # every validation metric of that epoch, exactly
    assert not [c for c in found.table.columns if c.startswith("test.")]
    line = found.lines()[0]
    assert line.startswith("a  model.base_filters=8  train.init_from=null  best epoch ")
    assert f"val at the best epoch: loss {best['val.loss']:.4f}  " in line
    assert found.notes == [
        "b started from the weights of runs/pretrained (train.init_from): its epoch 1 comes "
        "after that run's training, which its curves and minutes leave out",
        "no test metrics in a (its test did not run): the table shows every run's validation "
        "metrics at its best epoch (val at the best epoch)",
    ]
    assert "val.cls.accuracy" in (tmp_path / "out" / "compare.csv").read_text().splitlines()[0]


def test_a_run_started_from_another_and_another_precision_are_said(runs, tmp_path):
    base = Path(shutil.copytree(runs["base"], tmp_path / "base"))
    child = Path(shutil.copytree(runs["filters"], tmp_path / "child"))
    recipe = yaml.safe_load((child / "recipe.yaml").read_text())
    recipe["train"]["init_from"] = str(base / "checkpoints" / "best.pt")
    (child / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = json.loads((child / "env.json").read_text())
    chosen = json.loads((base / "env.json").read_text())["precision"]["precision"]
    env["precision"]["precision"] = "bf16"  # the runs trained in fp32 (SMALL)
    (child / "env.json").write_text(json.dumps(env))
    found = compare([base, child], out=tmp_path / "out", names=["a", "b"])
    assert (
        "b started from the weights of a (train.init_from): its epoch 1 comes after that "
        "run's training, which its curves and minutes leave out"
    ) in found.notes
    other = env["precision"]["precision"]
    assert (
        f"the runs trained in different precisions (a {chosen}, b {other}): compare their "
        "minutes and their metrics' last digits with care, or set train.precision"
    ) in found.notes
    assert not [n for n in found.notes if "calibrated" in n]  # neither is: nothing to say
    assert not [n for n in found.notes if "processes" in n]  # both trained on one
    env["processes"] = 2  # under torchrun
    (child / "env.json").write_text(json.dumps(env))
    found = compare([base, child], out=tmp_path / "out", names=["a", "b"])
    assert (
        "the runs trained on different numbers of processes (a 1, b 2; torchrun): each batch "
        "was split across them, so BatchNorm saw each process's share and the minutes are of "
        "other hardware; compare their last digits and minutes with care"
    ) in found.notes
    (child / "calibration.json").write_text(json.dumps({"tasks": {"cls": {"temperature": 0.8}}}))
    found = compare([base, child], out=tmp_path / "out", names=["a", "b"])
    assert (
        "b was calibrated (cnnlab calibrate), the others not: their ECE and NLL are at a fitted "
        "temperature, the others' at the model's own; calibrate each run to compare them"
    ) in found.notes


def test_fields_of_one_backbone_alone_are_a_note_not_columns():
    """A CNN from scratch beside two timm runs: the CNN's own fields (the same wherever they
    are) are one note; model.unfreeze_at, which the timm runs set apart, stays a column."""
    from types import SimpleNamespace

    from cnnlab.comparison import own_fields
    from cnnlab.differences import varying

    recipes = [
        {"model.backbone": "cnn", "model.blocks": 4, "model.stem": "pooled", "seed": 0},
        {"model.backbone": "timm", "model.unfreeze_at": None, "seed": 0},
        {"model.backbone": "timm", "model.unfreeze_at": 2, "seed": 0},
    ]
    records = [SimpleNamespace(recipe=r) for r in recipes]
    kept, note = own_fields(records, varying(recipes))
    assert kept == ["model.backbone", "model.unfreeze_at"]
    assert note == (
        "left out of the table: model.blocks, model.stem, fields of some runs' recipes only "
        "(another backbone's own), the same wherever they are"
    )
    assert own_fields(records[1:], varying(recipes[1:])) == (["model.unfreeze_at"], None)
