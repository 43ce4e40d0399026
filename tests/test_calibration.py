"""Calibration: ECE and MCE in the test metrics, temperature scaling fitted on validation,
saved with the best weights and used by eval, predict, the figures and export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchmetrics.functional.classification import multiclass_calibration_error

import cnnlab
from cnnlab.calibration import fitted, notes, summary
from cnnlab.experiment import train
from cnnlab.export import load_for_export
from cnnlab.report import metric_notes
from cnnlab.runs import RunFolder, load_checkpoint
from cnnlab.tasks.base import NO_CLASS
from cnnlab.tasks.calibration import (
    MAX_TEMPERATURE,
    Rows,
    batch_rows,
    fit_temperature,
    judged,
    scores,
)
from cnnlab.tasks.classification import Classification, ClassificationConfig
from cnnlab.viz import RunView, make_charts
from tests.conftest import run_cli


def drawn_at(temperature: float, n: int = 20000, seed: int = 0) -> Rows:
    """Logits, and classes drawn from softmax(logits / temperature): a model whose
    probabilities are right once divided by that temperature."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=gen) * 3
    classes = torch.multinomial((logits / temperature).softmax(1), 1, generator=gen)
    return Rows(logits, classes.squeeze(1))


CLASSES = Classification("cls", ClassificationConfig(target="label"))  # softmax, 10 classes


@pytest.mark.parametrize("truth", [0.5, 2.5])
def test_the_fitted_temperature_is_the_one_the_classes_were_drawn_at(truth):
    rows = drawn_at(truth)
    fitted = fit_temperature(CLASSES, rows)
    assert fitted == pytest.approx(truth, rel=0.05)
    before, after = scores(CLASSES, rows), scores(CLASSES, rows, fitted)
    assert after["nll"] < before["nll"] and after["ece"] < 0.02 < before["ece"]
    assert after["accuracy"] == before["accuracy"]  # a temperature moves no argmax


def test_logits_that_tell_nothing_get_a_high_temperature_and_a_line_saying_so():
    gen = torch.Generator().manual_seed(0)
    rows = Rows(torch.randn(5000, 10, generator=gen), torch.randint(0, 10, (5000,), generator=gen))
    fitted = fit_temperature(CLASSES, rows)
    assert fitted > 10
    val = {"before": scores(CLASSES, rows), "after": scores(CLASSES, rows, fitted)}
    result = {"cls": {"temperature": fitted, "val": val}}
    lines = summary(result)
    assert lines[0].startswith(f"cls: T = {fitted:.3f}; val NLL ")
    assert lines[1] == (
        f"cls: T = {fitted:.3g} flattens its probabilities to about uniform: on validation its "
        "logits tell little (a model near chance, or trained too briefly)"
    )
    assert len(summary({"cls": {**result["cls"], "temperature": 1.5}})) == 1


def test_a_temperature_without_a_minimum_stops_where_the_answers_keep_their_order():
    """Random logits for 300 rows: the NLL falls on as T grows, and the fit ran to T = 4e5,
    where logits / T tie in float32 and the accuracy moved (0.0767 -> 0.0733)."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(300, 10, generator=gen) * 3
    rows = Rows(logits, torch.randint(0, 10, (300,), generator=gen))
    fitted = fit_temperature(CLASSES, rows)
    assert fitted == MAX_TEMPERATURE
    assert scores(CLASSES, rows, fitted)["accuracy"] == scores(CLASSES, rows)["accuracy"]


def test_validation_without_a_mistake_keeps_t_1_and_says_why():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 10, generator=gen) * 3
    right = Rows(logits, logits.argmax(1))  # every answer right: the fit would run to T = 0
    assert fit_temperature(CLASSES, right) < 0.2  # what fitting it anyway gives
    assert fitted(CLASSES, right) == (1.0, True)
    wrong = Rows(logits, torch.randint(0, 10, (200,), generator=gen))
    t, flawless = fitted(CLASSES, wrong)
    assert not flawless and t == fit_temperature(CLASSES, wrong)
    val = {"rows": 200, "before": scores(CLASSES, right), "after": scores(CLASSES, right)}
    (line,) = notes({"cls": {"temperature": 1.0, "val": val, "flawless": True}})
    assert line == (
        "cls: validation holds no mistake (200 rows right), so no temperature can be fitted "
        "on it (the fit would drive T to 0, every answer certain); T = 1 kept: more "
        "validation images, or a harder validation set, give one"
    )


def test_a_temperature_that_makes_the_test_nll_or_ece_worse_gets_a_line_saying_so():
    def fitted(t: float, test_after: float) -> dict:
        split = lambda nll: {"rows": 50, "before": {"nll": nll, "ece": 0.1, "mce": 0.2}}  # noqa: E731
        test = {**split(0.9), "after": {"nll": test_after, "ece": 0.2, "mce": 0.3}}
        val = {**split(0.9), "after": {"nll": 0.8, "ece": 0.05, "mce": 0.1}}
        return {"cls": {"temperature": t, "val": val, "test": test}}

    lines = summary(fitted(0.6, 0.95))
    assert lines[-1] == (
        "cls: T = 0.6 made the test NLL worse (0.9000 -> 0.9500): fitted on 50 validation "
        "images, it does not carry over; more validation images fit it better, and `cnnlab "
        "calibrate RUN --reset` (`run.calibrate(reset=True)` in Python) goes back to T = 1"
    )
    assert len(lines) == 3  # val, test, the note
    assert summary(fitted(0.6, 0.85))[-1] == (  # a better NLL, a worse ECE (0.1 -> 0.2)
        "cls: T = 0.6 lowered the test NLL but raised its ECE (0.1000 -> 0.2000): a "
        "temperature fits the NLL, and the ECE's bins can still move the other way; the "
        "reliability figure shows where, and `cnnlab calibrate RUN --reset` goes back to T = 1"
    )
    better = fitted(0.6, 0.85)
    better["cls"]["test"]["after"]["ece"] = 0.09
    assert len(summary(better)) == 2  # better on test, both: nothing to say
    assert len(summary(fitted(1.0, 0.95))) == 2  # T = 1 (reset): the model's own


def test_the_errors_from_the_reliability_bins_are_torchmetrics_ece_and_mce():
    rows = drawn_at(2.0, n=5000)
    b, said = judged(CLASSES, rows, 1.3)
    assert int(b.count.sum()) == 5000
    probs = (rows.logits / 1.3).softmax(1)
    for key, norm in (("ece", "l1"), ("mce", "max")):
        expected = float(multiclass_calibration_error(probs, rows.targets, 10, norm=norm))
        assert said[key] == pytest.approx(expected, abs=1e-6)
    assert said["mce"] > said["ece"] > 0.01  # T = 1.3 is not the 2.0 the classes were drawn at


def test_a_mask_gives_one_row_per_labelled_pixel_and_a_sample_when_asked():
    out = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, :4] = NO_CLASS  # 32 unlabelled pixels
    gen = torch.Generator().manual_seed(0)
    rows = batch_rows(out, target, 1.0, gen)
    assert rows.logits.shape == (128 - 32, 3)
    assert torch.equal(rows.logits[0], out[0, :, 4, 0])  # pixel (4, 0) is the first labelled
    sampled = batch_rows(out.repeat(50, 1, 1, 1), target.repeat(50, 1, 1), 0.25, gen)
    assert 0.2 < len(sampled.targets) / (50 * 96) < 0.3


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """The demo recipe, tiny, trained with train.calibrate: true. In fp32: predictions are
    compared with the fp32 export to 1e-5, and where `auto` times bf16 faster (a CPU with
    bf16 instructions) they would differ by bf16's rounding (0.7 % seen), not the temperature."""
    from tests.conftest import tiny_recipe

    folder = tmp_path_factory.mktemp("calibrated")
    return train(tiny_recipe(folder, "train.calibrate=true", "train.precision=fp32"))


def test_training_calibrates_and_saves_the_temperature_with_the_best_weights(calibrated):
    fitted = json.loads(calibrated.calibration_path.read_text())["tasks"]
    assert set(fitted) == {"cls", "ink"}  # ink, a regression: its interval
    cls = fitted["cls"]
    assert cls["val"]["after"]["nll"] <= cls["val"]["before"]["nll"]  # fitted on it
    assert cls["val"]["after"]["accuracy"] == cls["val"]["before"]["accuracy"]
    saved = load_checkpoint(calibrated.best_path)
    assert saved["temperature"] == {"cls": cls["temperature"]} and cls["temperature"] != 1.0
    assert saved["interval"] == {"ink": {"coverage": 0.9, "halfwidth": fitted["ink"]["halfwidth"]}}
    tested = json.loads(calibrated.test_path.read_text())
    assert tested["test.cls.ece"] == pytest.approx(cls["test"]["after"]["ece"], abs=1e-5)
    assert tested["test.cls.mce"] == pytest.approx(cls["test"]["after"]["mce"], abs=1e-5)
    assert "test.ink.ece" not in tested
    assert cnnlab.load_run(calibrated.path).evaluate()["test.cls.ece"] == pytest.approx(
        tested["test.cls.ece"], abs=1e-6
    )


def test_predict_export_and_the_reliability_diagram_use_the_temperature(calibrated):
    t = load_checkpoint(calibrated.best_path)["temperature"]["cls"]
    run = cnnlab.load_run(calibrated.path)
    images = RunView(calibrated.path).split("test").images[:16].cpu()
    p = torch.from_numpy(run.predict(images)["cls"].probabilities).double()
    loaded = load_for_export(calibrated.path)
    exported = loaded.module(images)[0].double()
    assert torch.allclose(exported, p, atol=1e-5)
    assert loaded.module.describe()[0]["temperature"] == t
    # log-probabilities, centred per image, are the logits / T: undo T and compare with T = 1
    loaded.module.tasks["cls"].temperature = 1.0
    raw = loaded.module(images)[0].double().log()
    centred = lambda v: v - v.mean(dim=1, keepdim=True)  # noqa: E731
    assert torch.allclose(centred(p.log()) * t, centred(raw), atol=1e-3)

    (chart,) = make_charts(RunView(calibrated.path), "reliability")
    states = chart.extra["states"]
    assert [s["temperature"] for s in states] == [1.0, round(t, 4)]
    assert states[1]["ECE"] == round(run.test_metrics["test.cls.ece"], 4)
    assert states[0]["accuracy"] == states[1]["accuracy"]


def test_the_reliability_caption_says_when_the_temperature_made_the_test_nll_worse(
    calibrated, tmp_path
):
    """Its ECE may fall while its NLL rises: the panels alone would read as an improvement."""
    run = RunFolder(shutil.copytree(calibrated.path, tmp_path / "run"))
    saved = load_checkpoint(run.best_path)
    for t in (saved["temperature"]["cls"], 20.0):  # the fitted one; one far too high
        run.save_checkpoint(run.best_path, {**saved, "temperature": {"cls": t}})
        (chart,) = make_charts(RunView(run.path), "reliability")
        before, after = (s["NLL"] for s in chart.extra["states"])
        said = "the test NLL is worse than as trained" in chart.caption
        assert said == (after > before * (1 + 1e-3))
        assert said == (f"({before:.4f} -> {after:.4f})" in chart.caption)
    assert said  # at T = 20 the probabilities are nearly uniform: the NLL rose


def test_the_reports_metrics_say_which_numbers_are_at_the_temperature(calibrated):
    """The metrics table holds the loss at T = 1 beside ECE and MCE at the fitted T."""
    t = load_checkpoint(calibrated.best_path)["temperature"]["cls"]
    note, ink = metric_notes(RunView(calibrated.path))  # ink, a regression: its range
    assert note.startswith(f"cls: calibrated, T = {t:.3g} (cnnlab calibrate); its test ece ")
    assert ink.startswith("ink: calibrated, each value ± ")
    reset = RunView(calibrated.path)
    reset.tasks["cls"].temperature = 1.0
    reset.tasks["ink"].interval = None
    assert metric_notes(reset) == []
    predictions = reset.test_predictions  # a table's blank cells: no label for 10 images
    predictions.truth["ink"] = predictions.truth["ink"].clone()
    predictions.truth["ink"][:10] = torch.nan
    n = len(predictions.truth["ink"])
    assert metric_notes(reset) == [
        f"ink: {n - 10:,} of {n:,} test images have a label; its test metrics count those"
    ]


def test_the_cli_calibrates_again_to_the_same_temperature(calibrated):
    before = load_checkpoint(calibrated.best_path)["temperature"]["cls"]
    exported = calibrated.path / "export" / "model.onnx"  # made before: the old temperature
    exported.parent.mkdir(exist_ok=True)
    exported.write_bytes(b"")
    out = run_cli("calibrate", str(calibrated.path))
    shutil.rmtree(exported.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == (
        f"{exported} holds the old calibration: export again, cnnlab export {calibrated.path}"
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("cls: T = ") and "test NLL" in x)
    assert f"T = {before:.3f}" in line
    again = load_checkpoint(calibrated.best_path)["temperature"]["cls"]
    assert again == pytest.approx(before, rel=1e-4)


def test_reset_puts_every_temperature_back_to_one(calibrated, tmp_path):
    copy = Path(shutil.copytree(calibrated.path, tmp_path / "run"))
    run = cnnlab.load_run(copy)
    fitted = run.predict(np.zeros((2, 1, 28, 28), dtype=np.uint8))["cls"].probabilities
    table = run.calibrate(reset=True)
    assert set(table["temperature"]) == {1.0}
    assert load_checkpoint(copy / "checkpoints" / "best.pt")["temperature"] == {"cls": 1.0}
    assert json.loads((copy / "calibration.json").read_text())["tasks"]["cls"]["temperature"] == 1
    own = run.predict(np.zeros((2, 1, 28, 28), dtype=np.uint8))["cls"].probabilities
    assert not np.allclose(own, fitted, atol=1e-4)  # the model's own probabilities again
    assert (own.argmax(1) == fitted.argmax(1)).all()


def test_a_trials_test_is_written_again_at_the_temperature_and_an_unseen_one_stays_unseen(
    calibrated, tmp_path
):
    """A sweep's trial (test_at_end: false) whose test `select --test` wrote: calibrating
    writes that test again at the new temperature (it kept the ECE of the one before); a
    trial never tested stays so (the sweep chose without its test set)."""
    copy = Path(shutil.copytree(calibrated.path, tmp_path / "trial"))
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    recipe["train"]["test_at_end"] = False
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    before = json.loads((copy / "test_metrics.json").read_text())
    cnnlab.load_run(copy).calibrate(reset=True)
    after = json.loads((copy / "test_metrics.json").read_text())
    assert after["test.cls.ece"] != before["test.cls.ece"]  # at T = 1 now, not the fitted T
    assert after["test.cls.accuracy"] == before["test.cls.accuracy"]
    (copy / "test_metrics.json").unlink()
    cnnlab.load_run(copy).calibrate()
    assert not (copy / "test_metrics.json").exists()


def test_test_metrics_report_calibration_error_without_calibrating(tiny):
    run = train(tiny("train.tta=[]"))
    tested = run.test_metrics()
    assert 0.0 <= tested["test.cls.ece"] <= tested["test.cls.mce"] <= 1.0
    assert not run.calibration_path.exists()
    view = RunView(run.path)
    (chart,) = make_charts(view, "reliability")
    assert len(chart.extra["states"]) == 1
    assert chart.extra["states"][0]["ECE"] == round(tested["test.cls.ece"], 4)
    assert np.isclose(chart.extra["temperature"], 1.0)
