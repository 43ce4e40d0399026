"""The Python API: recipes from names, dicts and objects; a run trained, read back,
evaluated and asked about new images; its figures and report; a sweep as tables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

import cnnlab
from cnnlab.precision import autocast_for
from cnnlab.runs import load_checkpoint
from cnnlab.viz import RunView
from cnnlab.viz.attributions import METHODS, unit
from tests.conftest import ROOT, run_cli

FAST = {  # the demo recipe in seconds; test-time views stay on, as in the demo
    "data.train_subset": 2000,
    "data.test_subset": 400,
    "model.base_filters": 8,
    "train.epochs": 1,
    "train.progress": False,
    "train.threads": 1,
    "train.device": "cpu",
    "train.report": False,
    "train.ema_decay": None,  # 16 steps: an average would still be mostly the initial weights
}


def test_load_recipe_takes_names_dicts_and_recipes_with_the_same_checks():
    recipe = cnnlab.load_recipe("fashion_fast", {"train.epochs": 3})
    assert isinstance(recipe, cnnlab.Recipe) and recipe.train.epochs == 3
    recipe.train.epochs = 5  # editable in Python, then given back
    again = cnnlab.load_recipe(recipe, ["train.batch_size=32"])
    assert (again.train.epochs, again.train.batch_size) == (5, 32)
    raw = recipe.model_dump(mode="json")
    assert cnnlab.load_recipe(raw, {"model": {"backbone": "cnn", "blocks": 2}}).model.blocks == 2
    assert raw["model"]["blocks"] == 3  # the caller's dict is not changed
    with pytest.raises(
        cnnlab.CnnlabError,
        match=r"unknown key 'train.epoch' \(did you mean 'train.epochs'\?\); valid keys here: "
        "epochs",
    ):
        cnnlab.load_recipe("fashion_fast", {"train.epoch": 3})
    with pytest.raises(cnnlab.CnnlabError, match=r"train.epochs = 0"):
        cnnlab.load_recipe("fashion_fast", {"train.epochs": 0})
    with pytest.raises(cnnlab.CnnlabError, match="not found"):
        cnnlab.load_recipe("no_such_recipe.yaml")


@pytest.fixture(scope="module")
def api_run(tmp_path_factory) -> cnnlab.Run:
    out = tmp_path_factory.mktemp("api")
    return cnnlab.train("fashion_fast", {**FAST, "output_dir": str(out / "runs")})


def test_train_threads_hold_for_the_run_and_reading_a_run_back_keeps_the_processs(tmp_path):
    """A notebook that trained a run of `train.threads: 1` (as every sweep trial is), or
    tested one, went on with one thread for everything after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run = cnnlab.train("fashion_fast", {**FAST, "output_dir": str(tmp_path / "runs")})
        assert json.loads((run.path / "env.json").read_text())["threads"] == 1  # while it ran
        assert torch.get_num_threads() == 2
        run.evaluate()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_jupyter_shows_a_cnnlab_error_as_its_line_without_the_frames_above_it(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    done = shell.run_cell("import cnnlab\ncnnlab.load_run('/no/such/run')")
    assert isinstance(done.error_in_exec, cnnlab.CnnlabError)
    shown = capsys.readouterr().out
    assert shown == (
        "CnnlabError: /no/such/run is not a run folder (no recipe.yaml); runs live in "
        "runs/<name>-<time>\n"
    )
    shell.run_cell("1 / 0")  # not cnnlab's: its traceback, as ever
    assert "Traceback (most recent call last)" in capsys.readouterr().out


def test_a_run_reads_back_as_tables(api_run):
    run = cnnlab.load_run(api_run.path)
    assert run.path == api_run.path and run.status["state"] == "finished"
    assert isinstance(run.metrics, pd.DataFrame)
    assert list(run.metrics["epoch"]) == [1] and "val.cls.accuracy" in run.metrics
    saved = json.loads((run.path / "test_metrics.json").read_text())
    assert run.test_metrics == saved and saved["test.cls.accuracy"] > 0.5
    assert run.evaluate() == saved  # rebuilt from the checkpoint: the same numbers
    assert set(run.evaluate("val")) >= {"val.cls.accuracy", "val.ink.rmse"}


def test_predict_gives_the_classes_the_runs_own_test_gave(api_run, tmp_path, monkeypatch):
    view = RunView(api_run.path)
    truth = view.test_predictions.pred  # the test pass, with the recipe's test-time views
    images = view.split("test").images.cpu()  # uint8 (N, 1, 28, 28), as the source decoded
    p = api_run.predict(images)
    assert p["cls"].probabilities.shape == (len(images), 10)
    assert np.allclose(p["cls"].probabilities.sum(1), 1, atol=1e-4)
    assert (p["cls"].index == truth["cls"].numpy()).all()
    assert p["cls"].labels[:3] == [view.task_classes("cls")[i] for i in truth["cls"][:3]]
    assert np.allclose(p["ink"].values, truth["ink"].numpy(), atol=1e-5)  # target's units
    # any number of images a call, cut into passes within memory: the same answers (in fp32,
    # where a pass's size changes no rounding that matters)
    predictor = api_run._predictor
    assert predictor.per_pass == 1000  # 28 px: up to 1,000 images a pass
    monkeypatch.setattr(predictor, "autocast", autocast_for(torch.device("cpu"), "fp32"))
    whole = api_run.predict(images)
    monkeypatch.setattr(predictor, "per_pass", 128)
    sizes: list[int] = []
    hook = predictor.model.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    cut = api_run.predict(images)
    hook.remove()
    assert max(sizes) == 128 and sorted(set(sizes)) == [len(images) % 128, 128]
    assert np.array_equal(cut["cls"].index, whole["cls"].index)
    assert np.allclose(cut["cls"].probabilities, whole["cls"].probabilities, atol=1e-5)
    assert np.allclose(cut["ink"].values, whole["ink"].values, atol=1e-5)
    monkeypatch.undo()

    # the same images as files, a PIL image and an (H, W) array: the same answers
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(images[i, 0].numpy()).save(paths[-1])
    from_files = api_run.predict(paths)
    assert from_files["cls"].labels == p["cls"].labels[:3]
    one = api_run.predict(Image.open(paths[0]))
    assert one["cls"].labels == p["cls"].labels[:1]
    assert api_run.predict(images[0, 0].numpy())["cls"].labels == p["cls"].labels[:1]
    table = from_files.table()  # files: each row names its image
    columns = ["cls", "cls.probability", "ink", "ink.low", "ink.high"]  # calibrated: a range
    assert list(table.columns) == ["image", *columns] and len(table) == 3
    assert list(table["image"]) == [str(p) for p in paths]
    assert list(api_run.predict(images[:2]).table().columns) == columns

    # a colour photo of another size is made grey and resized as the model needs
    photo = np.random.default_rng(0).integers(0, 255, (56, 40, 3), dtype=np.uint8)
    assert len(api_run.predict(photo)["cls"].labels) == 1
    with pytest.raises(cnnlab.CnnlabError, match="not found"):
        api_run.predict([tmp_path / "missing.png"])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(cnnlab.CnnlabError, match="not a readable image"):
        api_run.predict([tmp_path / "broken.png"])


def test_figures_show_inline_and_are_saved(api_run):
    kept = api_run.path / "checkpoints" / "best_test.pt"
    kept.unlink(missing_ok=True)  # no report made it: the figure's test pass is kept instead
    charts = cnnlab.load_run(api_run.path).figure("confusion")
    assert charts and all(c._repr_png_().startswith(b"\x89PNG") for c in charts)
    assert (api_run.path / "figures" / f"{charts[0].key}.png").is_file()
    assert kept.is_file()
    with pytest.raises(cnnlab.CnnlabError, match="unknown"):
        api_run.figure("no-such-figure")  # (Run.report(): examples/custom_backbone.py)


def test_a_report_after_figures_reads_neither_the_data_nor_the_test_set_again(api_run, monkeypatch):
    run = cnnlab.load_run(api_run.path)
    run.figure("confusion")
    (run.path / "checkpoints" / "best_test.pt").unlink()  # the Run holds them: not read back

    def again(*args, **kwargs):
        raise AssertionError("the report loaded the data or ran the test set again")

    monkeypatch.setattr("cnnlab.build.prepare_splits", again)
    monkeypatch.setattr("cnnlab.viz.run_view.RunView.predict", again)
    monkeypatch.setattr("cnnlab.report.SECTIONS", [("confusion", "Confusion", ["confusion"])])
    report = run.report()
    assert "confusion_cls" in report.read_text()


def test_a_run_is_calibrated_and_exported_from_python(api_run, tmp_path):
    """What a notebook does after training: fit the temperature, then ship the model; the
    file answers as the run does, from the file alone."""
    shutil.copytree(api_run.path, tmp_path / "run")
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    saved = load_checkpoint(best)
    assert saved.pop("temperature")  # the recipe calibrates as it ends: as if it did not
    torch.save(saved, best)
    run = cnnlab.load_run(tmp_path / "run")
    images = run._view.split("test").images[:4].cpu()
    before = run.predict(images)["cls"].probabilities
    fitted = run.calibrate()
    assert list(fitted["task"]) == ["cls", "cls", "ink", "ink"]  # ink: its interval
    fitted = fitted[fitted.task == "cls"]
    assert list(fitted["split"]) == ["val", "test"]
    t = float(fitted["temperature"][0])
    assert t != 1.0 and fitted["ece after"][0] <= fitted["ece before"][0]
    after = run.predict(images)["cls"].probabilities  # the new temperature, not a stale model
    expected = torch.from_numpy(before).log().div(t).softmax(1).numpy()
    assert np.allclose(after, expected, atol=1e-4)
    assert run.test_metrics["test.cls.ece"] == pytest.approx(fitted["ece after"][1], abs=2e-3)

    exported = run.export("pt2")  # the notebook exports ONNX, in twice the time
    assert exported.path == run.path / "export" / "model.pt2" and exported.path.is_file()
    ours, theirs = exported.parity.accuracy["cls"]
    assert ours == theirs == pytest.approx(run.test_metrics["test.cls.accuracy"], abs=1e-6)
    assert repr(exported).splitlines()[0].startswith(f"exported: {exported.path} (")
    files = []
    for i in range(len(images)):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(images[i, 0].numpy()).save(files[-1])
    answers = exported.predict(files)
    assert answers["cls"].labels == run.predict(files)["cls"].labels
    assert np.allclose(answers["cls"].probabilities, after, atol=5e-3)  # fp32 file, bf16 run
    arrays = exported.predict(images.numpy())  # a uint8 batch, as run.predict takes it
    assert np.array_equal(arrays["cls"].probabilities, answers["cls"].probabilities)
    assert any("against torch in fp32 on" in line for line in exported.lines())
    # without the recipe's test-time views: one pass per image, and its metadata says so
    lone = run.export("pt2", out=tmp_path / "lone.pt2", check=False, views=False)
    assert lone.parity is None
    views = [json.loads(Path(f"{e.path}.json").read_text())["test_time_views"]
             for e in (exported, lone)]  # fmt: skip
    assert views == [["hflip", "translate"], []]  # ten views, then none
    alone = lone.predict(files)["cls"].probabilities
    assert np.allclose(alone.sum(1), 1, atol=1e-5)
    assert not np.allclose(alone, answers["cls"].probabilities, atol=1e-3)
    # calibrated again, the file exported before answers with the old temperature: said
    with pytest.warns(UserWarning, match=r"model.pt2 holds the old calibration: export again, "):
        run.calibrate(reset=True)


def test_a_temperature_that_flattens_the_probabilities_is_a_warning(api_run, tmp_path, monkeypatch):
    shutil.copytree(api_run.path, tmp_path / "run")
    monkeypatch.setattr("cnnlab.calibration.fit_temperature", lambda task, rows: 50.0)
    with pytest.warns(UserWarning, match=r"^cls: T = 50 flattens its probabilities to about unif"):
        fitted = cnnlab.load_run(tmp_path / "run").calibrate()
    assert (fitted[fitted.task == "cls"]["temperature"] == 50.0).all()


def test_images_of_ones_own_are_explained(api_run, tmp_path):
    """Run.explain: the maps of the class `predict` gives each image, from the saved model
    alone; `cnnlab predict RUN IMAGES --explain` draws the same."""
    images = RunView(api_run.path).split("test").images[:3].cpu()
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(images[i, 0].numpy()).save(files[-1])
    cls, ink = api_run.explain(files)
    assert (cls.key, ink.key) == ("explained_cls", "explained_ink")
    said = api_run.predict(files)["cls"]
    labels = [t.get_text() for t in cls.figure.texts if t.get_text() in said.classes]
    assert labels == said.labels  # the class each image's row explains
    shown = (*METHODS, *(f.name for f in files))  # the method above each column, file names
    numbers = [t.get_text() for t in ink.figure.texts if t.get_text() not in shown]
    assert numbers == [f"{v:.3g}" for v in api_run.predict(files)["ink"].values]  # each row's
    flat = sum(int((m.flatten(1).amax(1) == 0).sum()) for m in ink.extra["maps"].values())
    assert (f"{flat} map" in ink.caption) == (flat > 0)  # a black map is said to be no failure
    predictor = api_run._predictor
    x = predictor.inputs(files).requires_grad_(True)
    logits = predictor.model(x)["cls"].float()
    logits.gather(1, torch.as_tensor(said.index)[:, None]).sum().backward()
    assert torch.allclose(cls.extra["maps"]["gradient"], unit(x.grad.abs().sum(1)), atol=1e-5)
    assert (api_run.path / "figures" / "explained_cls.png").is_file()
    with pytest.raises(cnnlab.CnnlabError, match="give at most 16"):
        api_run.explain([files[0]] * 17)
    out = run_cli("predict", str(api_run.path), *map(str, files), "--explain",
                  "--figure", str(tmp_path / "p.png"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"figure: {tmp_path / 'p.png'}" in out.stdout and (tmp_path / "p.png").is_file()
    assert f"figure: {api_run.path / 'figures' / 'explained_ink.png'}" in out.stdout
    wrong = run_cli("predict", str(api_run.path), str(files[0]), "--explain", "--component",
                    "ink")  # fmt: skip
    assert wrong.returncode == 2 and wrong.stdout == ""  # refused before any answer is printed
    assert wrong.stderr.strip().endswith(
        "no task explained has it; none names its outputs (a task of one's own names them in "
        "its fit(): self.info = TargetInfo(components=[...]), see docs/components.md#a-task-type)"
    )


def test_each_explained_image_is_named_by_its_file(api_run, tmp_path):
    """Each row of the explain figure names its file under the image (the name alone, or
    with the folder that tells two files of one name apart), beside the answer above it;
    an image given as pixels is numbered instead."""
    from cnnlab.viz.attributions import image_names

    images = RunView(api_run.path).split("test").images[:3].cpu()
    files = [
        tmp_path / "a" / "shoe.png",
        tmp_path / "b" / "shoe.png",
        tmp_path / "b" / "<bag> & co.png",
    ]
    for image, file in zip(images, files, strict=True):
        file.parent.mkdir(exist_ok=True)
        Image.fromarray(image[0].numpy()).save(file)
    names = image_names(files)
    assert names == ["a/shoe.png", "b/shoe.png", "<bag> & co.png"]
    cls, ink = api_run.explain(files)  # the public call names them itself
    said = api_run.predict(files)
    for chart, answers in (
        (cls, said["cls"].labels),
        (ink, [f"{v:.3g}" for v in said["ink"].values]),
    ):
        texts = [t.get_text() for t in chart.figure.texts]
        assert all(n in texts for n in names), texts  # every file, under its image
        assert all(a in texts for a in answers)  # and still its answer above it
    assert "replaces" in cls.caption  # each explain saves over the last one's figure
    assert image_names([images[0, 0].numpy(), files[0]]) == ["image 1", "shoe.png"]
    assert image_names(images) is None  # a batch of pixels: rows without names, as before
    long = [f"d/a_long_experiment_name_of_sample_{k}.png" for k in (1, 2)]
    assert image_names(long) == ["a_long_exp\u2026_sample_1.png", "a_long_exp\u2026_sample_2.png"]


def test_train_into_a_chosen_folder_refuses_one_in_use(tmp_path):
    target = tmp_path / "mine"
    run = cnnlab.train("fashion_fast", {**FAST, "data.train_subset": 500}, run_dir=target)
    assert run.path == target and (target / "checkpoints" / "best.pt").is_file()
    with pytest.raises(cnnlab.CnnlabError, match="is not empty"):
        cnnlab.train("fashion_fast", FAST, run_dir=target)


def test_import_cnnlab_from_anywhere_stays_light(tmp_path):
    """`import cnnlab` loads no torch: the names arrive on first use, and so do the submodules
    the docs name (`cnnlab.predict.image_paths`, `cnnlab.plugins.import_modules`)."""
    code = (
        "import sys, cnnlab; print('torch' in sys.modules, 'train' in dir(cnnlab), "
        "'importlib' in dir(cnnlab), 'Any' in dir(cnnlab), "
        "cnnlab.plugins.import_modules is cnnlab.import_modules, hasattr(cnnlab, 'nothing'))"
    )  # dir: the public names, not the module's own imports
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "False", "False", "True", "False"]


def test_a_sweep_from_python_gives_its_trials_and_choice(tmp_path):
    lr = {  # as a notebook writes it: a dict, saved in the folder as its sweep.yaml
        "method": "grid",
        "metric": {"name": "val.cls.accuracy", "goal": "maximize"},
        "parameters": {"train.optimizer.lr": {"values": [0.003, 0.01]}},
    }
    recipe = cnnlab.load_recipe("fashion_fast", {**FAST, "data.train_subset": 500})
    sweep = cnnlab.sweep(recipe, lr, out=tmp_path / "sweeps", trials=2)
    assert sweep.path.name.startswith("sweep-")
    assert yaml.safe_load((sweep.path / "sweep.yaml").read_text()) == lr
    results = sweep.results
    assert len(results) == 2 and set(results["state"]) == {"complete"}
    assert sorted(results["train.optimizer.lr"]) == [0.003, 0.01]
    assert results["retry of"].isna().all()  # none continues another trial's folder
    chosen = sweep.select("val.cls.accuracy")
    assert chosen.loc[0, "role"] == "best val.cls.accuracy"
    best = results.loc[results["value"].idxmax()]
    assert chosen.loc[0, "trial"] == best["trial"]
    assert chosen.loc[0, "train.optimizer.lr"] == best["train.optimizer.lr"]  # what was swept
    assert list(chosen.columns[:5]) == [
        "role",
        "trial",
        "run",
        "train.optimizer.lr",
        "val.cls.accuracy",
    ]
    assert isinstance(sweep.run(int(best["trial"])), cnnlab.Run)
    page = sweep.report()  # as `cnnlab report SWEEP` writes it
    assert page == sweep.path / "report.html" and "Learning curves" in page.read_text()
    with pytest.raises(cnnlab.CnnlabError) as err:
        cnnlab.sweep(recipe, {**lr, "metric": {"goal": "maximize"}})
    assert str(err.value).startswith("the sweep (a dict): ")  # not a temporary file's name
    with pytest.raises(cnnlab.CnnlabError, match="unknown option 'trail'"):
        cnnlab.sweep(recipe, lr, trail=3)
    per_class = {**lr, "metric": {"name": "val.ink.rmse_dark", "goal": "minimize"}}
    with pytest.raises(cnnlab.CnnlabError) as err:  # the data says: no component to rank by
        cnnlab.sweep(recipe, per_class, out=tmp_path / "refused")
    assert str(err.value).endswith("so its rmse is one number: val.ink.rmse")
    assert not (tmp_path / "refused").exists()
    with pytest.raises(cnnlab.CnnlabError, match="a sweep is a file, a shipped sweep's name"):
        cnnlab.sweep(recipe, ["train.optimizer.lr"])
