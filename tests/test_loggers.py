"""Logging integrations: switched on in the recipe, the same rows as metrics.jsonl."""

import json
import sys
import time

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.experiment import train


def test_tensorboard_gets_every_epoch_and_the_test_metrics(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny("train.epochs=2", "log.tensorboard=true"))
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    acc = [s.value for s in events.Scalars("val.cls.accuracy")]
    assert acc == pytest.approx([r["val.cls.accuracy"] for r in run.read_metrics()])
    assert "test.ink.rmse" in events.Tags()["scalars"]


def test_wandb_offline_records_every_epoch_and_the_test_metrics(tiny, monkeypatch):
    """The real wandb package in offline mode (no network): its run file holds our rows."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = train(tiny("train.epochs=2", "log.wandb=true", "log.project=p"))
    (record,) = (run.path / "wandb").glob("offline-run-*/run-*.wandb")
    test = json.loads(run.test_path.read_text())
    wanted = [json.dumps(r["val.cls.accuracy"]) for r in run.read_metrics()]
    wanted += ["test.ink.rmse", json.dumps(test["test.ink.rmse"])]
    # wandb's core process writes the record file (protobuf; logged values as JSON text)
    # on its own schedule after finish(): wait for it rather than race it.
    deadline = time.monotonic() + 60
    while True:
        data = record.read_bytes()
        missing = [w for w in wanted if w.encode() not in data]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"{record} lacks {missing}"


def test_a_missing_package_is_one_clear_error(tiny, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(CnnlabError, match="log.mlflow but the package 'mlflow' is not installed"):
        train(tiny("log.mlflow=true"))
    assert not (tmp_path / "runs").exists()  # stopped before a run folder was made


def test_mlflow_store_gets_params_epochs_and_test_metrics(tiny, monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = train(tiny("train.epochs=2", "log.mlflow=true", "log.project=fmnist"))
    client = mlflow.tracking.MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name("fmnist").experiment_id])
    history = client.get_metric_history(found.info.run_id, "val.cls.accuracy")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [r["val.cls.accuracy"] for r in run.read_metrics()]
    )
    assert found.data.params["train.epochs"] == "2"
    assert "test.cls.accuracy" in found.data.metrics
