"""Where a user's components come from: `--import` modules, installed packages' entry
points, and the $CNNLAB_IMPORT that hands the imports on to the processes a command starts.

Why apart from `components.py`: this is about loading code, that about registering what the
code defines. The CLI reads the entry points on every command, so only the standard
library is imported here; the modules loaded then call `cnnlab.register_*`, which records
where each registration came from (`LOADING`) for a run's env.json.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import types
from pathlib import Path

from cnnlab.errors import CnnlabError

IMPORT_ENV = "CNNLAB_IMPORT"  # os.pathsep-separated --import modules, for child processes
ENTRY_POINT_GROUP = "cnnlab.components"
# --import specs done in this process (files as absolute paths) -> the module's name
IMPORTED: dict[str, str] = {}
LOADING: list[dict[str, str]] = []  # the import or entry point being loaded right now
_ENTRY_POINTS: list[bool] = []  # non-empty once load_entry_points has run


def import_modules(names: list[str]) -> None:
    """Import each `--import` MODULE once per process: a dotted module name, importable from
    the current folder (which is put on sys.path), or a path to a .py file (its folder goes
    on sys.path, as for `python file.py`). A module that cannot be found, or one whose
    registration fails, is one CnnlabError line; child processes get them in $CNNLAB_IMPORT
    (`child_environment`)."""
    for text in names:
        spec = text.strip()
        if not spec:
            continue
        is_file = spec.endswith(".py") or os.sep in spec or "/" in spec
        key = str(Path(spec).expanduser().resolve()) if is_file else spec
        if key in IMPORTED:
            continue
        LOADING.append({"import": key})
        try:
            module = _import_file(Path(key)) if is_file else _import_module(spec)
        except CnnlabError as err:
            raise CnnlabError(f"--import {spec}: {err}") from None
        finally:
            LOADING.pop()
        IMPORTED[key] = module


def _import_module(name: str) -> str:
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or (name + ".").startswith(err.name + "."):
            raise CnnlabError(
                f"no module named {name!r} in {here} or the installed packages; give a module "
                "importable from this folder (my_components, pkg.components) or a .py file path"
            ) from None
        raise CnnlabError(f"it needs {err.name!r}, which is not installed") from None
    return name


def _import_file(path: Path) -> str:
    """Import a .py file as a module; returns the module's name."""
    if not path.is_file():
        raise CnnlabError(f"no such file {path}; give a .py file or a module name")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    # Under its own name, so `import my_components` elsewhere finds this very module (one
    # registration, not two); a name taken by another module gets a private one.
    name = path.stem
    if not name.isidentifier() or (name in sys.modules and _file_of(name) != path):
        name = f"_cnnlab_import_{abs(hash(str(path))):x}"
    if name in sys.modules:
        return name
    loader = importlib.util.spec_from_file_location(name, path)
    if loader is None or loader.loader is None:
        raise CnnlabError(f"{path} cannot be imported as Python")
    module = importlib.util.module_from_spec(loader)
    sys.modules[name] = module
    try:
        loader.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return name


def _file_of(module: str) -> Path | None:
    file = getattr(sys.modules.get(module), "__file__", None)
    return Path(file).resolve() if file else None


def imported_modules() -> list[str]:
    """The `--import` specs this process imported (files as absolute paths)."""
    return list(IMPORTED)


def import_from_environment() -> None:
    """Import what the parent process imported ($CNNLAB_IMPORT): a sweep worker or a
    torchrun rank must know the components the sweep's recipes name."""
    value = os.environ.get(IMPORT_ENV, "")
    import_modules([s for s in value.split(os.pathsep) if s])


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` for a process this one starts, with $CNNLAB_IMPORT naming what it must import
    to know this process's components (`handed_on`)."""
    specs = handed_on()
    if specs:
        env = {**env, IMPORT_ENV: os.pathsep.join(specs)}
    return env


def handed_on() -> list[str]:
    """Every --import, then the module each registration came from: a notebook's
    `import my_backbone` registers too, and a sweep's worker processes or a run's torchrun
    ranks must import it as well. A top-level module goes by its file, which the child
    finds from any folder; a package's module by its name."""
    from cnnlab.registrations import REGISTERED

    specs = list(IMPORTED)
    for record in REGISTERED:
        module = record.origin.get("module")
        if not module or module == "__main__":
            continue
        file = _file_of(module)
        spec = str(file) if file is not None and "." not in module else module
        if spec not in specs:
            specs.append(spec)
    return specs


def import_flags() -> str:
    """' --import SPEC' for each module a command printed for later must import
    (`handed_on`), as it stands after `cnnlab`: the command works as it is copied."""
    return "".join(f" --import {spec}" for spec in handed_on())


def left_behind(text: str) -> list[str]:
    """The components `text` (a recipe and a sweep, as text) names that a process started
    from here cannot have: registered in __main__ (a notebook's cell, the script itself),
    which no child can import without running the script again."""
    from cnnlab.registrations import REGISTERED

    return [
        f"{r.kind} {r.name!r}"
        for r in REGISTERED
        if r.origin.get("module") == "__main__"
        and r.kind != "figure"  # figures are drawn here, not in the children
        and re.search(rf"(?<![\w-]){re.escape(r.name)}(?![\w-])", text)
    ]


def load_entry_points() -> None:
    """Load the components installed packages declare in the entry-point group
    `cnnlab.components`, once per process: each entry point is a module (importing it
    registers) or a function (called). One that fails is one warning line naming its
    package, not a crash: a broken plug-in must not stop every cnnlab command."""
    if _ENTRY_POINTS:
        return
    _ENTRY_POINTS.append(True)
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        package = point.dist.name if point.dist is not None else point.module
        LOADING.append({"package": package, "entry_point": point.name})
        try:
            found = point.load()
            if callable(found) and not isinstance(found, type | types.ModuleType):
                found()
        except Exception as err:
            why = str(err).splitlines()[0] if str(err) else ""
            print(
                f"warning: components of package {package} not loaded (entry point "
                f"{point.name} = {point.value}: {type(err).__name__}: {why})",
                file=sys.stderr,
            )
        finally:
            LOADING.pop()
