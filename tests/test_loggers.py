"""Logging integrations: switched on in the recipe, the same rows as metrics.jsonl."""

import sys
import types
from typing import ClassVar

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.train import train


def test_tensorboard_gets_every_epoch_and_the_test_metrics(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny("train.epochs=2", "log.tensorboard=true"))
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    acc = [s.value for s in events.Scalars("val.cls.accuracy")]
    assert acc == pytest.approx([r["val.cls.accuracy"] for r in run.read_metrics()])
    assert "test.ink.rmse" in events.Tags()["scalars"]


def test_wandb_receives_the_same_rows(tiny, monkeypatch):
    """A stand-in wandb module: the calls cnnlab makes are the documented public API."""
    logged, finished = [], []

    class FakeRun:
        summary: ClassVar[dict] = {}

        def log(self, data, step):
            logged.append((step, data))

        def finish(self):
            finished.append(True)

    fake = types.SimpleNamespace(init=lambda **kw: FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = train(tiny("train.epochs=2", "log.wandb=true", "log.project=p"))
    rows = run.read_metrics()
    assert [s for s, _ in logged] == [1, 2]
    assert logged[1][1]["val.cls.accuracy"] == rows[1]["val.cls.accuracy"]
    assert finished == [True] and "test.cls.accuracy" in FakeRun.summary


def test_a_missing_package_is_one_clear_error(tiny, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(CnnlabError, match="log.mlflow but the package 'mlflow' is not installed"):
        train(tiny("log.mlflow=true"))
    assert not (tmp_path / "runs").exists()  # stopped before a run folder was made
