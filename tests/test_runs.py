import fcntl
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cnnlab import runs
from cnnlab.catalog import RECIPES
from cnnlab.errors import CnnlabError
from cnnlab.runs import (
    RunFolder,
    atomic_write,
    environment,
    git_commit,
    load_checkpoint,
    write_text,
)
from tests.conftest import ROOT


class Payload:
    """Unpickling this creates a file: what a hostile checkpoint could do instead."""

    def __init__(self, witness: Path):
        self.witness = witness

    def __reduce__(self):
        return (Path.touch, (self.witness,))


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path):
    run = RunFolder(tmp_path)
    run.save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(2)}, "loop": {"epoch": 3}})
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["loop"]["epoch"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))


def test_pickled_object_is_refused_before_it_runs(tmp_path: Path):
    path, witness = tmp_path / "evil.pt", tmp_path / "unpickled"
    torch.save({"format": 1, "model": Payload(witness)}, path)
    with pytest.raises(CnnlabError, match="carries pickled Python objects and was refused"):
        load_checkpoint(path)
    assert not witness.exists()
    torch.load(path, weights_only=False)  # the same file, unpickled blindly, runs its code
    assert witness.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "c.pt"
    RunFolder(tmp_path).save_checkpoint(path, {"model": {"w": torch.ones(1000)}})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CnnlabError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path: Path):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def failing(f):
        f.write("half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, failing)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_environment_records_versions_and_device():
    env = environment(torch.device("cpu"))
    assert env["packages"]["torch"] and env["device"] == "cpu" and env["threads"] >= 1
    assert json.loads(json.dumps(env)) == env  # plain JSON data, nothing lost on the way


def test_git_commit_survives_git_timing_out(monkeypatch):
    """Whichever git call hangs, env.json gets no commit instead of train() crashing."""
    real = subprocess.run
    calls = []

    def slow_status(cmd, **kwargs):
        calls.append(cmd)
        if "status" in cmd:
            raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout", 5))
        return real(cmd, **kwargs)

    monkeypatch.setattr(subprocess, "run", slow_status)
    commit = git_commit()
    assert any("status" in c for c in calls)
    assert commit is None or "+dirty" not in commit


def test_atomic_write_never_touches_the_process_umask(tmp_path: Path, monkeypatch):
    """Setting the umask to 0 to read it would make other threads' new files world-writable."""

    def forbidden(mask):
        raise AssertionError(f"os.umask({mask:o}) called while writing")

    monkeypatch.setattr(os, "umask", forbidden)
    write_text(tmp_path / "a.json", "{}")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~runs.UMASK


def test_metrics_are_appended_not_rewritten(tmp_path: Path):
    run = RunFolder(tmp_path)
    run.append_metrics({"epoch": 1, "val.loss": 1.0})
    inode = run.metrics_path.stat().st_ino
    run.append_metrics({"epoch": 2, "val.loss": 0.5})
    assert run.metrics_path.stat().st_ino == inode  # the same file grew; no replacement
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]


def test_a_torn_metrics_line_is_skipped_and_named(tmp_path: Path, capsys):
    run = RunFolder(tmp_path)
    run.append_metrics({"epoch": 1, "val.loss": 1.0})
    run.append_metrics({"epoch": 2, "val.loss": 0.5})
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 3, "val.lo')  # the disk filled up mid-line
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    err = capsys.readouterr().err
    assert err.count("skipped unreadable line(s) 3") == 1  # said once, not every read
    run.truncate_metrics(2)  # what --resume does: the file holds the good rows only
    assert run.metrics_path.read_text().count("\n") == 2 and 'val.lo"' not in err


def test_the_lock_nests_within_a_process_and_is_released(tmp_path: Path):
    """A sweep worker holds it from linking a trial to training, and train() takes it again."""
    with RunFolder(tmp_path).lock(), RunFolder(tmp_path).lock():
        assert tmp_path.resolve() in runs._HELD
    assert tmp_path.resolve() not in runs._HELD
    fd = os.open(tmp_path / runs.LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free for anyone once released
    finally:
        os.close(fd)


def test_the_lock_holds_across_processes(tmp_path: Path):
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_AND_WAIT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CnnlabError, match=f"pid {holder.pid} on"), RunFolder(tmp_path).lock():
            pass
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(tmp_path).lock():  # a killed holder leaves no stale lock behind
        pass


LOCK_AND_WAIT = """
import sys, time
from cnnlab.runs import RunFolder
with RunFolder(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(60)
"""


def test_open_rejects_a_folder_that_is_not_a_run(tmp_path: Path):
    with pytest.raises(CnnlabError, match="is not a run folder"):
        RunFolder.open(tmp_path)


def test_a_run_folder_saved_by_an_older_cnnlab_still_loads(tmp_path: Path):
    """Older recipe.yaml files hold momentum, nesterov and betas whatever the optimizer."""
    raw = yaml.safe_load((RECIPES / "seed000_best_accuracy.yaml").read_text())
    raw["train"]["optimizer"].update(momentum=0.9, nesterov=False, betas=[0.9, 0.999])
    # ... and label_smoothing and standardize whatever the task type
    raw["tasks"]["cls"].update(loss="cross_entropy", label_smoothing=0.0, standardize=True)
    raw["tasks"]["ink"].update(loss="mse", label_smoothing=0.0, standardize=False)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    recipe = RunFolder.open(tmp_path).recipe()
    assert recipe.tasks["ink"].standardize is False  # a choice that was made is kept
    assert not hasattr(recipe.tasks["cls"], "standardize")
    optimizer = recipe.train.optimizer
    assert (optimizer.name, optimizer.momentum, optimizer.nesterov) == ("adam", None, None)
    assert optimizer.betas == (0.9, 0.999)
