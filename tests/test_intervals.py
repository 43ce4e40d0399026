"""A regression's prediction intervals (cnnlab/tasks/intervals.py): split conformal on the
validation set, fitted by `calibrate` as temperatures are, saved with the weights, given by
predict, the exported file and the regression figure, and holding what they promise."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab.calibration import calibrated_tasks, notes, summary
from cnnlab.errors import CnnlabError
from cnnlab.experiment import train
from cnnlab.report import metric_notes
from cnnlab.runs import load_checkpoint
from cnnlab.tasks.intervals import covered, fit_interval
from cnnlab.viz import RunView, make_charts
from cnnlab.viz.new_images import caption
from tests.conftest import run_cli

INK = ["tasks={ink: {type: regression, target: ink}}", "train.monitor=val.ink.rmse"]


def test_the_half_width_is_the_order_statistic_that_holds_the_share_asked():
    truth = torch.zeros(9)
    pred = torch.arange(1.0, 10.0)  # errors 1..9
    assert fit_interval(truth, pred, 0.9).halfwidth == [9.0]  # ceil(10 * 0.9) = 9th of 9
    assert fit_interval(truth, pred, 0.5).halfwidth == [5.0]  # ceil(10 * 0.5) = 5th
    assert fit_interval(truth[:8], pred[:8], 0.9).halfwidth == [math.inf]  # 8 cannot hold 90 %
    # a vector: per component; a blank cell (NaN) counts in neither
    truth = torch.tensor([[0.0, 0.0], [0.0, math.nan], [0.0, 0.0]])
    pred = torch.tensor([[1.0, 10.0], [2.0, 99.0], [3.0, 20.0]])
    assert fit_interval(truth, pred, 0.5).halfwidth == [2.0, 20.0]


def test_on_exchangeable_images_the_interval_holds_its_share():
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(22000, generator=gen)
    pred = truth + torch.randn(22000, generator=gen).abs() ** 1.5  # skewed errors: no normal
    interval = fit_interval(truth[:2000], pred[:2000], 0.9)
    (share,) = covered(truth[2000:], pred[2000:], interval)
    assert 0.88 < share < 0.92


def test_a_regression_is_calibrated_predicted_exported_and_drawn_with_its_interval(tiny):
    run = cnnlab.load_run(train(tiny(*INK, "train.epochs=2")).path)
    table = run.calibrate(coverage=0.8)
    assert list(table.columns) == ["task", "split", "coverage", "halfwidth", "within"]
    width = table.halfwidth.iloc[0]  # one number: a float
    fitted = json.loads((run.path / "calibration.json").read_text())["tasks"]["ink"]
    assert fitted["halfwidth"] == [width] and fitted["coverage"] == 0.8
    assert fitted["val"]["covered"][0] >= 0.8  # validation's own: at least the share, always
    view = RunView(run.path)
    test = view.test_predictions
    errors = (test.pred["ink"] - test.truth["ink"]).abs()
    assert fitted["test"]["covered"] == [pytest.approx(float((errors <= width).double().mean()))]
    saved = load_checkpoint(run.path / "checkpoints" / "best.pt")
    assert saved["interval"] == {"ink": {"coverage": 0.8, "halfwidth": [width]}}
    assert summary({"ink": fitted})[0].startswith(f"ink: ± {width:.4g} holds 80% of values")

    images = view.split("test").images[:5]
    p = run.predict(images)["ink"]
    assert np.allclose(p.high - p.values, width) and np.allclose(p.values - p.low, width)
    assert list(run.predict(images).table().columns) == ["ink", "ink.low", "ink.high"]
    said = caption(run.predict(images), 0)  # as `cnnlab predict` prints each image
    assert said == f"ink: {p.values[0]:.3g} (80%: {p.low[0]:.3g} to {p.high[0]:.3g})"
    exported = run.export()
    assert any("ink's 80% interval" in line for line in exported.lines())
    q = exported.predict(images)["ink"]
    assert np.allclose(q.low, q.values - width) and q.coverage == 0.8

    (chart,) = make_charts(view, "regression")
    assert "The 80% interval" in chart.caption and "holds" in chart.caption
    within = fitted["test"]["covered"][0]
    assert metric_notes(view)[0] == (
        f"ink: calibrated, each value ± {width:.4g}, the range fitted to hold 80% of "
        f"validation's values (cnnlab calibrate), which holds {within:.1%} of the test values"
    )  # under the report's metrics table
    run.calibrate(reset=True)  # no interval after a reset
    assert not load_checkpoint(run.path / "checkpoints" / "best.pt").get("interval")
    assert run.predict(images)["ink"].low is None


def test_train_calibrate_fits_a_regressions_interval_and_the_command_says_it(tiny, tmp_path):
    run = train(tiny(*INK, "train.calibrate=true"))
    assert load_checkpoint(run.best_path)["interval"]["ink"]["coverage"] == 0.9
    out = run_cli("calibrate", str(run.path), "--coverage", "0.95")
    assert out.returncode == 0, out.stderr
    assert "ink: ± " in out.stdout and "holds 95% of values" in out.stdout
    refused = run_cli("calibrate", str(run.path), "--coverage", "95")
    assert refused.returncode != 0
    assert "calibrate: coverage 95.0: give a share between 0 and 1, e.g. 0.9" in refused.stderr


def test_a_run_with_neither_probabilities_nor_a_regression_cannot_be_calibrated():
    with pytest.raises(CnnlabError, match="nor a regression for an interval"):
        calibrated_tasks({"x": SimpleNamespace(probabilistic=False, intervals=False)})
    fitted = {"ink": {"coverage": 0.9, "halfwidth": [math.inf], "val": {"rows": 8}}}
    assert notes(fitted)[0].startswith("ink: 8 validation values cannot bound 90% of values")
