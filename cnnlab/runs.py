"""The run folder: where a run's recipe, metrics, checkpoints and results live.

    runs/<name>-<YYYYmmdd-HHMMSS>/
      recipe.yaml          resolved recipe (defaults and --set overrides applied)
      env.json             versions, device, threads, git commit, the folder it trained in
      status.json          running | interrupted | failed | finished, with the reason
      metrics.jsonl        one JSON line per epoch: train.*, val.*, lr (lr.backbone), seconds, img/s
      checkpoints/last.pt  latest state (end of epoch or mid-epoch), for --resume
      checkpoints/best.pt  weights of the best epoch by train.monitor
      test_metrics.json    final test-set metrics of the best checkpoint
      splits.csv           each image file (a table's, a folder's) and the split it went to
      figures/*.png        every figure of the run (`cnnlab report` / `cnnlab viz`)
      report.html          self-contained report: recipe, metrics, curves, all figures

Every file that matters is written atomically (temp file + rename): an interruption leaves
either the old or the new version, never half of one. metrics.jsonl only grows while a run
trains (one fsynced line per epoch, under the folder's lock); a line torn by a full disk or
a copy cut short is skipped with a warning when the file is read.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.recipe import Recipe, dump_recipe, load_saved_recipe
from cnnlab.registrations import origins
from cnnlab.safe_load import torch_load

CHECKPOINT_FORMAT = 1
LOCK_FILE = ".lock"
_HELD: set[Path] = set()  # run folders this process holds the lock of (the lock nests)


def _holder(fd: int) -> str:
    """Who holds a run folder's lock, as its holder wrote it: "pid N on HOST"."""
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"


class RunInUse(CnnlabError):
    """Another process trains in the run folder; the folder is theirs, not to be touched."""


def _process_umask() -> int:
    """The umask, read once at import. Reading it means setting it, and a umask of 0 set
    while other threads (Optuna's heartbeat, loggers) create files makes those
    world-writable, so it is never read again later."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


UMASK = _process_umask()


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write via a temp file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; run files are as shareable as any other
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


SWEEP_FILE = "sweep.json"  # a sweep folder's settings (cnnlab/sweeps/study.py)
TRIAL_FILE = "trial.json"  # a trial's run folder: its sweep, study and trial number(s)


def stamp() -> str:
    """The time in a new folder's name: `fashion_fast-20261206-065816`."""
    return time.strftime("%Y%m%d-%H%M%S")


def is_sweep_folder(path: Path) -> bool:
    """Whether `path` is a sweep folder: it holds a recipe.yaml too (its base recipe)."""
    return (Path(path) / SWEEP_FILE).is_file()


def is_run_folder(path: Path) -> bool:
    """Whether `path` holds a run's recipe.yaml: a run folder (a sweep folder, which keeps
    its base recipe, too), not images or a folder of runs."""
    return (Path(path) / "recipe.yaml").is_file()


def _json_dict(path: Path) -> dict:
    """A JSON file's object; {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RunFolder:
    """Paths and file formats of one run; the only code that knows the layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._warned = False  # about a torn metrics line: once per folder, not every epoch

    @classmethod
    def create(cls, recipe: Recipe, path: Path | None = None) -> RunFolder:
        """A new run folder: `path` (made or empty) or `<output_dir>/<name>-<time>`."""
        if path is None:
            base = Path(recipe.output_dir) / f"{recipe.name}-{stamp()}"
            path, n = base, 1
            while path.exists():
                n += 1
                path = base.with_name(f"{base.name}-{n}")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        write_text(run.recipe_path, dump_recipe(recipe))
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        run = cls(path)
        if not run.recipe_path.is_file():
            raise CnnlabError(
                f"{path} is not a run folder (no recipe.yaml); runs live in runs/<name>-<time>"
            )
        return run

    recipe_path = property(lambda self: self.path / "recipe.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    last_path = property(lambda self: self.path / "checkpoints" / "last.pt")
    best_path = property(lambda self: self.path / "checkpoints" / "best.pt")
    test_path = property(lambda self: self.path / "test_metrics.json")
    status_path = property(lambda self: self.path / "status.json")
    env_path = property(lambda self: self.path / "env.json")
    calibration_path = property(lambda self: self.path / "calibration.json")
    splits_path = property(lambda self: self.path / "splits.csv")
    # the best weights' test predictions, kept by the report for the next one (a cache)
    predictions_path = property(lambda self: self.path / "checkpoints" / "best_test.pt")

    def write_splits(self, parts: dict[str, list[str] | None]) -> None:
        """splits.csv: each file the run read, a row each, with the split it went to (its
        table's path or its folder's), so a reviewer can see that no patient's image was
        both learnt and tested. Nothing where a split's images have no files (arrays)."""
        if any(names is None for names in parts.values()):
            return

        def rows(f) -> None:
            out = csv.writer(f)
            out.writerow(["split", "file"])
            out.writerows([split, name] for split, names in parts.items() for name in names)

        atomic_write(self.splits_path, rows)

    def recipe(self) -> Recipe:
        """The recipe as trained. Its data paths relative to the folder cnnlab ran in are
        read, when not in the current folder, in that one (DataSection.located): a run folder
        works from anywhere."""
        recipe = load_saved_recipe(self.recipe_path)
        if self.env_path.is_file():  # it began training (a sweep's new trial has not)
            recipe.data.of_run(self.path, self.trained_in())
        return recipe

    def env(self) -> dict:
        """env.json: versions, device, the folder it trained in, the precision chosen; {}
        before training began (or unreadable)."""
        return _json_dict(self.env_path)

    def trial(self) -> dict:
        """trial.json: the sweep, study and trial numbers (a retry's too) the run trained
        for; {} for a run of its own (or unreadable)."""
        return _json_dict(self.path / TRIAL_FILE)

    def trained_in(self) -> Path | None:
        """The folder cnnlab ran in when the run started (env.json's `cwd`); None for a run
        from before cnnlab recorded it, or before its training began."""
        cwd = self.env().get("cwd")
        return Path(cwd) if isinstance(cwd, str) and cwd else None

    def check_trained(self, what: str) -> None:
        """`what` (figures, a test, an export) reads the best weights, which a run has once
        an epoch finished: where there are none yet, say how to get them."""
        if self.best_path.is_file():
            return
        then = (
            f"continue it: cnnlab train --resume {self.path} (cnnlab.resume in Python)"
            if self.last_path.is_file()
            else "train it again"
        )
        raise CnnlabError(
            f"{what}: {self.path} has no best weights (checkpoints/best.pt): it has not "
            f"finished an epoch; {then}"
        )

    # ------------------------------------------------------------------ metrics

    def read_metrics(self) -> list[dict]:
        """Every readable epoch row; unreadable lines are skipped and named once."""
        if not self.metrics_path.is_file():
            return []
        rows, bad = [], []
        for number, line in enumerate(self.metrics_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                rows.append(row)
            else:
                bad.append(number)
        if bad and not self._warned:
            self._warned = True
            print(
                f"warning: {self.metrics_path}: skipped unreadable line(s) "
                f"{', '.join(map(str, bad))} (a write cut short?); using the {len(rows)} good "
                "rows (a --resume rewrites the file from them)",
                file=sys.stderr,
            )
        return rows

    def append_metrics(self, row: dict) -> None:
        """Append one line and fsync it. Only the lock holder writes (see `lock`), so rows
        written by earlier epochs are never read back and rewritten."""
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_metrics(self, epochs: int) -> None:
        """Drop rows after `epochs` (written after the checkpoint we resume from)."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= epochs]
        write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder exclusively while training in it. A sweep worker that missed its
        heartbeats but still runs, and the retry of its trial, must not both train here;
        nor may two `--resume` of one run. The lock dies with its process (flock). Within
        one process it nests: a sweep worker holds it from linking a trial to training it."""
        key = self.path.resolve()
        if key in _HELD:
            yield
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunInUse(
                    f"{self.path} is in use by another trainer ({_holder(fd)}); "
                    "wait for it to finish or stop it, then try again"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            _HELD.add(key)
            yield
        finally:
            _HELD.discard(key)
            os.close(fd)  # closing releases the lock

    def trainer(self) -> str | None:
        """Who trains in the folder now ("pid N on HOST"), None when nobody does: the lock
        is free (taken and let go at once), or this process holds it."""
        path = self.path / LOCK_FILE
        if self.path.resolve() in _HELD or not path.is_file():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        finally:
            os.close(fd)  # closing lets go of the shared lock, if taken
        return None

    def set_status(self, state: str, **info: Any) -> None:
        write_json(self.status_path, {"state": state, "time": time.time(), **info})

    def status(self) -> dict:
        return json.loads(self.status_path.read_text()) if self.status_path.is_file() else {}

    def test_metrics(self) -> dict:
        """The saved test metrics of the best checkpoint; {} before the test set was read."""
        return json.loads(self.test_path.read_text()) if self.test_path.is_file() else {}

    def calibration(self) -> dict:
        """What `cnnlab calibrate` fitted and measured; {} for a run never calibrated."""
        path = self.calibration_path
        return json.loads(path.read_text()) if path.is_file() else {}

    # -------------------------------------------------------------- checkpoints

    def save_checkpoint(self, path: Path, state: dict) -> None:
        atomic_write(
            path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f), binary=True
        )


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A cnnlab checkpoint, read safely (torch_load)."""
    if not Path(path).is_file():
        raise CnnlabError(f"checkpoint {path} not found; the run has not finished an epoch yet")
    state = torch_load(path, device)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (format {CHECKPOINT_FORMAT})")
    return state


# ---------------------------------------------------------------- environment


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """Output of a git command in cnnlab's own checkout; None when git cannot say."""
    src = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(src), *args], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str | None:
    """The commit cnnlab runs from, `+dirty` when tracked files differ from it."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


def environment(device: torch.device) -> dict:
    """What a reader needs to trust or reproduce a number: versions, hardware, commit, and
    the components users registered (with where they came from: a process that reloads the
    run without them names what to import)."""
    registered = origins()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": {
            p: _version(p) for p in ("cnnlab", "torch", "torchvision", "torchmetrics", "numpy")
        },
        "git_commit": git_commit(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"components": registered} if registered else {}),
    }
