"""Shipped recipes and sweep files: package data, found by name from any folder."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from cnnlab.catalog import RECIPES, SWEEPS, recipe_file, shipped_recipes, shipped_sweeps
from tests.conftest import ROOT, TINY, run_cli


def test_names_resolve_to_shipped_files_and_paths_stay_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # far from the checkout
    assert recipe_file("fashion_multitask") == RECIPES / "fashion_multitask.yaml"
    assert recipe_file("fashion_multitask.yaml") == RECIPES / "fashion_multitask.yaml"
    # a path someone typed is theirs, even when it does not exist: no silent substitute
    assert recipe_file("mine/fashion_multitask.yaml") == Path("mine/fashion_multitask.yaml")
    (tmp_path / "fashion_multitask.yaml").write_text("name: mine\n")
    assert recipe_file("fashion_multitask.yaml") == Path("fashion_multitask.yaml")


def test_cnnlab_recipes_lists_recipes_and_sweep_files():
    out = run_cli("recipes")
    assert out.returncode == 0, out.stderr
    assert {"fashion_multitask", "seed000_best_rmse"} <= set(shipped_recipes())
    assert {"fashion_lambda", "seed002_bayes"} <= set(shipped_sweeps())
    assert not any(name.endswith(".map") for name in shipped_sweeps())
    for name in [*shipped_recipes(), *shipped_sweeps()]:
        assert f"  {name} " in out.stdout
    # each says what it is in a whole phrase, not a line cut off mid-sentence
    dangling = {"a", "an", "and", "by", "for", "in", "of", "on", "or", "per", "the", "to", "with"}
    for name, said in {**shipped_recipes(), **shipped_sweeps()}.items():
        assert said and said.split()[-1].strip("(") not in dangling, (name, said)


def test_train_by_name_from_another_folder(tmp_path):
    sets = [f"output_dir={tmp_path / 'runs'}", *TINY]
    out = run_cli("train", "fashion_multitask", *(a for s in sets for a in ("--set", s)),
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_the_wheel_carries_the_recipes_and_sweep_files(tmp_path):
    """An installed cnnlab has no checkout beside it: the files must be package data."""
    uv = Path(sys.executable).with_name("uv")  # the Makefile's installer: 1.1 s, pip wheel 3.3
    build = [str(uv), "build", "--wheel", "-q", "-o"] if uv.is_file() else None
    build = build or [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w"]
    subprocess.run([*build, str(tmp_path), str(ROOT)], check=True, capture_output=True,
                   timeout=600)  # fmt: skip
    (wheel,) = tmp_path.glob("cnnlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [*RECIPES.glob("*.yaml"), *SWEEPS.glob("*.yaml")]
    assert {p.relative_to(ROOT).as_posix() for p in shipped} <= names
    assert "cnnlab/templates/report.html.j2" in names
