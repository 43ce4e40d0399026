"""tasks.NAME.bounds: a regression's predictions held to the range its target lives in, alike
in predict, the saved test predictions, the metrics, `cnnlab eval` and the exported file;
training values outside the bounds stop the run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.api import train
from cnnlab.build import build
from cnnlab.config import HeadConfig
from cnnlab.errors import CnnlabError
from cnnlab.export import load_for_export, metadata
from cnnlab.inference import Predictor
from cnnlab.recipe import load_recipe
from cnnlab.runs import load_checkpoint
from cnnlab.tasks.regression import RegressionHead
from cnnlab.viz.run_view import RunView
from tests.conftest import DEMO


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("tasks.ink.bounds=[5, 1]", "tasks.ink.bounds: [5, 1] is not a range: the lower bound "
         "must be below the upper one; write [1, 5], or null for an open side ([5, null])"),
        ("tasks.ink.bounds=[1, 1]", "give two different values, or null for an open side "
         "([1, null])"),
        ("tasks.ink.bounds=[0, .inf]", "tasks.ink.bounds: [0, inf]: a bound is a finite number; "
         "null leaves a side open"),
        ("tasks.cls.bounds=[0, 1]", "unknown key 'tasks.cls.bounds'; valid keys here: target, "
         "weight, head, type, loss, label_smoothing, class_weights; bounds is a key of "
         "regression tasks"),
    ],
)  # fmt: skip
def test_bounds_are_a_range_and_a_regressions_own(override: str, says: str):
    with pytest.raises(CnnlabError) as err:
        load_recipe(DEMO, [override])
    assert str(err.value).endswith(says)
    assert load_recipe(DEMO, ["tasks.ink.bounds=[0, null]"]).tasks["ink"].bounds == (0.0, None)


def test_training_values_outside_the_bounds_are_refused_with_bounds_that_hold_them(tiny):
    with pytest.raises(CnnlabError) as err:
        build(tiny("tasks.ink.bounds=[0.05, 0.5]"), device="cpu")
    assert str(err.value) == (
        "tasks.ink.bounds: the training split's 'ink' values run from 0.0405962 to 0.658799, "
        "5 below the lower bound and 92 above the upper bound of [0.05, 0.5]; widen the bounds "
        "to hold them ([0.04059, 0.6588]), or correct those values in the data"
    )
    build(tiny("tasks.ink.bounds=[0.04059, 0.6588]"), device="cpu")  # the advice holds


def test_a_vector_shares_the_bounds_and_the_loss_reads_the_raw_output():
    head = RegressionHead(4, HeadConfig(hidden=[]), [0.0, 10.0], [1.0, 2.0], 2, (0.0, None))
    out = torch.tensor([[-3.0, -20.0], [2.0, 5.0]])  # standardized, as the head outputs
    assert head.decode(out).tolist() == [[0.0, 0.0], [2.0, 20.0]]
    open_head = RegressionHead(4, HeadConfig(hidden=[]), [0.0, 10.0], [1.0, 2.0], 2)
    assert open_head.decode(out).tolist() == [[-3.0, -30.0], [2.0, 20.0]]
    assert head.state_dict().keys() == open_head.state_dict().keys()  # checkpoints as before


def test_every_prediction_of_a_trained_run_keeps_within_its_bounds(tiny):
    """A healthy leaf's -7.21: an unstandardized ink trained briefly predicts below the
    lowest training value (0.041) for a third of the test images; bounded at 0.04, none is
    below it anywhere, and the metrics are those of the clamped predictions."""
    lo = np.float32(0.04)  # as the float32 predictions are clamped
    run = train(tiny(
        "tasks.ink.bounds=[0.04, null]", "tasks.ink.standardize=false",
        "data.train_subset=600", "train.precision=fp32",
    ))  # fmt: skip
    images = load_for_export(run.path, views=False).images
    open_recipe = run.recipe.model_copy(deep=True)
    open_recipe.tasks["ink"].bounds = None
    saved = load_checkpoint(run.folder.best_path, "cpu")
    raw = Predictor(open_recipe, saved, torch.device("cpu"))(images)["ink"].values
    assert (raw < lo).sum() > 50  # the bounds have work to do
    predicted = run.predict(images)["ink"].values
    assert np.array_equal(predicted, np.maximum(raw, lo))

    (chart,) = run.figure("regression")  # keeps the test predictions in the run folder
    kept = RunView(run.path, "cpu").test_predictions
    pred, truth = kept.pred["ink"].numpy(), kept.truth["ink"].numpy()
    assert pred.min() == lo and np.allclose(pred, predicted, atol=1e-6)
    at = int((pred == lo).sum())
    assert chart.caption.endswith(
        f"Predictions are clamped to tasks.ink.bounds [0.04, null]; {at} of these values sit "
        "on a bound."
    )
    tested, evaluated = run.test_metrics, run.evaluate()
    for name, by_hand in {
        "test.ink.mae": np.abs(pred - truth).mean(),
        "test.ink.rmse": np.sqrt(np.square(pred - truth).mean()),
    }.items():
        assert tested[name] == pytest.approx(by_hand, rel=1e-5)
        assert evaluated[name] == pytest.approx(tested[name], rel=1e-6)

    exported = run.export()  # the demo recipe has no test-time views: the same images
    assert exported.parity.max_abs_diff["ink"] < 1e-5
    from_file = exported.predict(images)["ink"].values
    assert from_file.min() == lo and np.allclose(from_file, predicted, atol=1e-5)
    ink = next(o for o in metadata(exported.path)["outputs"] if o["name"] == "ink")
    assert ink["bounds"] == [0.04, None]
