"""A sweep trial trained on several processes: torchrun runs `cnnlab train --run-dir` in the
trial's folder, and the worker follows its metrics file to feed Optuna's pruner.

The trial's processes live apart from the worker: whatever ends them (an error, a NaN, a
pruned trial, Ctrl-C) ends all of them together, as torchrun does, and the worker goes on
to the next trial with nothing left half-joined. Pruning stops the processes with SIGTERM;
their folder keeps its last checkpoint like any interrupted run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.plugins import child_environment
from cnnlab.runs import RunFolder

LOG = "processes.log"  # the processes' output, in the trial's run folder
POLL_S = 0.5


def child_env() -> dict[str, str]:
    """The environment of a process this sweep starts: it imports this very cnnlab, and the
    modules `--import` named ($CNNLAB_IMPORT), so it knows the components recipes name."""
    root = str(Path(__file__).resolve().parent.parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return child_environment(env)


# Python run as torchrun ends with the process that started it (Linux's parent-death signal,
# set before exec, kept by it): a worker killed by SIGKILL or the out-of-memory killer left
# its trial's torchrun and ranks training beside the sweep resumed. Elsewhere, as before.
WITH_PARENT = (
    "import ctypes, os, signal, sys; libc = ctypes.CDLL(None); "
    "getattr(libc, 'prctl', lambda *a: 0)(1, signal.SIGTERM); "  # PR_SET_PDEATHSIG
    "os.getppid() == 1 and sys.exit(1); "  # the parent died before the signal was set
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def command(run: RunFolder, processes: int) -> list[str]:
    """torchrun on a free local port (--standalone), rank 0 taking the folder's lock; it
    ends when the worker does (`WITH_PARENT`)."""
    launch = [sys.executable, "-c", WITH_PARENT, "-m", "torch.distributed.run", "--standalone"]
    train = ["-m", "cnnlab", "train", "--run-dir", str(run.path)]
    return [*launch, "--nproc_per_node", str(processes), *train]


def train_in_processes(
    run: RunFolder, processes: int, on_epoch: Callable[[dict], None] | None
) -> None:
    """Train the run folder's recipe on `processes` processes; `on_epoch(row)` sees each
    epoch's metrics as the processes write them, and what it raises (a pruned trial) stops
    them and is raised here."""
    seen = len(run.read_metrics())  # a resumed trial: its earlier epochs were reported
    with open(run.path / LOG, "a") as log:
        out = {"stdout": log, "stderr": subprocess.STDOUT}
        proc = subprocess.Popen(command(run, processes), env=child_env(), **out)
        try:
            while True:
                done = proc.poll() is not None
                rows = run.read_metrics()
                for row in rows[seen:]:
                    if on_epoch is not None:
                        on_epoch(row)
                seen = len(rows)
                if done:
                    break
                time.sleep(POLL_S)
        except BaseException:  # pruned, or Ctrl-C: stop every process, then say why
            stop(proc)
            raise
    if proc.returncode == 0:
        return
    if stopped_by_signal(run):  # Ctrl-C reached torchrun, not (or not yet) this process
        raise KeyboardInterrupt
    if run.status().get("state") == "finished":  # rank 0 wrote everything; one died on exit
        print(
            f"warning: trial {run.path.name} finished, then one of its processes exited with "
            f"code {proc.returncode} (see {run.path / LOG}); its results are complete"
        )
        return
    raise CnnlabError(f"the trial's {processes} processes failed: {last_error(run)}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to torchrun, which passes it to every rank; they stop within a step."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stopped_by_signal(run: RunFolder) -> bool:
    """Whether the processes were stopped, not failed: their run says it was interrupted,
    or torchrun says it got SIGINT or SIGTERM (Ctrl-C in the terminal reaches torchrun and
    its ranks at once, and torchrun may end them before rank 0 records it). A failed trial
    it was not: the sweep stops, and --resume continues it from its checkpoint."""
    if run.status().get("state") == "interrupted":
        return True
    log = (run.path / LOG).read_text(errors="replace")
    return re.search(r"SignalException: Process \d+ got signal: (2|15)\b", log) is not None


def last_error(run: RunFolder) -> str:
    """The processes' own one-line reason, else the last line they wrote."""
    lines = (run.path / LOG).read_text(errors="replace").splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[0].removeprefix("error: ")
    said = [line.strip() for line in lines if line.strip(" =-")]  # not torchrun's rules
    return said[-1] if said else f"no output (see {run.path / LOG})"
