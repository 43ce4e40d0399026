"""Shared fixtures: small recipes on the real Fashion-MNIST files."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cnnlab.catalog import RECIPES
from cnnlab.recipe import Recipe, load_recipe
from cnnlab.tasks import TargetInfo, TargetSpec, Task, create_tasks
from cnnlab.tasks.regression import Regression
from tests import cli_process

ROOT = Path(__file__).resolve().parent.parent
DEMO = RECIPES / "fashion_multitask.yaml"

# The whole suite runs on the CPU with one thread per process, so metrics compare exactly
# and the pytest workers (one per core and one more: the Makefile) do not fight over the
# cores: two processes of two threads each on two cores ran the same training 1.8-2.1x
# slower than one thread each.
# Commands the tests start (runs, sweeps, notebook kernels) inherit OMP_NUM_THREADS.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


# The demo recipe shrunk to seconds: 2,000 training images, 1 epoch, small model.
TINY = [
    "data.train_subset=2000",
    "data.test_subset=500",
    "model.base_filters=8",
    "train.epochs=1",
    "train.progress=false",
    "train.threads=1",
    "train.device=cpu",
    "train.report=false",  # report tests turn it on
]


def tiny_recipe(tmp_path: Path, *overrides: str) -> Recipe:
    """The demo recipe shrunk to seconds (TINY), writing runs under tmp_path."""
    return load_recipe(DEMO, [f"output_dir={tmp_path / 'runs'}", *TINY, *overrides])


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run `cnnlab ...` as a user would, in its own process (tests/cli_process.py: forked
    from one that imported cnnlab already); returns the CompletedProcess."""
    return cli_process.run(list(args), cwd or ROOT, env, timeout)


def edit_table(folder: Path, change: Callable[[int, dict], None]) -> Path:
    """`folder`, its labels.csv rewritten with each row (a dict) edited in place by
    `change(i, row)`; a column it adds joins the header."""
    path = folder / "labels.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        change(i, row)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def table_classifier(
    folder: Path, out: Path, column: str, classes: list[str] | None = None, **train
) -> dict:
    """A recipe that classifies `column` of the shapes table in `folder` with a small CNN in
    seconds (runs under `out`/runs); `train`: more of its train section."""
    target = {"kind": "category", "column": column} | ({"classes": classes} if classes else {})
    return {
        "name": column, "output_dir": str(out / "runs"),
        "data": {"source": "table", "table": str(folder / "labels.csv"), "image_column": "image",
                 "targets": {column: target}, "split": {"column": "split"}},
        "model": {"backbone": "cnn", "base_filters": 8},
        "tasks": {column: {"type": "classification", "target": column}},
        "train": {"epochs": 1, "batch_size": 32, "progress": False, "device": "cpu",
                  "threads": 1, "report": False, "precision": "fp32", **train},
    }  # fmt: skip


def fitted_tasks(
    recipe: Recipe, classes: int = 10, ink: tuple[float, float] = (0.0, 1.0)
) -> dict[str, Task]:
    """The recipe's tasks told their targets without data: `classes` class names for every
    categorical target, `ink` = (mean, std) for every standardized one."""
    tasks = create_tasks(recipe.tasks)
    for task in tasks.values():
        if isinstance(task, Regression):  # a number: no classes
            task.fit(TargetSpec())
            task.info = TargetInfo(mean=ink[0], std=ink[1])
            continue
        per_pixel = task.cfg.type == "pixel_classification"
        task.fit(TargetSpec(classes=[f"class {i}" for i in range(classes)], per_pixel=per_pixel))
    return tasks


@pytest.fixture
def tiny(tmp_path: Path):
    return lambda *overrides: tiny_recipe(tmp_path, *overrides)


# ------------------------------------------------------------ viz + report (issue 4)


@pytest.fixture(scope="session")
def report_run(tmp_path_factory) -> tuple[Path, str]:
    """One tiny run trained by `cnnlab train` as a user would, report on: (folder, stdout).

    Shared read-only by the viz and report tests (they write into copies or --out folders).
    """
    tmp = tmp_path_factory.mktemp("report_run")
    sets = [f"output_dir={tmp / 'runs'}", *TINY, "train.epochs=2", "train.report=true"]
    # figures must predict as the bf16 test evaluation did; 600 images, since bf16 trains
    # 12x slower than fp32 on a CPU without bf16 units (90 images/s here)
    sets += ["train.precision=bf16", "data.train_subset=600"]
    out = run_cli("train", str(DEMO), *(a for s in sets for a in ("--set", s)))
    assert out.returncode == 0, out.stderr
    (folder,) = (tmp / "runs").iterdir()
    return folder, out.stdout
