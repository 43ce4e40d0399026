"""A run leaves cnnlab: ONNX through PyTorch's dynamo exporter, checked by onnx's checker and
run in onnxruntime against torch on every backbone and task type; .pt2 through torch.export;
one line for a model that cannot be exported."""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab.build import build
from cnnlab.components import register_backbone, registration_scope
from cnnlab.errors import CnnlabError
from cnnlab.experiment import train
from cnnlab.export import (
    compare,
    export_module,
    export_target,
    predict_exported,
    provenance,
    recipe_name,
    run_exported,
    wrap,
)
from cnnlab.models import BACKBONES
from cnnlab.models.compiled import compiled_kernels
from cnnlab.recipe import load_recipe
from cnnlab.runs import LOCK_FILE, RunFolder
from tests.conftest import DEMO, ROOT, run_cli

# fp32 graphs, the same operations in another engine: probabilities agree to this
TOLERANCE = 1e-4
SMALLEST = {
    "resnet": ", n: 1",
    "plainnet": ", n: 1",
    "colorizer": ", filters: 4",
    "timm": ", input_size: 32",
}


def exported_agrees(recipe, tmp_path: Path, images: int = 64) -> None:
    """Export the recipe's (untrained) model and compare onnxruntime with torch."""
    built = build(recipe, device="cpu")
    module = wrap(built)
    test = built.splits.test.images[:images].cpu()
    path = export_module(module, test[:2], tmp_path / "model.onnx", "onnx", "test")
    parity = compare(module, path, test)
    assert parity.images == len(test)
    for name, diff in parity.max_abs_diff.items():
        assert diff < TOLERANCE * max(1.0, float(np.abs(parity.outputs[0][0]).max())), name
    assert all(a >= 0.98 for a in parity.agreement.values()), parity.agreement
    outputs = run_exported(path, test[:3].numpy())  # a batch size the export never saw
    assert [o.shape[0] for o in outputs] == [3] * len(module.names)


def fed_as_the_docs_say(onnx_file: Path, tmp_path: Path) -> None:
    """docs/using-runs.md's snippet that feeds the file without cnnlab, run as written on a
    16-bit image, a transparent one and a JPEG: the answers `cnnlab predict FILE` gives."""
    page = (ROOT / "docs" / "using-runs.md").read_text()
    snippet = page.split("**Feeding the file without cnnlab.**")[1].split("```python\n")[1]
    snippet = snippet.split("```")[0]
    rng = np.random.default_rng(0)
    wide = tmp_path / "wide.png"
    Image.fromarray((rng.random((40, 30)) * 65535).astype(np.uint16)).save(wide)
    clear = tmp_path / "clear.png"
    Image.fromarray((rng.random((30, 40, 4)) * 255).astype(np.uint8), "RGBA").save(clear)
    photo = tmp_path / "photo.jpg"  # large enough for libjpeg to decode it at half size
    Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8)).save(photo, quality=90)
    for image in (wide, clear, photo):
        scope: dict = {}
        exec(snippet.replace('"model.onnx"', repr(str(onnx_file))).replace(
            '"cell.tif"', repr(str(image))), scope)  # fmt: skip
        expected = predict_exported(onnx_file, [image])
        assert np.allclose(scope["answers"][0], expected["cls"].probabilities, atol=1e-6)
        assert np.allclose(scope["answers"][1], expected["ink"].values, atol=1e-6)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_exports_and_onnxruntime_agrees(backbone, tiny, tmp_path):
    recipe = tiny(f"model={{backbone: {backbone}{SMALLEST.get(backbone, '')}}}")
    exported_agrees(recipe, tmp_path)


@pytest.mark.parametrize("allowed", [False, True], ids=["default", "in-a-compiled-block"])
def test_mish_exports_with_any_batch_size(allowed, tiny, tmp_path):
    """cnnlab's Mish picks its own kernels by a map's size: traced for export, where the batch
    is symbolic, that test must not be made (a map smaller per image than the threshold made
    it a guard on the batch, and seed 002's network could not be exported)."""
    recipe = tiny("model.activation=mish")
    with compiled_kernels(allowed):
        exported_agrees(recipe, tmp_path)


def test_every_task_type_and_test_time_views_export(tmp_path):
    """A table with a class, a number, a vector and a mask, on an encoder-decoder, with the
    eight symmetries of the square averaged inside the graph."""
    import yaml

    import cnnlab
    from cnnlab.api import load_recipe
    from cnnlab.data import shapes_table

    shapes_table.write(tmp_path / "shapes", 60, 16, seed=1)
    raw = yaml.safe_load((Path(cnnlab.__file__).parent / "recipes/table_example.yaml").read_text())
    raw["data"]["table"] = str(tmp_path / "shapes" / "labels.csv")
    raw["model"]["filters"] = 4
    raw["tasks"]["counts"] = {"type": "regression", "target": "counts"}
    raw["train"].update(tta=["hflip", "vflip", "rot90"], device="cpu", threads=1)
    exported_agrees(load_recipe(raw), tmp_path, images=12)


def test_a_registered_module_exports(tiny, tmp_path):
    class Two(nn.Module):
        def __init__(self, in_channels: int = 1, width: int = 8):
            super().__init__()
            self.a = nn.Conv2d(in_channels, width, 3, padding=1)
            self.b = nn.Conv2d(width, width, 3, stride=2, padding=1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    with registration_scope():
        register_backbone("two")(Two)
        exported_agrees(tiny("model={backbone: two}"), tmp_path)


def unexportable(tiny, tmp_path: Path, rule, fmt: str = "onnx") -> str:
    """export_module's one line for a backbone of one conv whose output goes through
    `rule`, a piece of Python no exported graph can hold."""

    class Rule(nn.Module):
        def __init__(self, in_channels: int = 1):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 4, 3)

        def forward(self, x):
            return rule(self.conv(x))

    with registration_scope():
        register_backbone("rule")(Rule)
        built = build(tiny("model={backbone: rule}"), device="cpu")
        with pytest.raises(CnnlabError) as err:
            export_module(wrap(built), built.splits.test.images[:2], tmp_path / f"m.{fmt}", fmt)
    return str(err.value)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_a_model_that_cannot_be_exported_is_one_line_naming_the_layer(fmt, tiny, tmp_path, capsys):
    # a Python branch on a value
    said = unexportable(tiny, tmp_path, lambda y: y * 2 if float(y.mean()) > 0 else y, fmt)
    assert said.startswith(f"export: the model cannot be exported to {fmt}: ")
    # the registered module under cnnlab's wrapper: its conv alone exports, it does not
    assert "layer backbone.net (Rule): Could not guard on data-dependent" in said
    assert "\n" not in said
    assert capsys.readouterr().err == ""  # torch.export printed the partial graph there


def test_a_layer_that_tests_the_batch_size_is_named(tiny, tmp_path):
    # true for batches of 2 and more: a guard on the batch the file leaves free
    said = unexportable(tiny, tmp_path, lambda y: y * 2 if y.numel() >= 5000 else y)
    assert "layer backbone.net (Rule): " in said
    assert "tests the batch size, which the file leaves free" in said


def test_cli_exports_a_trained_run_with_the_same_test_accuracy(tiny, tmp_path):
    """The demo's recipe (its ten test-time views included), trained briefly: the exported
    file scores the run's own test accuracy in onnxruntime; .pt2 loads back too."""
    run = train(tiny("train.precision=fp32"))
    out = run_cli("export", str(run.path))
    assert out.returncode == 0, out.stderr
    onnx_file = run.path / "export" / "model.onnx"
    assert f"exported: {onnx_file}" in out.stdout
    tested = json.loads((run.path / "test_metrics.json").read_text())["test.cls.accuracy"]
    line = next(line for line in out.stdout.splitlines() if line.startswith("cls: "))
    assert f"test accuracy {tested:.4f} in torch, {tested:.4f} in onnxruntime" in line
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    described = json.loads(meta["cnnlab.outputs"])
    outputs = described["outputs"]
    assert [o["name"] for o in outputs] == ["cls", "ink"]
    assert "Ankle boot" in outputs[0]["classes"]
    assert described["input"]["layout"] == "NCHW" and described["input"]["channels"] == "grey"
    about = described["provenance"]  # which model it is travels with it
    assert about["run"] == run.path.name and about["trained_precision"] == "fp32"
    assert about["best_epoch"] == run.status()["best_epoch"]
    assert about["test_metrics"]["test.cls.accuracy"] == tested
    assert about["trained_with"]["torch"] and about["exported_with"]["torch"] == torch.__version__
    assert "sweep" not in about and described["input"]["made_grey"] is False  # a run of its own
    link = {"sweep": "/elsewhere/lam", "study": "lam", "storage": None, "trials": [3, 5]}
    (run.path / "trial.json").write_text(json.dumps(link))  # as a sweep's worker links a trial
    assert provenance(run, {})["sweep"] == {"study": "lam", "trials": [3, 5]}  # a retry's too
    assert recipe_name(run) == run.recipe().name  # the sweep folder is gone: its own
    (tmp_path / "lam").mkdir()
    (tmp_path / "lam" / "recipe.yaml").write_text("name: fashion_lambda_base\n")
    (run.path / "trial.json").write_text(json.dumps({**link, "sweep": str(tmp_path / "lam")}))
    assert recipe_name(run) == "fashion_lambda_base"  # a trial's: its sweep's, not trial0003
    views = described["test_time_views"]
    inside = "scaling and normalization" + (
        f", the test-time views ({', '.join(views)})" * bool(views)
    )
    assert f"inside the file: {inside}; it computes in fp32\n" in out.stdout
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "black.png")
    named = run_cli("predict", str(onnx_file), str(tmp_path / "black.png"), cwd=tmp_path)
    assert named.returncode == 0, named.stderr  # the file named first, as a run folder is
    assert named.stdout.startswith(f"{tmp_path / 'black.png'}\n  cls: ")

    fed_as_the_docs_say(onnx_file, tmp_path)

    pt2 = run_cli("export", str(run.path), "--out", str(tmp_path / "m.pt2"))  # its suffix
    assert pt2.returncode == 0, pt2.stderr
    assert "what its outputs are: m.pt2.json beside it; keep the two together" in pt2.stdout
    # the weights and a 2-image example, not the storage of the test images it was cut from
    # (500 of 784 bytes here; seed 002's .pt2 was 117 MB)
    assert (tmp_path / "m.pt2").stat().st_size < onnx_file.stat().st_size + 100_000
    images = np.zeros((2, 1, 28, 28), dtype=np.uint8)
    probs, ink = run_exported(tmp_path / "m.pt2", images)
    assert probs.shape == (2, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert ink.shape == (2,)


@pytest.mark.parametrize(
    "fmt, out, expected",
    [
        (None, None, ("onnx", "RUN/export/model.onnx")),
        ("PT2", None, ("pt2", "RUN/export/model.pt2")),
        (None, "to/model.pt2", ("pt2", "to/model.pt2")),  # the suffix picks the format
        ("pt2", "to/m.PT2", ("pt2", "to/m.PT2")),
        (None, "shipped", ("onnx", "shipped/model.onnx")),  # no suffix: a folder
        ("pt2", "shipped", ("pt2", "shipped/model.pt2")),
        ("onnx", "to/m.pt2", "--format onnx but --out to/m.pt2 ends in .pt2; name the file .onnx"),
        (None, "to/m.bin", "ends in .bin; name a .onnx or .pt2 file, or a folder"),
        ("tflite", None, "format 'tflite'; choose onnx or pt2"),
        (None, "a_file/m.onnx", "--out a_file/m.onnx: a_file is a file, not a folder"),
    ],
)
def test_the_exported_file_is_named_by_its_format_and_a_contradiction_is_refused(
    fmt, out, expected, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    Path("a_file").write_text("")
    if isinstance(expected, str):
        with pytest.raises(CnnlabError, match=re.escape(expected)):
            export_target(Path("RUN"), fmt, out)
    else:
        assert export_target(Path("RUN"), fmt, out) == (expected[0], Path(expected[1]))


def test_a_run_still_training_is_said_by_who_trains_it(tmp_path):
    """An export (or anything reading a run) while another process trains in it: the lock's
    holder, read without waiting; nobody once it is let go."""
    run = RunFolder.create(load_recipe(DEMO), tmp_path / "run")
    assert run.trainer() is None
    fd = os.open(run.path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another trainer holds it
        os.pwrite(fd, b"pid 4242 on elsewhere\n", 0)
        assert run.trainer() == "pid 4242 on elsewhere"
    finally:
        os.close(fd)
    assert run.trainer() is None
