"""Two workers share one study in a real PostgreSQL server; one is killed mid-trial."""

import json
import signal
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from cnnlab.sweeps.results import load_trials
from cnnlab.sweeps.study import SweepFolder
from tests import cli_process
from tests.conftest import DEMO, ROOT, run_cli
from tests.postgres import postgres_server
from tests.test_sweep_faults import LR_GRID, race_to_start

TINY = [
    "data.train_subset=2000",
    "data.test_subset=500",
    "model.base_filters=8",
    "train.epochs=4",  # killed after its first epoch, a trial has three more to be killed in
    "train.threads=1",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


def start_worker(tmp_path: Path, url: str) -> cli_process.Process:
    """The same line a user runs on every machine."""
    args = ["sweep", "fashion_multitask", "fashion_lambda", "--trials", "4", "--storage", url,
            "--study", "lam", "--out", str(tmp_path), "--heartbeat", "1"]  # fmt: skip
    return cli_process.start([*args, *(a for s in TINY for a in ("--set", s))], ROOT)


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_workers_one_killed_mid_trial(tmp_path, postgres_url):
    a = start_worker(tmp_path, postgres_url)
    folder = SweepFolder(tmp_path / "lam")
    storage: list = []  # one connection for every poll: a new one each took a loaded host
    # long enough to miss a short trial's window (seen: all four trials done unseen)

    def a_trained_one_epoch():
        try:
            storage[:] = storage or [optuna.storages.RDBStorage(postgres_url)]
            study = optuna.load_study(study_name="lam", storage=storage[0])
        except (KeyError, sqlalchemy.exc.SQLAlchemyError):
            # no study yet, or this poll raced worker A creating Optuna's tables: poll again
            return None
        for t in study.get_trials(deepcopy=False):
            ours = t.user_attrs.get("worker", "").endswith(f":{a.pid}")
            metrics = folder.path / str(t.user_attrs.get("run_dir")) / "metrics.jsonl"
            # an epoch done and another still to come, read after the trial's state: the
            # kill then lands inside the trial (a poll that first saw all its epochs,
            # on a loaded host, killed a worker whose trial had completed meanwhile)
            rows = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
            if ours and t.state.name == "RUNNING" and 1 <= rows < 4:
                return t.number
        return None

    b = None
    try:
        wait_for(lambda: (folder.path / "sweep.json").is_file(), 120, "the sweep folder")
        b = start_worker(tmp_path, postgres_url)
        killed = wait_for(a_trained_one_epoch, 180, "worker A inside a trial")
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=60)
        done = b.wait(timeout=300)  # killed after that long
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGKILL)

    study = optuna.load_study(study_name="lam", storage=postgres_url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4  # the requested number of finished trials
    grid_ids = [t.system_attrs["grid_id"] for t in complete]
    assert len(set(grid_ids)) == 4  # every grid point done exactly once
    rows = {r.number: r for r in load_trials(folder, postgres_url)}
    dead = rows[killed]
    assert dead.state == "fail" and dead.outcome == "interrupted"
    assert "heartbeats" in dead.reason and dead.retried_as is not None
    retry = rows[dead.retried_as]
    assert retry.state == "complete" and retry.run_dir == dead.run_dir  # resumed, same folder
    run = retry.run
    assert [m["epoch"] for m in run.read_metrics()] == [1, 2, 3, 4]
    assert json.loads((run.path / "trial.json").read_text())["trials"] == [killed, retry.number]
    # every run folder belongs to exactly one complete trial
    runs = sorted(p.name for p in (folder.path / "runs").iterdir())
    assert sorted(Path(t.user_attrs["run_dir"]).name for t in complete) == runs


def test_workers_racing_to_start_a_shared_study_agree_on_its_inputs(tmp_path, postgres_url):
    race_to_start(tmp_path, postgres_url)
    # Another machine, another sweep file: refused before its sweep folder is made.
    other = tmp_path / "other.yaml"
    other.write_text(LR_GRID.replace("0.003", "0.03"))
    done = run_cli("sweep", str(DEMO), str(other), "--storage", postgres_url, "--study", "race",
                   "--out", str(tmp_path / "b"))  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "study 'race' was started with another sweep file; use another --study" in done.stderr
    assert not (tmp_path / "b").exists()
