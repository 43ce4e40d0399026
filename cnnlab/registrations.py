"""The record of what users registered (cnnlab/components.py), and how messages tell them to.

Why a module of its own at the bottom of the layers: the recipe's errors (an unknown
`model.backbone`), the data sources' and the run folder's env.json read this record and
these words, and they sit below `components.py`, which imports every registry. Nothing of
cnnlab is imported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["backbone", "source", "task", "figure"]

# What registers one of each kind, for "register your own with ..." at the end of an error.
REGISTER: dict[str, str] = {
    "backbone": "@cnnlab.register_backbone",
    "source": "cnnlab.register_source",
    "task": "@cnnlab.register_task",
    "figure": "@cnnlab.register_figure",
}


@dataclass(frozen=True)
class Registration:
    """One user registration, kept so that it can be undone and its origin named."""

    kind: Kind
    name: str
    previous: Any  # the entry it replaced (replace=True), put back by `unregister`; None: new
    origin: dict[str, str]  # {"import": spec} | {"package": name} | {"module": name}
    defines: str | None = None  # the class or function registered, "module.qualname"


REGISTERED: list[Registration] = []  # this process's user registrations, in order


def register_hint(kind: Kind) -> str:
    """The end of an "unknown component" error: how to add one of your own."""
    return f"register your own with {REGISTER[kind]} (see cnnlab --import)"


def origins() -> list[dict[str, str]]:
    """Each user registration and where it came from, for a run's env.json: a later process
    that lacks one can say what to import (`missing_hint`)."""
    return [{"kind": r.kind, "name": r.name, **r.origin} for r in REGISTERED]


def recorded_components(env_path: Path) -> list[dict]:
    """What a run's process registered, and from where (its env.json's `components`)."""
    try:
        recorded = json.loads(env_path.read_text()).get("components", [])
    except (OSError, ValueError, AttributeError):
        return []
    return recorded if isinstance(recorded, list) else []


def origin_in(components: list[dict], kind: str, name: str) -> dict | None:
    """Where the process that recorded `components` got a component from, if known."""
    found = [
        c
        for c in components
        if isinstance(c, dict) and (c.get("kind"), c.get("name")) == (kind, name)
    ]
    return found[-1] if found else None


def recorded_origin(env_path: Path, kind: str, name: str) -> dict | None:
    """Where a run's process got a component from, if its env.json says."""
    return origin_in(recorded_components(env_path), kind, name)


def missing_hint(origin: dict[str, str] | None) -> str:
    """How to get a component back in a process that lacks it, from its recorded origin."""
    origin = origin or {}
    if origin.get("package"):
        return f"install the package that registers it ({origin['package']})"
    spec = origin.get("import") or origin.get("module")
    if not spec or spec == "__main__":
        spec = "MODULE"
    return f"import the module that registers it (cnnlab --import {spec} ...)"
