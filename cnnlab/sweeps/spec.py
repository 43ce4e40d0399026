"""Sweep files in the W&B format (cnnlab/sweeps/sweep_file.py), turned into a checked spec:
what Optuna samples, how a sample becomes recipe overrides, how trials are judged and stopped.

Parameter names are dotted recipe paths. A sweep written for someone's own script (names
such as `conv_activation`, metric `val_acc`) runs unchanged through a name map beside it,
`<sweep>.map.yaml` (cnnlab/sweeps/name_map.py).

Everything is checked before the first trial: every value (or both ends of a range) of
every parameter is applied to the base recipe and validated, so a typo stops the sweep
with one line instead of failing trial after trial.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cnnlab.errors import CnnlabError
from cnnlab.recipe import (
    Recipe,
    describe_error,
    load_yaml,
    metric_goal,
    set_path,
    unreported,
    validate,
)
from cnnlab.sweeps.distributions import Constant
from cnnlab.sweeps.name_map import MapEntry, parse_map
from cnnlab.sweeps.parameters import Param, flatten_parameters, parse_param
from cnnlab.sweeps.sweep_file import SweepFile
from cnnlab.tasks import Goal

# ----------------------------------------------------------------------- spec


@dataclass
class SweepSpec:
    """A checked sweep: what Optuna samples and how each sample becomes recipe overrides."""

    method: str
    metric: str  # a recipe metric, e.g. val.cls.accuracy
    goal: Goal
    params: list[Param]
    constants: dict[str, Any]  # `value:` parameters, applied to every trial
    mapping: dict[str, MapEntry] = field(default_factory=dict)
    early_terminate: dict | None = None
    run_cap: int | None = None
    notes: list[str] = field(default_factory=list)  # what was ignored, said once at start
    metric_aliases: dict[str, str] = field(default_factory=dict)
    # W&B's metric.target: once a trial reaches it, no new trial starts (running ones finish)
    target: float | None = None

    def reached(self, value: float | None) -> bool:
        """Whether a trial's value meets metric.target."""
        if self.target is None or value is None:
            return False
        return self.goal.sign * value >= self.goal.sign * self.target

    @property
    def direction(self) -> str:
        return self.goal

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def overrides(self, values: dict[str, Any]) -> dict[str, Any]:
        """Parameter values (plus the constants) -> {dotted recipe path: value}."""
        out: dict[str, Any] = {}
        for name, value in self.constants.items():
            out.update(self.entry(name).overrides(name, value))
        for p in self.params:
            if p.name in values:
                out.update(self.entry(p.name).overrides(p.name, values[p.name]))
        return out

    def entry(self, name: str) -> MapEntry:
        return self.mapping.get(name, MapEntry(name))

    def grid(self) -> dict[str, list]:
        return {p.name: p.grid_values() for p in self.params}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def resolve_metric(self, name: str) -> str:
        """A metric as the user names it (sweep-file alias or recipe name) -> recipe name."""
        return self.metric_aliases.get(name, name)


def apply_to(raw: dict, overrides: dict[str, Any]) -> dict:
    out = copy.deepcopy(raw)
    for path, value in overrides.items():
        set_path(out, path.split("."), copy.deepcopy(value), f"sweep parameter {path!r}")
    return out


def load_sweep(path: str | Path, base: dict, map_path: str | Path | None = None) -> SweepSpec:
    """Read a sweep file (and its name map, given or found beside it), check it against
    the raw base recipe `base`, and return the spec. Raises CnnlabError on any problem."""
    path = Path(path)
    raw = _read(path, "sweep file")
    if map_path is None:
        beside = path.with_name(path.name.removesuffix(".yaml").removesuffix(".yml") + ".map.yaml")
        map_path = beside if beside.is_file() else None
    mapping, metric_map = (
        parse_map(_read(Path(map_path), "name map"), str(map_path)) if map_path else ({}, {})
    )
    recipe = validate(base, source="base recipe")
    spec = parse_sweep(raw, str(path), mapping, metric_map, recipe.train.monitor)
    check_against_recipe(spec, base, recipe, str(path), map_path)
    return spec


def _read(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CnnlabError(f"{what} {path} not found; `cnnlab recipes` lists the shipped ones")
    return load_yaml(path, what)


def parse_sweep(
    raw: Any,
    source: str,
    mapping: dict[str, MapEntry],
    metric_map: dict[str, str],
    monitor: str = "val.loss",
) -> SweepSpec:
    """The sweep file's mapping -> SweepSpec; `monitor` (the base recipe's train.monitor) is
    the metric when the file names none."""
    if not isinstance(raw, dict):
        raise CnnlabError(
            f"sweep file {source}: expected a mapping with method, metric, parameters"
        )
    try:
        file = SweepFile.model_validate(raw)
    except ValidationError as err:
        detail = describe_error(err.errors()[0], SweepFile, "the file")
        raise CnnlabError(f"sweep file {source}: {detail}") from None
    notes = [f"ignoring {k!r} (only W&B's agent reads it)" for k in file.agent_keys()]
    metric, goal, target = _metric(file, monitor, source, metric_map, notes)
    params, constants = [], {}
    parameters = flatten_parameters(file.parameters, source)
    for name, block in parameters.items():
        parsed = parse_param(str(name), block)
        if isinstance(parsed.form, Constant):
            constants[parsed.name] = parsed.form.value_
        else:
            params.append(parsed)
    extra = set(mapping) - set(parameters)
    if extra:
        raise CnnlabError(
            f"name map for {source} maps {sorted(extra)[0]!r}, which the sweep file does not "
            "sweep; remove it or fix its spelling"
        )
    early = file.early_terminate
    if early is not None and early.strict:
        notes.append("ignoring early_terminate.strict (W&B's own stopping rule ignores it too)")
    spec = SweepSpec(
        file.method, metric, goal, params, constants, mapping,
        early.bands() if early else None, file.run_cap, notes, metric_map, target,
    )  # fmt: skip
    if file.method == "grid":
        spec.grid()  # a continuous range has no grid: say so now
    return spec


def _metric(
    file: SweepFile, monitor: str, source: str, metric_map: dict[str, str], notes: list[str]
) -> tuple[str, Goal, float | None]:
    """(recipe metric, goal, target). No `metric`: W&B accepts that for grid and random (they
    optimize nothing), and every trial still needs a value to rank by: the base recipe's
    train.monitor, which also picks each run's best checkpoint. Bayes models the metric, so
    it must be named. No goal: the metric's own (accuracy: maximize), said when W&B's
    default (minimize) would differ."""
    if file.metric is None:
        goal = metric_goal(monitor)
        if file.method == "bayes":
            raise CnnlabError(
                f"sweep file {source}: method bayes models the metric, so it needs one: add "
                f"metric: {{name: {monitor}, goal: {goal}}} (or use method random)"
            )
        verb = "maximizing" if goal is Goal.MAXIMIZE else "minimizing"
        notes.append(f"no metric in the sweep file: {verb} the recipe's train.monitor, {monitor}")
        return monitor, goal, None
    name = metric_map.get(file.metric.name, file.metric.name)
    goal = file.metric.goal
    if goal is None:
        goal = metric_goal(name)
        if goal is Goal.MAXIMIZE:
            notes.append(f"metric.goal not given: maximizing {name} (W&B would minimize it)")
    return name, goal, file.metric.target


def check_against_recipe(
    spec: SweepSpec, base: dict, recipe: Recipe, source: str, map_path: Any
) -> None:
    """Apply every value of every parameter to the base recipe (`recipe` is it validated);
    every parameter's first misfit is said in one line, so one run names them all."""
    problem = unreported(recipe, spec.metric)
    if problem:
        hint = "" if map_path else " (or map it in a name map beside the sweep file)"
        raise CnnlabError(f"sweep file {source}: metric {spec.metric!r} {problem}{hint}")
    cases = list(spec.constants.items())
    cases += [(p.name, value) for p in spec.params for value in p.samples()]
    misfits: dict[str, str] = {}  # parameter -> its first misfit: every one said at once
    for name, value in cases:
        if name in misfits:
            continue
        overrides = spec.entry(name).overrides(name, value)
        try:
            validate(apply_to(base, overrides), source="recipe")
        except CnnlabError as err:
            detail = str(err).removeprefix("recipe: ")
            if "unknown key" in detail and name not in spec.mapping:
                misfits[name] = (
                    f"sweep parameter {name!r} names no recipe field ({detail}); "
                    + _unknown_name_fix(name, recipe.model_dump(mode="json"), source)
                )
            else:
                misfits[name] = f"sweep parameter {name!r} = {value!r}: {detail}"
    if misfits:
        raise CnnlabError("; ".join(misfits.values()))


def _unknown_name_fix(name: str, tree: dict, source: str) -> str:
    """What to do about a parameter name that is no recipe path: the close path when there
    is one (a typo), else the two ways a name reaches the recipe. The name map's example
    shows this name and no made-up target: a wrong example reads as advice."""
    map_file = Path(source).name.removesuffix(".yaml").removesuffix(".yml") + ".map.yaml"
    close = close_path(name, tree)
    if close is not None:
        return f"did you mean {close}? (or map it in the name map {map_file} beside the sweep file)"
    return (
        f"write a dotted recipe path, or map it in the name map {map_file} beside the sweep "
        f"file: `parameters: {{{name}: <recipe path>}}`"
    )


# What other libraries and papers call a recipe key: too far apart in spelling for a
# did-you-mean, the same thing in meaning
ALIASES = {
    "learning_rate": "lr",
    "wd": "weight_decay",
    "bs": "batch_size",
    "optimiser": "optimizer",
}
ALIASES |= {"num_epochs": "epochs", "max_epochs": "epochs", "lr_scheduler": "scheduler"}


def close_path(name: str, tree: dict) -> str | None:
    """The dotted path of `tree` (a recipe as a nested dict) closest to `name`, part by part
    (`train.optimiser.lr` -> `train.optimizer.lr`), or None when some part has no close key
    or the path would be `name` itself. Matching each part among the keys at its own level
    keeps a suggestion a real path, where matching whole paths could cross sections."""
    node: Any = tree
    parts = []
    for part in name.split("."):
        if not isinstance(node, dict) or not node:
            return None
        children = {str(k): v for k, v in node.items()}
        close = [part] if part in children else difflib.get_close_matches(part, children, 1)
        if not close and ALIASES.get(part) in children:  # another library's name for it
            close = [ALIASES[part]]
        if not close:
            return None
        parts.append(close[0])
        node = children[close[0]]
    path = ".".join(parts)
    return None if path == name else path
