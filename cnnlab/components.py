"""Components a user adds without editing cnnlab: backbones, data sources, task types, figures.

Why: cnnlab's registries (BACKBONES, SOURCES, TASKS, FIGURES) list what ships with it; a
user's own network, data or figure lives in the user's own file. As with timm's
`@register_model`, one decorator adds it, and a recipe then names it like a built-in one:

    # my_components.py
    import cnnlab
    from torch import nn

    @cnnlab.register_backbone("twoconv")
    class TwoConv(nn.Module):  # any module: (B, C, H, W) images -> (B, C', H', W') maps
        def __init__(self, in_channels: int = 1, width: int = 16): ...

    $ cnnlab --import my_components train my.yaml    # model: {backbone: twoconv, width: 32}

Where registrations come from, explicitly, never from a recipe (a recipe names components,
not code to run):
- `--import MODULE` on the command line (a dotted name importable from the current folder,
  or a path to a .py file): `cnnlab.plugins.import_modules`. The modules are passed on in
  $CNNLAB_IMPORT to the processes a command starts (sweep workers, torchrun ranks), which
  import them too.
- installed packages, through the entry-point group `cnnlab.components` (the `pytest11`
  pattern): `cnnlab.plugins.load_entry_points`, once per process, before the command line is read.
- a user's own script that imports cnnlab and calls these functions.

After a backbone, source or task type registers, the recipe's schema is rebuilt from the
registries (cnnlab/recipe.py `rebuild_schema`): its section gets the same one-line errors as
a built-in's (unknown key, wrong value, unknown tag). Only the standard library, pydantic
and two small cnnlab modules are imported here, because the CLI reads the entry points on
every command (`cnnlab recipes` should not wait for torch); the registries are imported
when a component registers.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from pydantic import create_model

from cnnlab.config import Section
from cnnlab.errors import CnnlabError
from cnnlab.plugins import IMPORTED, LOADING
from cnnlab.registrations import REGISTERED, Kind, Registration

if TYPE_CHECKING:
    from cnnlab.data.base import DataInfo, Dataset, Source

T = TypeVar("T")

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")  # a name a recipe and a command line can hold
# The recipe key each kind's tag sits in, and the decorator that registers one.
TAG_KEYS: dict[str, str] = {"backbone": "backbone", "source": "source", "task": "type"}


# ------------------------------------------------------------------------ registering


def register_backbone(
    name: str, *, config: type[Section] | None = None, doc: str = "", replace: bool = False
) -> Callable[[T], T]:
    """Decorator: make a module class the backbone `model.backbone: <name>` picks.

    Two kinds of class:
    - any plain `torch.nn.Module` whose forward maps images (B, C, H, W) to a feature map
      (B, C', H', W'), or to a list of maps (one per stage; a `feature_info` attribute as
      timm's is checked against them). Its `model` section is made from the constructor's
      keyword parameters with defaults (or is `config`, whose fields it must take); a
      parameter `in_channels` gets the data's channels, `image_size` its (H, W). cnnlab
      wraps it (cnnlab/models/adapter.py): stages measured by one forward at build time,
      pooled by a global average; its weights keep their names under `backbone.net.`.
    - a `cnnlab.models.base.Backbone` subclass built as `cls(cfg, in_channels, image_size)`,
      with its own `config`: a Section with `backbone: Literal[name] = name`.

    `doc` is the line `cnnlab backbones` shows (default: the class's docstring's first
    line). A name taken by another class is an error unless `replace=True`; the same class
    registered again (a notebook cell run twice) takes its earlier place.
    """

    def register(cls: T) -> T:
        from torch import nn

        from cnnlab.models import BackboneEntry
        from cnnlab.models.adapter import ModuleBuilder, check_config_fits, module_config
        from cnnlab.models.base import Backbone

        _check_name("backbone", name)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise CnnlabError(f"backbone {name!r}: register a torch.nn.Module class, not {cls!r}")
        if issubclass(cls, Backbone):
            if config is None:
                raise CnnlabError(
                    f"backbone {name!r}: {cls.__name__} is a Backbone, built as "
                    "cls(cfg, in_channels, image_size); give its section with "
                    "register_backbone(name, config=...)"
                )
            build: Callable[..., Backbone] = cls
        else:
            build = ModuleBuilder(cls)
        section = config or module_config(name, cls)
        _check_section("backbone", name, section, Section)
        if config is not None and not issubclass(cls, Backbone):
            check_config_fits(cls, config)
        entry = BackboneEntry(build, section, doc or _first_line(cls, name))
        _add("backbone", name, entry, replace, cls)
        return cls

    return register


def register_source(
    name: str,
    *,
    describe: Callable[[Any], DataInfo],
    load: Callable[[Any], Dataset],
    config: type[Section] | None = None,
    locate: Callable[..., dict[str, Path]] | None = None,
    doc: str = "",
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    label_maps: dict[str, Any] | None = None,
    replace: bool = False,
    **more: Any,
) -> Source:
    """Make `data.source: <name>` read a data source of your own; returns its `Source`.

    A call, not a decorator: a source is three functions and a section, as each of
    cnnlab's own (cnnlab/data/base.py). `describe(cfg) -> DataInfo` says what it provides
    from headers only (recipes are checked before a pixel is read); `load(cfg) -> Dataset`
    gives the uint8 tensors. `config` is its `data` section, a `cnnlab.data.base.DataSection`
    subclass with `source: Literal[name] = name`; without one, the section has the fields
    every source has (root, val_fraction, subsets, augment, ...) and `label_maps` says how
    each geometric augmentation changes the targets (e.g. {"hflip": None, "translate":
    None}: unchanged; one left out is refused when a recipe turns it on, hflip and translate
    are on by default). `locate(root, allow_download)` serves `cnnlab fetch`; `stats` =
    per-channel (mean, std) in [0, 1] if published (else computed from the training split);
    `more`: any further `Source` field.
    """
    from cnnlab.data.base import DataSection, Source

    _check_name("source", name)
    if config is None:
        config = create_model(
            f"{_camel(name)}Config",
            __base__=DataSection,
            __module__=getattr(load, "__module__", __name__),
            __doc__=f"The `data` section of a recipe with `source: {name}`.",
            source=(Literal[name], name),
        )
        config.label_maps = dict(label_maps or {})
    elif label_maps is not None:
        raise CnnlabError(f"source {name!r}: set label_maps on {config.__name__}, not here")
    _check_section("source", name, config, DataSection)
    for role, fn in (("describe", describe), ("load", load), ("locate", locate)):
        if fn is not None and not callable(fn):
            raise CnnlabError(f"source {name!r}: {role} must be a function, not {fn!r}")
    try:
        source = Source(
            config=config,
            describe=describe,
            load=load,
            locate=locate or _no_files(name),
            doc=doc or _first_line(load, name),
            stats=stats,
            **more,
        )
    except TypeError as err:
        raise CnnlabError(f"source {name!r}: {err}") from None
    _add("source", name, source, replace, load)
    return source


def register_task(name: str, *, replace: bool = False) -> Callable[[T], T]:
    """Decorator: make a `cnnlab.tasks.base.Task` subclass the task type that
    `tasks.<x>.type: <name>` picks. Its `config` is a `TaskSection` subclass with
    `type: Literal[name] = name`; it owns its head, loss and metrics as cnnlab's own task
    types do (cnnlab/tasks/)."""

    def register(cls: T) -> T:
        from cnnlab.tasks.base import Task, TaskSection

        _check_name("task", name)
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise CnnlabError(f"task {name!r}: register a cnnlab Task subclass, not {cls!r}")
        _check_section("task", name, getattr(cls, "config", None), TaskSection)
        metrics = getattr(cls, "metrics", None)
        if not (isinstance(metrics, tuple) and metrics and metrics[0] == "loss"):
            raise CnnlabError(
                f"task {name!r}: {cls.__name__}.metrics must be a tuple of metric names, "
                f'"loss" first (e.g. ("loss", "accuracy")); it is {metrics!r}'
            )
        _check_probabilities(name, cls, Task)
        _add("task", name, cls, replace, cls)
        return cls

    return register


def _check_probabilities(name: str, cls: type, base: type) -> None:
    """A task type that calibrates or draws a reliability diagram says how its logits become
    probabilities: `probabilistic`, and its own `probabilities`, `nll` and `outcomes`."""
    if "reliability" in cls.figures and not cls.probabilistic:
        raise CnnlabError(
            f"task {name!r}: {cls.__name__}.figures has reliability, which needs probabilities; "
            "set probabilistic = True (with probabilities, nll and outcomes) or leave it out"
        )
    missing = [
        m for m in ("probabilities", "nll", "outcomes") if getattr(cls, m) is getattr(base, m)
    ]
    if cls.probabilistic and missing:
        raise CnnlabError(
            f"task {name!r}: {cls.__name__} is probabilistic but has no {', '.join(missing)}; "
            "write them (examples/custom_task.py's Tags has all three) or drop probabilistic"
        )


def register_figure(name: str, doc: str = "", *, replace: bool = False) -> Callable[[T], T]:
    """Decorator: make a function `(view: RunView, **options) -> list[Chart]` the figure
    `cnnlab viz RUN <name>` draws; `cnnlab figures` lists it, and every run's report.html
    shows it in a section of its own after the built-in ones. Its keyword options are the
    ones `make_charts` accepts."""

    def register(fn: T) -> T:
        from cnnlab.viz import FigureSpec

        _check_name("figure", name)
        if not callable(fn):
            raise CnnlabError(f"figure {name!r}: register a function, not {fn!r}")
        _add("figure", name, FigureSpec(fn, doc or _first_line(fn, name)), replace, fn)
        return fn

    return register


# ------------------------------------------------------------------------ undoing


def unregister(kind: Kind, name: str) -> None:
    """Undo the latest registration of `name`: the entry it replaced comes back, or the name
    is gone. Built-in components cannot be removed (recipes and defaults rely on them)."""
    for i in range(len(REGISTERED) - 1, -1, -1):
        if (REGISTERED[i].kind, REGISTERED[i].name) == (kind, name):
            _undo(REGISTERED.pop(i))
            _schema_changed(kind)
            return
    where = "built into cnnlab" if name in _registry(kind) else "not registered"
    raise CnnlabError(f"{kind} {name!r} is {where}; only registered components can be removed")


@contextlib.contextmanager
def registration_scope() -> Iterator[None]:
    """Every registration and --import made inside the block is undone when it ends: the
    imported modules are forgotten (imported again, they register again) and no longer
    passed on to child processes. The tests use it, so each sees the built-in schema."""
    before, imported = list(REGISTERED), dict(IMPORTED)  # `before` keeps its ids taken
    try:
        yield
    finally:
        kept = {id(r) for r in before}
        added = [r for r in REGISTERED if id(r) not in kept]
        for record in reversed(added):  # the latest first: each puts back what it replaced
            REGISTERED.remove(record)
            _undo(record)
        for spec in set(IMPORTED) - set(imported):
            sys.modules.pop(IMPORTED.pop(spec), None)
        for kind in {r.kind for r in added}:
            _schema_changed(kind)


def registered() -> list[Registration]:
    """This process's user registrations, in order (built-in components are not listed)."""
    return list(REGISTERED)


# ------------------------------------------------------------------------ internals


def _registry(kind: Kind) -> dict[str, Any]:
    if kind == "backbone":
        from cnnlab.models import BACKBONES

        return BACKBONES
    if kind == "source":
        from cnnlab.data import SOURCES

        return SOURCES
    if kind == "task":
        from cnnlab.tasks import TASKS

        return TASKS
    from cnnlab.viz import FIGURES

    return FIGURES


def _add(kind: Kind, name: str, entry: Any, replace: bool, obj: Any) -> None:
    """Put `entry` into the registry and rebuild the schema; a failed rebuild undoes it. The
    same definition registered again (a notebook cell run twice, a module reloaded) takes
    its earlier registration's place; anything else must say replace=True."""
    registry = _registry(kind)
    defines = _defines(obj)
    again = next((r for r in reversed(REGISTERED) if (r.kind, r.name) == (kind, name)), None)
    again = again if again is not None and defines and again.defines == defines else None
    if name in registry and not (replace or again):
        raise CnnlabError(
            f"{kind} {name!r} is already registered ({_where(kind, name)}); choose another "
            "name, or pass replace=True to replace it"
        )
    earlier = registry.get(name)
    previous = again.previous if again else earlier
    record = Registration(kind, name, previous, _origin(obj), defines)
    registry[name] = entry
    if again:
        REGISTERED.remove(again)
    REGISTERED.append(record)
    try:
        _schema_changed(kind)
    except BaseException:
        REGISTERED.pop()
        if again:  # the earlier run's registration stands
            REGISTERED.append(again)
            registry[name] = earlier
        else:
            _undo(record)
        _schema_changed(kind)
        raise


def _defines(obj: Any) -> str | None:
    """The registered class or function as "module.qualname": the same after a cell re-runs."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else None


def _undo(record: Registration) -> None:
    registry = _registry(record.kind)
    if record.previous is None:
        registry.pop(record.name, None)
    else:
        registry[record.name] = record.previous


def _schema_changed(kind: Kind) -> None:
    if kind != "figure":  # figures are not part of a recipe
        from cnnlab.recipe import rebuild_schema

        rebuild_schema()


def _where(kind: Kind, name: str) -> str:
    for record in reversed(REGISTERED):
        if (record.kind, record.name) == (kind, name):
            return "by " + next(iter(record.origin.values()))
    return "built into cnnlab"


def _origin(obj: Any) -> dict[str, str]:
    """Where a registration comes from: the --import or entry point being loaded, else the
    module that defines the component."""
    if LOADING:
        return dict(LOADING[-1])
    # A script's own registrations ("__main__") name no module to import: importing the
    # script would run it again.
    return {"module": getattr(obj, "__module__", None) or "__main__"}


def _check_name(kind: Kind, name: str) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise CnnlabError(
            f"{kind} name {name!r}: use a letter, then letters, digits, _ or - (a recipe names it)"
        )


def _check_section(kind: Kind, name: str, section: Any, base: type[Section]) -> None:
    """A component's section must be a `base` subclass whose tag literal is its name: the
    recipe's tag key picks the section by that value."""
    key = TAG_KEYS[kind]
    want = f"`{key}: Literal[{name!r}] = {name!r}`"
    if not (isinstance(section, type) and issubclass(section, base)):
        raise CnnlabError(
            f"{kind} {name!r}: its config must be a {base.__module__}.{base.__name__} subclass "
            f"with {want}, not {section!r}"
        )
    field = section.model_fields.get(key)
    if field is None or field.default != name or get_args(field.annotation) != (name,):
        has = f"{key} = {field.default!r}" if field is not None else f"no `{key}` field"
        raise CnnlabError(
            f"{kind} {name!r}: its config {section.__name__} must say {want} (the recipe's "
            f"`{key}` picks it by that tag); it has {has}"
        )


def _first_line(obj: Any, name: str) -> str:
    """The first line of the component's own docstring: a class without one would show its
    base's (nn.Module's "Base class for all neural network modules.")."""
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")  # getdoc takes the base's
    return doc.strip().splitlines()[0] if doc.strip() else f"{name} (registered)"


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_\-]", name))


def _no_files(name: str) -> Callable[..., dict[str, Path]]:
    def locate(root: str | None = None, allow_download: bool = False) -> dict[str, Path]:
        raise CnnlabError(f"data source {name!r} registered no `locate`: it has no files to fetch")

    return locate
