"""`cnnlab` commands for the tests, each in a process of its own that starts already imported.

Every command a test runs is its own process, with its own exit code, output, working folder
and environment, as a user's is. What it skips is the start: importing torch, dynamo,
torchmetrics, matplotlib, captum, optuna and cnnlab cost 3-5 s of CPU a command, and the
suite runs dozens (the whole suite took 800 CPU-seconds, 520 this way). Python's forkserver
imports them once per pytest worker, before any tensor or thread exists, and forks each
command from that process. A command given environment variables of its own starts a fresh
interpreter instead (some are read at import; READ_WHEN_RUN are not), as every command does with
CNNLAB_TEST_FRESH=1; commands that start commands of their own (sweep workers, torchrun
ranks) start them fresh, as for a user.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# What `cnnlab`'s commands import between them; the server imports them and runs nothing.
PRELOAD = [
    "torch",
    "torch._dynamo",  # torch's optimizers import it on their first call
    "torchmetrics",
    "cnnlab.cli",
    "cnnlab.api",
    "cnnlab.report",
    "captum.attr",
    "optuna",
    "cnnlab.sweeps.launch",
]
CLI = Path(__file__).resolve().parent.parent / "cnnlab" / "cli.py"
# Variables cnnlab reads when a command runs, not at import: a command given only these still
# starts already imported. (Hugging Face's hub fixes its cache folder at import: no test gives
# XDG_CACHE_HOME to a command that downloads weights.)
READ_WHEN_RUN = frozenset({"XDG_CACHE_HOME", "CNNLAB_DATA"})
_context: multiprocessing.context.BaseContext | None = None


def fresh() -> bool:
    return os.environ.get("CNNLAB_TEST_FRESH", "0") == "1"


def context() -> multiprocessing.context.BaseContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _command(args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """The forked process: the caller's folder and environment, output to the two files,
    then the CLI as `python -m cnnlab.cli` runs it (its SystemExit is the exit code)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        file = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    sys.argv = [str(CLI), *args]
    from cnnlab.cli import main

    main()


def run(args: list[str], cwd: Path, env: dict | None, timeout: int) -> subprocess.CompletedProcess:
    """`python -m cnnlab.cli ARGS` in `cwd` with this environment (plus `env`), output
    captured as text: a CompletedProcess, or subprocess.TimeoutExpired."""
    cmd = [sys.executable, "-m", "cnnlab.cli", *args]
    environ = {**os.environ, **(env or {})}
    if fresh() or not (env or {}).keys() <= READ_WHEN_RUN:
        return subprocess.run(
            cmd, capture_output=True, text=True, cwd=cwd, env=environ, timeout=timeout
        )
    with tempfile.TemporaryDirectory(prefix="cnnlab-cli-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        out.touch()
        err.touch()
        proc = context().Process(
            target=_command, args=(list(args), str(cwd), environ, str(out), str(err))
        )
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(cmd, timeout, out.read_bytes(), err.read_bytes())
        read = lambda p: p.read_text(errors="replace")  # noqa: E731
        return subprocess.CompletedProcess(cmd, proc.exitcode, read(out), read(err))
