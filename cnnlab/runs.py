"""The run folder: where a run's recipe, metrics, checkpoints and results live.

    runs/<name>-<YYYYmmdd-HHMMSS>/
      recipe.yaml          resolved recipe (defaults and --set overrides applied)
      env.json             versions, device, threads, git commit
      status.json          running | interrupted | failed | finished, with the reason
      metrics.jsonl        one JSON line per epoch: train.*, val.*, lr, seconds, images/s
      checkpoints/last.pt  latest state (end of epoch or mid-epoch), for --resume
      checkpoints/best.pt  weights of the best epoch by train.monitor
      test_metrics.json    final test-set metrics of the best checkpoint
      figures/*.png        every figure of the run (`cnnlab report` / `cnnlab viz`)
      report.html          self-contained report: recipe, metrics, curves, all figures

Every file that matters is written atomically (temp file + rename): an interruption leaves
either the old or the new version, never half of one.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.recipe import Recipe, dump_recipe, load_recipe

CHECKPOINT_FORMAT = 1


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write via a temp file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; run files are as shareable as any other
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


class RunFolder:
    """Paths and file formats of one run; the only code that knows the layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, recipe: Recipe) -> RunFolder:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(recipe.output_dir) / f"{recipe.name}-{stamp}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        path.mkdir(parents=True)
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

    def recipe(self) -> Recipe:
        return load_recipe(self.recipe_path)

    # ------------------------------------------------------------------ metrics

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        return [
            json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()
        ]

    def append_metrics(self, row: dict) -> None:
        """Rewrite the whole (small) file atomically rather than appending in place."""
        rows = [*self.read_metrics(), row]
        write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def truncate_metrics(self, epochs: int) -> None:
        """Drop rows after `epochs` (written after the checkpoint we resume from)."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= epochs]
        write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def set_status(self, state: str, **info: Any) -> None:
        write_json(self.status_path, {"state": state, "time": time.time(), **info})

    def status(self) -> dict:
        return json.loads(self.status_path.read_text()) if self.status_path.is_file() else {}

    def test_metrics(self) -> dict:
        """The saved test metrics of the best checkpoint; {} before the test set was read."""
        return json.loads(self.test_path.read_text()) if self.test_path.is_file() else {}

    # -------------------------------------------------------------- checkpoints

    def save_checkpoint(self, path: Path, state: dict) -> None:
        atomic_write(
            path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f), binary=True
        )


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load with weights_only=True: a file that carries pickled Python objects is refused."""
    if not Path(path).is_file():
        raise CnnlabError(f"checkpoint {path} not found; the run has not finished an epoch yet")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[-1][:160]
        raise CnnlabError(
            f"{path} carries pickled Python objects and was refused (cnnlab loads checkpoints "
            f"with weights_only=True; {first}). Re-save it as a plain state_dict"
        ) from None
    except (RuntimeError, EOFError) as err:
        raise CnnlabError(
            f"{path} is not a readable checkpoint ({err}); it may be truncated"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (format {CHECKPOINT_FORMAT})")
    return state


# ---------------------------------------------------------------- environment


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    src = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


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
    """What a reader needs to trust or reproduce a number: versions, hardware, commit."""
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
    }
