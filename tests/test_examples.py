"""The examples a user starts from run as shipped: the quickstart notebook top to bottom in a
real Jupyter kernel, the custom-backbone script, and its class through `cnnlab --import`."""

from __future__ import annotations

import ast
import importlib.util
import json
import runpy
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pytest
import torch
import yaml
from torchmetrics.functional.classification import binary_calibration_error

import cnnlab
from cnnlab.api import load_recipe
from cnnlab.components import registration_scope
from cnnlab.models import BACKBONES
from cnnlab.viz import RunView
from tests.conftest import ROOT, run_cli

EXAMPLES = ROOT / "examples"
NOTEBOOK = EXAMPLES / "quickstart.ipynb"
SCRIPT = EXAMPLES / "custom_backbone.py"
TASK_SCRIPT = EXAMPLES / "custom_task.py"
CHANCE = 0.1  # ten Fashion-MNIST classes


# ------------------------------------------------------------------------ helpers


def kernel_manager(folder: Path):
    """A "python3" kernel that runs this interpreter (the venv's, where cnnlab is installed),
    whatever kernelspecs the machine or the user's Jupyter folders hold."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    write_kernel_spec(folder / "python3")  # argv: sys.executable -m ipykernel_launcher ...
    specs = KernelSpecManager(kernel_dirs=[str(folder)])
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    assert manager.kernel_spec.argv[0] == sys.executable
    return manager


def cell(nb, text: str):
    """The code cell whose source is `text`, else the one cell whose source contains it."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    exact = [c for c in code if c.source.strip() == text]
    (found,) = exact or [c for c in code if text in c.source]
    return found


def data(cell_, mime: str) -> list[str]:
    """Every `mime` payload the cell displayed or returned."""
    return [o["data"][mime] for o in cell_.outputs if mime in o.get("data", {})]


def result(cell_) -> str:
    """The text of the cell's value (its last line's), as Jupyter shows it under the cell."""
    (found,) = [o for o in cell_.outputs if o["output_type"] == "execute_result"]
    return found["data"]["text/plain"]


def text(cell_) -> str:
    """What the cell printed and its text results, together."""
    printed = [o.get("text", "") for o in cell_.outputs if o["output_type"] == "stream"]
    return "".join(printed) + "".join(data(cell_, "text/plain"))


# ------------------------------------------------------------------------ fast checks


def test_notebook_is_kept_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and [c for c in nb.cells if c.cell_type == "markdown"]
    for c in code:
        assert c.outputs == [], f"outputs kept in cell {c.id}: clear them before committing"
        assert c.execution_count is None, f"execution count kept in cell {c.id}"
    assert nb.metadata.kernelspec.name == "python3"


def test_script_imports_without_training(tmp_path, monkeypatch):
    """`--import examples/custom_backbone.py` only registers TinyNet: nothing trains."""
    monkeypatch.chdir(tmp_path)
    with registration_scope():
        spec = importlib.util.spec_from_file_location("custom_backbone_example", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        assert "tinynet" in BACKBONES
        recipe = load_recipe("fashion_fast", {"model": {"backbone": "tinynet", "width": 8}})
        assert recipe.model.backbone == "tinynet" and recipe.model.width == 8
    assert "tinynet" not in BACKBONES
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_cli_lists_the_imported_task_type_with_its_keys_and_metrics():
    out = run_cli("--import", "examples/custom_task.py", "tasks")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines[::4]] == [
        "classification", "regression", "pixel_classification", "tags"
    ]  # fmt: skip
    assert lines[-3].split() == [
        "<name>:", "{type:", "tags,", "target:", "<target>,", "weight:", "1.0,", "head:",
        "{hidden:", "[128],", "dropout:", "0.3,", "activation:", "relu},", "threshold:", "0.5}",
    ]  # fmt: skip
    assert lines[-2].strip() == (
        "metrics: loss, macro_f1, exact, f1_<class or component>; probabilities: calibrate "
        "fits their temperature"
    )
    assert lines[-1].strip() == "figures: mistakes, reliability, roc"
    assert lines[6].strip() == (  # a regression has no probabilities, but a range
        "metrics: loss, mae, rmse, mae_<class or component>, rmse_<class or component>; "
        "calibrate fits each value a range"
    )


def test_cli_lists_the_imported_backbone():
    out = run_cli("--import", "examples/custom_backbone.py", "backbones")
    assert out.returncode == 0, out.stderr
    assert "tinynet" in out.stdout


# ------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    runs = tmp_path / "runs"
    monkeypatch.setenv("CNNLAB_EXAMPLES_OUT", str(runs))
    client = NotebookClient(
        nb,
        km=kernel_manager(tmp_path / "kernels"),
        timeout=600,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working folder
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the traceback, at a failing cell
    seconds = time.perf_counter() - start
    print(f"quickstart.ipynb ran in {seconds:.0f} s")  # about 1.5 min on two CPU cores

    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    # a bar left nothing behind: no "Output()" widget, no empty HTML (16 in a 3-epoch cell)
    assert not [
        o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    bars = [o for o in outputs if o.get("data", {}).get("text/plain") == ""]
    assert all(list(o["data"]) == ["text/plain"] for o in bars)
    assert "cls" in text(cell(nb, "recipe = cnnlab.load_recipe"))
    (metrics,) = data(cell(nb, "run.metrics["), "text/html")
    assert "val.cls.accuracy" in metrics and "<table" in metrics
    test = ast.literal_eval(result(cell(nb, "run.test_metrics")))
    assert test["best_epoch"] == 1 and test["test.cls.accuracy"] > 3 * CHANCE
    for figure in ('run.figure("curves")', 'run.figure("confusion")'):
        assert data(cell(nb, figure), "image/png"), f"{figure} showed no picture"
    (table,) = data(cell(nb, "p.table()"), "text/html")
    assert "true class" in table and "Ankle boot" in table
    assert table.count("<tr") == 1 + 8  # the header, then one row per image

    assert len(data(cell(nb, 'run.figure("attributions"'), "image/png")) == 2  # cls, ink
    (fitted,) = data(cell(nb, "run.calibrate()"), "text/html")
    assert "temperature" in fitted and "ece after" in fitted and "halfwidth" in fitted
    assert fitted.count("<tr") == 1 + 4  # cls's temperature and ink's interval, val and test
    assert data(cell(nb, 'run.figure("reliability")'), "image/png")
    shipped = result(cell(nb, "exported = run.export()"))
    assert shipped.startswith("exported: ") and "model.onnx" in shipped
    assert "top-1 agreement 100.00%" in shipped  # the file answers as torch does
    (answers,) = data(cell(nb, "exported.predict(files)"), "text/html")
    assert answers.count("<tr") == 1 + 4 and "cls.probability" in answers
    assert len(data(cell(nb, "run.explain(files)"), "image/png")) == 2  # cls, ink

    tiny = cell(nb, '"backbone": "tinynet"')
    assert "backbone='tinynet'" in text(tiny) and "width=24" in text(tiny)
    tiny_test = ast.literal_eval(result(tiny))
    assert tiny_test["test.cls.accuracy"] > 3 * CHANCE  # one short epoch learns something
    assert len(data(cell(nb, 'tiny.figure("feature-maps"'), "image/png")) == 2

    reloaded = result(cell(nb, "cnnlab.load_run(run.path)"))
    assert "finished" in reloaded and reloaded.endswith("True)")  # same test metrics

    trained = text(cell(nb, "run = cnnlab.train(recipe)"))
    assert "epoch   1  train.loss " in trained  # the epoch's line, as plain text
    everything = "".join(text(c) for c in nb.cells if c.cell_type == "code")
    assert "\x1b[" not in everything  # no ANSI codes, which a saved notebook shows raw

    folders = sorted(runs.iterdir())
    assert len(folders) == 2  # the demo run and TinyNet's
    pngs = {p.name for f in folders for p in (f / "figures").glob("*.png")}
    assert {"curves.png", "confusion_cls.png", "feature_maps_1.png"} <= pngs


@pytest.mark.slow
def test_custom_backbone_script(tmp_path, monkeypatch, capsys):
    """Run as a script (`__main__`, its own arguments), in this process: a fresh Python
    would spend its first seconds importing torch again."""
    runs = tmp_path / "runs"
    monkeypatch.chdir(tmp_path)
    argv = [str(SCRIPT), "--epochs", "1", "--out", str(runs), "--train-subset", "2000"]
    monkeypatch.setattr(sys, "argv", argv)
    with registration_scope():
        runpy.run_path(str(SCRIPT), run_name="__main__")
    out = SimpleNamespace(stdout=capsys.readouterr().out)
    (folder,) = runs.iterdir()
    assert f"run folder: {folder}" in out.stdout
    saved = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert saved["model"] == {"backbone": "tinynet", "width": 24}
    test = json.loads((folder / "test_metrics.json").read_text())
    assert test["test.cls.accuracy"] > 3 * CHANCE
    assert f"test accuracy {test['test.cls.accuracy']:.3f}" in out.stdout
    assert "true class" in out.stdout and "Ankle boot" in out.stdout  # the predictions table
    report = folder / "report.html"
    assert f"report: {report}" in out.stdout
    html = report.read_text()
    assert "tinynet" in html
    # every figure of a classification + regression run, drawn on the user's network
    for figure in ("curves", "predictions", "confusion", "regression", "feature-maps",
                   "filters", "guided-backprop", "attributions", "sanity",
                   "dead-units"):  # fmt: skip
        assert f'<section id="{figure}">' in html, figure
    assert "<figure" in html.split('<section id="guided-backprop">')[1].split("</section>")[0]


def test_custom_task_trains_on_a_table_is_explained_and_leaves_as_a_file(tmp_path, monkeypatch):
    """examples/custom_task.py: a task type of one's own (multi-label tags) on a table of
    images, through training (with a test-time view), its per-tag metrics, its figures,
    predict, calibration and export."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with registration_scope():
        spec = importlib.util.spec_from_file_location("custom_task_example", TASK_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        table = module.write_tags_table(tmp_path / "shapes", n=300, size=16)
        run = cnnlab.train(
            module.recipe(table, str(tmp_path / "runs"), epochs=2),
            {
                "train.report": False,
                "train.progress": False,
                "train.precision": "fp32",
                "train.tta": ["hflip"],
                "train.monitor": "val.tags.f1_has_triangle",  # one tag's picks the best epoch
            },
        )
        test = run.test_metrics
        rows = run.metrics.to_dict("records")  # a tie goes to the lower validation loss
        best = max(rows, key=lambda r: (r["val.tags.f1_has_triangle"], -r["val.loss"]))
        assert test["best_epoch"] == best["epoch"]
        each = [test[f"test.tags.f1_{tag}"] for tag in module.TAGS]
        assert test["test.tags.macro_f1"] == pytest.approx(sum(each) / 3, abs=1e-6)
        assert 0 <= test["test.tags.exact"] <= 1
        (worst,) = [c for c in run.figure("mistakes", images=4) if c.key == "mistakes_tags"]
        assert worst.title == "tags: the test images furthest from their true tags"
        assert len(worst.extra["index"]) == 4
        grid = max((t.get_text() for t in run.figure("predictions")[0].figure.texts), key=len)
        assert "tags: true tags → tags predicted" in grid.splitlines()
        files = [table.parent / "images" / f"{i:05d}.png" for i in range(3)]
        tags = run.predict(files)["tags"]
        assert tags.components == list(module.TAGS) and tags.values.shape == (3, 3)
        assert ((tags.values > 0) & (tags.values < 1)).all()  # probabilities, as decoded
        table = run.calibrate()  # the tags' sigmoids get a temperature, as the class's softmax
        assert set(table.task) == {"tags", "kind"}
        t = float(table[table.task == "tags"].temperature.iloc[0])
        assert t != 1.0
        logit = lambda p: np.log(p / (1 - p))  # noqa: E731
        now = run.predict(files)["tags"].values
        assert np.allclose(logit(now) * t, logit(tags.values), atol=1e-3)
        fitted = json.loads((run.path / "calibration.json").read_text())["tasks"]["tags"]
        rows = RunView(run.path).test_predictions.rows["tags"]  # each tag a yes/no answer:
        p = (rows.logits / t).sigmoid()  # the ECE of how sure each is, and whether it is right
        sure, right = torch.maximum(p, 1 - p), (p > 0.5) == (rows.targets > 0.5)
        ece = binary_calibration_error(sure.flatten(), right.flatten().long(), n_bins=15)
        assert fitted["test"]["after"]["ece"] == pytest.approx(float(ece), abs=1e-6)
        assert fitted["test"]["after"]["nll"] < fitted["test"]["before"]["nll"]
        (data,) = run.figure("data")  # tags are counted as images with each, per split
        view = RunView(run.path)
        for split in ("train", "val", "test"):
            with_each = (view.splits.values(split, "tags") == 1).sum(0).tolist()
            assert data.extra["counts"]["tags"][split] == with_each
        assert data.figure.axes[0].get_title() == "tags: images with each"
        (curves,) = [c for c in run.figure("roc") if c.key == "roc_tags"]
        assert list(curves.extra["auc"]) == list(module.TAGS)  # a curve per tag
        (diagram,) = [c for c in run.figure("reliability") if c.key == "reliability_tags"]
        assert "3 predictions each" in diagram.caption
        assert [s["temperature"] for s in diagram.extra["states"]] == [1.0, round(t, 4)]
        exported = run.export("pt2")
        assert np.allclose(exported.predict(files)["tags"].values, now, atol=1e-5)
        explained = {c.key: c for c in run.explain(files, component="has_square")}
        assert "raises the output has_square of tags" in explained["explained_tags"].caption
