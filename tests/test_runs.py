import pickle
from pathlib import Path

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunFolder, atomic_write, environment, load_checkpoint


class Payload:
    """Any custom class: unpickling it would run arbitrary code in general."""


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path):
    run = RunFolder(tmp_path)
    run.save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(2)}, "loop": {"epoch": 3}})
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["loop"]["epoch"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))


def test_pickled_object_is_refused(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": Payload()}, path)
    with pytest.raises(CnnlabError, match="carries pickled Python objects and was refused"):
        load_checkpoint(path)


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
    assert pickle.dumps(env)  # plain data


def test_open_rejects_a_folder_that_is_not_a_run(tmp_path: Path):
    with pytest.raises(CnnlabError, match="is not a run folder"):
        RunFolder.open(tmp_path)
