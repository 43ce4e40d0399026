"""`cnnlab` commands for the tests, each in a process of its own that starts already imported.

Every command a test runs is its own process, with its own exit code, output, working folder
and environment, as a user's is. What it skips is the start: importing torch, dynamo,
torchmetrics, matplotlib, captum, optuna and cnnlab cost 3-5 s of CPU a command, and the
suite runs dozens (the whole suite took 800 CPU-seconds, 520 this way). Python's forkserver
imports them once per pytest worker, before any tensor or thread exists, and forks each
command from that process. A command given environment variables of its own starts a fresh
interpreter instead (some are read at import; READ_WHEN_RUN are not), as every command does with
CNNLAB_TEST_FRESH=1; commands that start commands of their own (sweep workers, torchrun
ranks) start them fresh, as for a user. A test's own function that stands for a process of
its own (a worker joining a study) starts the same way (`Process`).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
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


def _forked(
    target: Callable[..., object], args: tuple, cwd: str, env: dict, out: str, err: str
) -> None:
    """The forked process: the caller's folder and environment, output to the two files,
    then `target(*args)` (a SystemExit is the exit code)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        file = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    target(*args)


def _cli(args: list[str]) -> None:
    """The CLI as `python -m cnnlab.cli ARGS` runs it."""
    sys.argv = [str(CLI), *args]
    from cnnlab.cli import main

    main()


class Process:
    """`target(*args)` in a process of its own, started already imported (forked from the
    preloaded server), output captured. A fresh interpreter runs `command` instead under
    CNNLAB_TEST_FRESH=1, or when `env` sets variables read at import; by default `command`
    imports `target` (a module-level function) by name and passes `args` as strings."""

    def __init__(
        self, target: Callable[..., object], args: tuple, cwd: Path, env: dict | None = None,
        command: list[str] | None = None,
    ) -> None:  # fmt: skip
        environ = {**os.environ, **(env or {})}
        self._tmp = tempfile.TemporaryDirectory(prefix="cnnlab-cli-")
        self._out, self._err = Path(self._tmp.name) / "stdout", Path(self._tmp.name) / "stderr"
        self.args = command or [sys.executable, "-c", f"from {target.__module__} import "
                                f"{target.__name__} as f; import sys; f(*sys.argv[1:])",
                                *map(str, args)]  # fmt: skip
        self._popen: subprocess.Popen | None = None
        self._proc = None
        if not (env or {}).keys() <= READ_WHEN_RUN or fresh():
            with open(self._out, "w") as out, open(self._err, "w") as err:
                self._popen = subprocess.Popen(self.args, cwd=cwd, env=environ, stdout=out,
                                               stderr=err)  # fmt: skip
            return
        self._out.touch()
        self._err.touch()
        self._proc = context().Process(
            target=_forked, args=(target, args, str(cwd), environ, str(self._out), str(self._err))
        )
        self._proc.start()

    @property
    def pid(self) -> int:
        return self._popen.pid if self._popen is not None else self._proc.pid

    def poll(self) -> int | None:
        """Its exit code, or None while it runs."""
        return self._popen.poll() if self._popen is not None else self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Its exit code and output once it ends; subprocess.TimeoutExpired after `timeout`."""
        try:
            code = self._join(timeout)
            read = lambda p: p.read_text(errors="replace")  # noqa: E731
            return subprocess.CompletedProcess(self.args, code, read(self._out), read(self._err))
        finally:
            self._tmp.cleanup()

    def _join(self, timeout: float) -> int:
        if self._popen is not None:
            try:
                return self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
                raise
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            self._proc.kill()
            self._proc.join()
            raise subprocess.TimeoutExpired(self.args, timeout, self._out.read_bytes(),
                                            self._err.read_bytes())  # fmt: skip
        return self._proc.exitcode


def start(args: list[str], cwd: Path, env: dict | None = None) -> Process:
    """`python -m cnnlab.cli ARGS` started in `cwd` with this environment (plus `env`):
    `Process.wait` gives its exit code and output as text."""
    command = [sys.executable, "-m", "cnnlab.cli", *args]
    return Process(_cli, (list(args),), cwd, env, command)


def run(args: list[str], cwd: Path, env: dict | None, timeout: int) -> subprocess.CompletedProcess:
    """`start`, then its CompletedProcess; subprocess.TimeoutExpired after `timeout`."""
    return start(args, cwd, env).wait(timeout)
