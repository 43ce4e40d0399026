"""The recipes and sweep files that ship inside the package, found by name.

They live in `cnnlab/recipes/` (and `cnnlab/recipes/sweeps/`) as package data, so
`cnnlab train fashion_multitask` works from any folder and from an installed wheel, not
only from a checkout. A name is looked up only when no file of that name exists here.
"""

from __future__ import annotations

from pathlib import Path

RECIPES = Path(__file__).resolve().parent / "recipes"
SWEEPS = RECIPES / "sweeps"
# A recipe's first line may tell editors its schema (yaml-language-server, e.g. VS Code's YAML)
MODELINE_PREFIX = "# yaml-language-server:"


def _find(name: str | Path, folder: Path) -> Path:
    """`name` itself when it is a file; else the shipped file of that bare name, if any."""
    path = Path(name)
    if path.is_file() or path.parent != Path("."):
        return path  # a path the user gave is theirs: errors name it, never a shipped file
    shipped = folder / f"{path.name.removesuffix('.yaml')}.yaml"
    return shipped if shipped.is_file() else path


def recipe_file(name: str | Path) -> Path:
    return _find(name, RECIPES)


def sweep_file(name: str | Path) -> Path:
    return _find(name, SWEEPS)


def _first_line(path: Path) -> str:
    """The file's first comment that says what it is (an editor's schema line is skipped)."""
    lines = [x for x in path.read_text().splitlines() if not x.startswith(MODELINE_PREFIX)]
    return lines[0].lstrip("# ").strip() if lines else ""


def shipped_recipes() -> dict[str, str]:
    """Name -> its first comment line, for `cnnlab recipes`."""
    return {p.stem: _first_line(p) for p in sorted(RECIPES.glob("*.yaml"))}


def shipped_sweeps() -> dict[str, str]:
    """Sweep file name -> its first comment line (name maps are not sweeps of their own)."""
    return {
        p.stem: _first_line(p)
        for p in sorted(SWEEPS.glob("*.yaml"))
        if not p.name.endswith(".map.yaml")
    }
