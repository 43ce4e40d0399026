"""Data-parallel training under torchrun: two CPU processes (gloo) on the real Fashion-MNIST
train the same model as one process with the same global batch, and a killed rank stops the
other with one line and a folder that resumes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab.data.batches import Splits
from cnnlab.distributed import Ranks, shard
from cnnlab.errors import CnnlabError
from cnnlab.recipe import load_recipe
from cnnlab.runs import RunFolder, load_checkpoint
from cnnlab.sweeps import torchrun
from cnnlab.sweeps.results import load_trials
from cnnlab.sweeps.study import SweepFolder
from cnnlab.sweeps.torchrun import train_in_processes
from tests.conftest import DEMO, ROOT, TINY, run_cli

SMALL = [*TINY, "data.train_subset=1000"]  # a thousand images: each torch process starts fast
# BatchNorm normalizes each rank's slice and dropout draws per rank (by design, as in any
# DDP run): without them the two processes must follow the one-process path exactly.
SAME_PATH = [
    *SMALL,
    "model.batch_norm=false",
    "tasks.cls.head.dropout=0",
    "tasks.ink.head.dropout=0",
    "train.precision=fp32",
    "train.epochs=2",
]
TIMING = {"seconds", "images_per_s"}


def cnnlab(out: Path, overrides: list[str], processes: int, *, wait: bool = True):
    """`cnnlab train` on the demo recipe, as one process or under torchrun."""
    sets = [a for o in [f"output_dir={out}", *overrides] for a in ("--set", o)]
    return launch(["train", str(DEMO), *sets], processes, wait=wait)


def launch(args: list[str], processes: int, *, wait: bool = True, env: dict | None = None):
    """`cnnlab ARGS` as one process (started as tests/cli_process.py starts every command)
    or under torchrun; `wait=False` (torchrun only) returns the running Popen."""
    if processes == 1:
        return run_cli(*args, env=env)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    # --standalone: a rendezvous on a free local port (tests run side by side)
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd = [*run, "--nproc_per_node", str(processes), "-m", "cnnlab", *args]
    if not wait:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def only_run(out: Path) -> RunFolder:
    (path,) = out.iterdir()
    return RunFolder.open(path)


def test_two_processes_train_what_one_process_trains(tmp_path):
    one = cnnlab(tmp_path / "one", SAME_PATH, 1)
    two = cnnlab(tmp_path / "two", SAME_PATH, 2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("run folder:") == 1  # rank 0 speaks for both
    a, b = only_run(tmp_path / "one"), only_run(tmp_path / "two")
    rows_a, rows_b = a.read_metrics(), b.read_metrics()
    assert [r["epoch"] for r in rows_b] == [1, 2]  # one metrics file, written once per epoch
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ra.keys() - TIMING - {"lr"}:
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), key
    wa, wb = load_checkpoint(a.last_path)["model"], load_checkpoint(b.last_path)["model"]
    for name, tensor in wa.items():
        torch.testing.assert_close(wb[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert (b.path / "test_metrics.json").is_file() and b.status()["state"] == "finished"


def test_a_killed_rank_stops_the_other_with_one_line_and_the_run_resumes(tmp_path):
    out = tmp_path / "runs"
    proc = cnnlab(out, [*SMALL, "train.epochs=4"], 2, wait=False)
    last = None
    for _ in range(600):  # the first epoch's checkpoint: then one rank dies mid-run
        found = list(out.glob("*/checkpoints/last.pt"))
        if found:
            last = found[0]
            break
        time.sleep(0.2)
    assert last is not None, proc.communicate()[0]
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    victim = sorted(int(p) for p in ranks.stdout.split())[-1]  # the later-started: rank 1
    os.kill(victim, 9)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    lines = [line for line in output.splitlines() if line.startswith("error: rank 0 of 2")]
    assert len(lines) == 1, output
    assert "continue with: torchrun --nproc_per_node 2 -m cnnlab train --resume" in lines[0]
    run = only_run(out)
    assert run.status()["state"] == "interrupted"
    done = len(run.read_metrics())
    assert 1 <= done < 4 and load_checkpoint(run.last_path)["loop"]["epoch"] == done
    again = launch(["train", "--resume", str(run.path)], 2)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"at epoch {done + 1} of 4" in again.stdout
    assert [r["epoch"] for r in run.read_metrics()] == list(range(1, 5))
    assert run.status()["state"] == "finished"


def test_shards_weight_the_loss_back_to_the_global_mean():
    """Uneven slices (a trailing batch): the factors make DDP's average of the ranks' mean
    losses the mean over the whole batch."""
    x = torch.arange(5.0).view(5, 1, 1, 1)
    parts = [shard(x, {"y": x.flatten()}, Ranks(rank=r, world=2)) for r in range(2)]
    assert [len(p[0]) for p in parts] == [2, 3]
    assert torch.cat([p[1]["y"] for p in parts]).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    ddp_mean = sum(p[0].mean() * p[2] for p in parts) / 2
    assert ddp_mean.item() == pytest.approx(x.mean().item())


def test_evaluation_parts_cover_every_row_once():
    images = torch.arange(7, dtype=torch.uint8).view(7, 1, 1, 1)
    split = type("Split", (), {"images": images, "targets": {}, "__len__": lambda s: 7})()
    splits = Splits.__new__(Splits)
    splits.val = split
    splits.finish = lambda x, t, needed: (x, t)
    seen = [
        b[0].flatten().mul(255).round().tolist()
        for k in range(3)
        for b in splits.eval_batches("val", 2, set(), (k, 3))
    ]
    assert sorted(v for batch in seen for v in batch) == list(range(7))


def test_a_sweep_trains_its_trial_on_two_processes(tmp_path):
    """--trial-processes 2: a trial is a torchrun of its own; the worker follows its
    metrics (Optuna sees every epoch) and the run folder is written once, by rank 0."""
    spec = tmp_path / "lr.yaml"
    spec.write_text(
        "method: grid\nmetric: {name: val.cls.accuracy}\n"
        "parameters: {train.optimizer.lr: {values: [0.004]}}\n"
    )
    sets = [a for o in [*SMALL, "train.epochs=2"] for a in ("--set", o)]
    args = ["sweep", str(DEMO), str(spec), "--trial-processes", "2", "--out", str(tmp_path)]
    done = launch([*args, *sets], 1)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 processes a trial (torchrun)" in done.stdout
    (path,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    folder = SweepFolder.open(path)
    rows = load_trials(folder, None)
    assert [r.state for r in rows] == ["complete"]
    assert [r.epochs for r in rows] == [2]  # each epoch reported to Optuna as it came
    for r in rows:
        env = json.loads((r.run.path / "env.json").read_text())
        assert env["processes"] == 2 and r.run.status()["state"] == "finished"
        metrics = r.run.read_metrics()
        assert [m["epoch"] for m in metrics] == [1, 2]
        assert r.value == pytest.approx(max(m["val.cls.accuracy"] for m in metrics))


def test_sweep_under_torchrun_is_refused_with_the_way_to_do_it(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("method: grid\nparameters: {seed: {values: [0]}}\n")
    rank0 = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}  # as torchrun sets them
    out = launch(["sweep", str(DEMO), str(spec), "--out", str(tmp_path)], 1, env=rank0)
    assert out.returncode != 0
    assert "--trial-processes N starts torchrun for each trial" in out.stdout + out.stderr


def test_what_the_worker_raises_stops_a_trials_processes(tmp_path):
    """A pruned trial: the worker's callback raises after epoch 1, the processes are
    stopped at once and the folder keeps a checkpoint to resume from."""
    recipe = load_recipe(DEMO, [f"output_dir={tmp_path}", *SMALL, "train.epochs=30"])
    run = RunFolder.create(recipe)

    class Pruned(Exception):
        pass

    def on_epoch(row: dict) -> None:
        if row["epoch"] == 1:
            raise Pruned

    started = time.monotonic()
    with pytest.raises(Pruned):
        train_in_processes(run, 2, on_epoch)
    assert time.monotonic() - started < 60  # 30 epochs would take minutes
    assert 1 <= len(run.read_metrics()) < 30 and run.last_path.is_file()
    left = subprocess.run(["pgrep", "-f", f"--run-dir {run.path}"], capture_output=True)
    assert left.stdout == b""  # no rank outlives the trial


@pytest.mark.parametrize("state", ["finished", "trained"])
def test_a_process_that_dies_on_its_way_out(tmp_path, monkeypatch, capsys, state):
    """After rank 0 wrote `finished`, the trial's results are whole: a process aborting as
    it exits (SIGABRT, as gloo's teardown once did in CI) is a warning. Before, it fails."""
    recipe = load_recipe(DEMO, [f"output_dir={tmp_path}", *SMALL])
    run = RunFolder.create(recipe)
    script = (
        "import os, sys; from cnnlab.runs import RunFolder; "
        f"RunFolder.open(sys.argv[1]).set_status({state!r}); "
        "print('  traceback : Signal 6 (SIGABRT)', '=' * 20, sep=chr(10), flush=True); os.abort()"
    )
    monkeypatch.setattr(torchrun, "command", lambda r, n: [sys.executable, "-c", script, r.path])
    if state == "finished":
        train_in_processes(run, 2, None)
        assert run.status()["state"] == "finished"
        assert "finished, then one of its processes exited with code" in capsys.readouterr().out
    else:
        with pytest.raises(CnnlabError, match=r"processes failed: traceback : Signal 6 \(SIGABRT"):
            train_in_processes(run, 2, None)


def test_ctrl_c_that_reaches_torchrun_first_interrupts_the_trial(tmp_path, monkeypatch):
    """Ctrl-C reaches torchrun and the ranks with the worker: torchrun's SignalException
    was a failed trial, and the sweep went on to the next one."""
    recipe = load_recipe(DEMO, [f"output_dir={tmp_path}"])

    def ends(said: str):
        return lambda run, n: [sys.executable, "-c", f"print({said!r}); raise SystemExit(1)"]

    signal_2 = (
        "torch.distributed.elastic.multiprocessing.api.SignalException: Process 7 got signal: 2"
    )
    monkeypatch.setattr(torchrun, "command", ends(signal_2))
    with pytest.raises(KeyboardInterrupt):  # the worker records it interrupted and stops
        train_in_processes(RunFolder.create(recipe), 2, None)
    monkeypatch.setattr(torchrun, "command", ends("error: boom"))  # a failure stays one
    with pytest.raises(CnnlabError, match="^the trial's 2 processes failed: boom$"):
        train_in_processes(RunFolder.create(recipe), 2, None)


def test_a_trials_processes_end_with_the_worker_that_started_them(tmp_path):
    """kill -9 of a sweep left its trial's torchrun and ranks training beside the resumed
    sweep: torchrun now gets SIGTERM when its worker dies (and passes it to its ranks)."""
    import signal

    from cnnlab.sweeps.torchrun import WITH_PARENT

    worker = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; from cnnlab.sweeps.torchrun import "
         "WITH_PARENT as W; p = subprocess.Popen([sys.executable, '-c', W, '-c', "
         "'import time; time.sleep(120)']); print(p.pid, flush=True); p.wait()"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    trial = int(worker.stdout.readline())
    assert WITH_PARENT and alive(trial)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    deadline = time.monotonic() + 30
    while alive(trial) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(trial)


def alive(pid: int) -> bool:
    """Running, not a zombie nobody reaped (a container's PID 1 may not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
