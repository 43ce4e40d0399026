"""Shared fixtures: small recipes on the real Fashion-MNIST files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recipes" / "fashion_multitask.yaml"

# The whole suite runs on the CPU with a fixed thread count, so metrics compare exactly.
torch.set_num_threads(2)


def tiny_recipe(tmp_path: Path, *overrides: str) -> Recipe:
    """The demo recipe shrunk to seconds: 2,000 training images, 1 epoch, small model."""
    base = [
        f"output_dir={tmp_path / 'runs'}",
        "data.train_subset=2000",
        "data.test_subset=500",
        "model.base_filters=8",
        "train.epochs=1",
        "train.progress=false",
        "train.threads=2",
        "train.device=cpu",
    ]
    return load_recipe(DEMO, [*base, *overrides])


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run `cnnlab ...` as a user would; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "cnnlab.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@pytest.fixture
def tiny(tmp_path: Path):
    return lambda *overrides: tiny_recipe(tmp_path, *overrides)
