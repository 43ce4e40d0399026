"""Sweep files in the W&B format, turned into a typed spec and checked against a recipe.

A sweep file is what people already write for `wandb sweep`:

    method: bayes                      # grid | random | bayes
    metric: {name: val_acc, goal: maximize}   # grid / random may leave it out: train.monitor
    parameters:
      model.activation: {values: [relu, gelu]}
      train.optimizer.lr: {min: 0.0001, max: 0.01, distribution: log_uniform_values}
    early_terminate: {type: hyperband, min_iter: 1, eta: 3}

Parameter names are dotted recipe paths. A sweep written for someone's own script (names
such as `conv_activation`, metric `val_acc`) runs unchanged through a name map beside it,
`<sweep>.map.yaml`:

    parameters:
      base_filter: model.base_filters                       # name -> recipe path
      conv_activation: {path: model.activation, values: {ReLU: relu, Mish: mish}}
      data_aug:                                             # one value -> several fields
        values: {true: {data.augment.hflip: true}, false: {data.augment.hflip: false}}
    metrics:
      val_acc: val.cls.accuracy

Everything is checked before the first trial: every value (or both ends of a range) of
every parameter is applied to the base recipe and validated, so a typo stops the sweep
with one line instead of failing trial after trial.
"""

from __future__ import annotations

import copy
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
    metric_names,
    set_path,
    validate,
)
from cnnlab.sweeps.distributions import FORMS, Constant, Form, form_name
from cnnlab.tasks import Goal

METHODS = ("grid", "random", "bayes")
# Keys that only W&B's agent or UI reads: accepted, ignored, and said so.
AGENT_KEYS = ("program", "command", "project", "entity", "name", "description")
SWEEP_KEYS = ("method", "metric", "parameters", "early_terminate", "run_cap", *AGENT_KEYS)


# ------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    """One swept parameter, named as in the sweep file (a nested block's names joined by
    dots); that is Optuna's name for its variable too. Its form does the arithmetic."""

    name: str
    form: Form

    def suggest(self, trial) -> Any:
        return self.form.suggest(trial, self.name)

    def decode(self, stored: Any) -> Any:
        """The value of a variable Optuna stored (a quantile, a rounded value's source)."""
        return self.form.value(stored)

    def samples(self) -> list[Any]:
        return self.form.checked()

    def grid_values(self) -> list[Any]:
        return self.form.grid(self.name)

    def describe(self) -> dict:
        return {"name": self.name, **self.form.model_dump(mode="json", by_alias=True)}


def parse_param(name: str, block: Any) -> Param:
    """A W&B parameter block -> Param (a `value:` block is a Constant form)."""
    if not isinstance(block, dict):
        raise CnnlabError(
            f"sweep parameter {name!r}: expected a mapping such as {{values: [...]}} "
            f"or {{min: 0, max: 1}}, got {block!r}"
        )
    try:
        kind = form_name(block)
    except CnnlabError as err:
        raise CnnlabError(f"sweep parameter {name!r}: {err}") from None
    if kind not in FORMS:
        raise CnnlabError(
            f"sweep parameter {name!r}: unknown distribution {kind!r}; use one of: "
            f"{', '.join(FORMS)}"
        )
    form = FORMS[kind]
    try:
        return Param(name, form.model_validate({**block, "distribution": kind}))
    except ValidationError as err:
        detail = describe_error(err.errors()[0], form, "the block")
        raise CnnlabError(f"sweep parameter {name!r} ({kind}): {detail}") from None


def flatten_parameters(parameters: dict, source: str, prefix: str = "") -> dict[str, Any]:
    """W&B's nested `parameters` blocks as dotted names: {optimizer: {parameters: {lr: ...}}}
    sweeps `optimizer.lr`, the same recipe field a dotted name reaches."""
    flat: dict[str, Any] = {}
    for key, block in parameters.items():
        name = f"{prefix}{key}"
        if isinstance(block, dict) and "parameters" in block:
            inner = block["parameters"]
            if set(block) != {"parameters"} or not isinstance(inner, dict) or not inner:
                raise CnnlabError(
                    f"sweep file {source}: {name} holds nested `parameters` (a mapping of "
                    "names to blocks) and nothing else"
                )
            flat.update(flatten_parameters(inner, source, f"{name}."))
        else:
            flat[name] = block
    return flat


# ------------------------------------------------------------------- name map


@dataclass(frozen=True)
class MapEntry:
    """How one sweep-file name reaches the recipe: a path, and maybe a value table."""

    path: str | None
    values: dict | None = None  # written value -> recipe value, or -> {path: value, ...}

    def overrides(self, name: str, value: Any) -> dict[str, Any]:
        if self.values is not None:
            if value in self.values:
                mapped = self.values[value]
            elif str(value) in self.values:
                mapped = self.values[str(value)]
            else:
                raise CnnlabError(
                    f"sweep parameter {name!r}: value {value!r} has no entry in the name map's "
                    f"values ({', '.join(map(repr, self.values))})"
                )
            if self.path is None:
                return dict(mapped)
            return {self.path: mapped}
        return {self.path or name: value}


def parse_map(raw: Any, source: str) -> tuple[dict[str, MapEntry], dict[str, str]]:
    """A name map file -> (parameter entries, metric names)."""
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict) or set(raw) - {"parameters", "metrics"}:
        raise CnnlabError(f"name map {source}: expected the keys `parameters` and `metrics` only")
    entries: dict[str, MapEntry] = {}
    for name, spec in (raw.get("parameters") or {}).items():
        if isinstance(spec, str):
            entries[name] = MapEntry(spec)
        elif isinstance(spec, dict) and set(spec) <= {"path", "values"} and spec:
            values = spec.get("values")
            if values is not None and not isinstance(values, dict):
                raise CnnlabError(f"name map {source}: {name}.values must map value -> value")
            if spec.get("path") is None and not all(
                isinstance(v, dict) for v in (values or {0: 0}).values()
            ):
                raise CnnlabError(
                    f"name map {source}: {name} has no `path`, so each of its values must be a "
                    "mapping of recipe paths, e.g. {true: {data.augment.hflip: true}}"
                )
            entries[name] = MapEntry(spec.get("path"), values)
        else:
            raise CnnlabError(
                f"name map {source}: {name} must be a recipe path or {{path: ..., values: ...}}"
            )
    metrics = raw.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise CnnlabError(f"name map {source}: `metrics` must map names to recipe metrics")
    return entries, {str(k): str(v) for k, v in metrics.items()}


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
    unknown = [k for k in raw if k not in SWEEP_KEYS]
    if unknown:
        raise CnnlabError(
            f"sweep file {source}: unsupported key {unknown[0]!r}; "
            f"supported: {', '.join(SWEEP_KEYS)}"
        )
    notes = [f"ignoring {k!r} (only W&B's agent reads it)" for k in AGENT_KEYS if k in raw]
    method = raw.get("method")
    if method not in METHODS:
        raise CnnlabError(
            f"sweep file {source}: method {method!r}; use one of: {', '.join(METHODS)}"
        )
    target = None
    if "metric" in raw:
        metric, goal, metric_notes, target = _parse_metric(raw["metric"], source, metric_map)
    else:
        metric, goal, metric_notes = _default_metric(method, monitor, source)
    notes += metric_notes
    params, constants = [], {}
    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise CnnlabError(f"sweep file {source}: `parameters` must map names to value blocks")
    parameters = flatten_parameters(parameters, source)
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
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise CnnlabError(f"sweep file {source}: run_cap must be a positive integer")
    early = _parse_early_terminate(raw.get("early_terminate"), source, notes)
    spec = SweepSpec(
        method, metric, goal, params, constants, mapping, early, run_cap, notes, metric_map, target
    )
    if method == "grid":
        spec.grid()  # a continuous range has no grid: say so now
    return spec


def _parse_metric(
    raw: Any, source: str, metric_map: dict[str, str]
) -> tuple[str, str, list, float | None]:
    if not isinstance(raw, dict) or "name" not in raw:
        raise CnnlabError(
            f"sweep file {source}: metric must be {{name: ..., goal: maximize}} (or leave it "
            "out for grid and random: the recipe's train.monitor)"
        )
    unknown = set(raw) - {"name", "goal", "target"}
    if unknown:
        raise CnnlabError(f"sweep file {source}: metric key {sorted(unknown)[0]!r}; use name, goal")
    notes = []
    name = metric_map.get(str(raw["name"]), str(raw["name"]))
    goal = raw.get("goal")
    if goal is None:
        goal = metric_goal(name)
        if goal is Goal.MAXIMIZE:  # W&B's own default is minimize, whatever the metric
            notes.append(f"metric.goal not given: maximizing {name} (W&B would minimize it)")
    if goal not in tuple(Goal):
        raise CnnlabError(f"sweep file {source}: metric.goal {goal!r}; use maximize or minimize")
    goal = Goal(goal)
    target = raw.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))):
        raise CnnlabError(f"sweep file {source}: metric.target {target!r}; give a number")
    return name, goal, notes, None if target is None else float(target)


def _default_metric(method: str, monitor: str, source: str) -> tuple[str, str, list]:
    """No `metric`: W&B accepts that for grid and random (they optimize nothing), and every
    trial still needs a value to rank by: the base recipe's train.monitor, which also picks
    each run's best checkpoint. Bayes models the metric, so it must be named."""
    if method == "bayes":
        raise CnnlabError(
            f"sweep file {source}: method bayes models the metric, so it needs one: add "
            f"metric: {{name: {monitor}, goal: {metric_goal(monitor)}}} (or use method random)"
        )
    goal = metric_goal(monitor)
    verb = "maximizing" if goal is Goal.MAXIMIZE else "minimizing"
    note = f"no metric in the sweep file: {verb} the recipe's train.monitor, {monitor}"
    return monitor, goal, [note]


def _parse_early_terminate(raw: Any, source: str, notes: list[str]) -> dict | None:
    """W&B's hyperband block -> the epochs at which weak trials stop (its "bands").

    W&B's agent does not run Hyperband's several brackets: it checks every run at epochs
    min_iter * eta^k and stops those outside the best 1/eta of the runs that got there.
    That is asynchronous successive halving in one bracket, which is what cnnlab runs.
    With max_iter and s instead of min_iter, the bands are max_iter / eta^s .. max_iter / eta."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("type") != "hyperband":
        raise CnnlabError(f"sweep file {source}: early_terminate supports type: hyperband only")
    unknown = set(raw) - {"type", "min_iter", "max_iter", "eta", "s", "strict"}
    if unknown:
        raise CnnlabError(
            f"sweep file {source}: early_terminate key {sorted(unknown)[0]!r}; "
            "use min_iter, max_iter, eta, s"
        )
    eta = _whole(raw, "eta", 3, 2, source, "keeps the best 1/eta of the trials at each band")
    min_iter = _whole(raw, "min_iter", None, 1, source, "is the first band's epoch")
    last_band = None
    if min_iter is None and "max_iter" in raw:
        max_iter = _whole(raw, "max_iter", None, 1, source, "is the epoch bands count back from")
        s = _whole(raw, "s", 0, 0, source, "is how many bands")
        if s < 1 or max_iter < eta:
            raise CnnlabError(
                f"sweep file {source}: early_terminate with max_iter stops runs at epochs "
                "max_iter/eta^s .. max_iter/eta: give s >= 1 and max_iter >= eta, or use min_iter"
            )
        min_iter = max(1, int(max_iter / eta**s))
        last_band = int(max_iter / eta)
    if "strict" in raw:
        notes.append("ignoring early_terminate.strict (W&B's own stopping rule ignores it too)")
    return {"min_resource": min_iter or 1, "reduction_factor": eta, "last_band": last_band}


def _whole(
    raw: dict, key: str, default: int | None, least: int, source: str, why: str
) -> int | None:
    """early_terminate.<key> as a whole number >= least, checked here: Optuna's pruner would
    stop the sweep with a traceback (eta 1), or int() with one (eta: three)."""
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise CnnlabError(
            f"sweep file {source}: early_terminate.{key} = {value!r}; give a whole number "
            f">= {least} ({key} {why})"
        )
    return value


def check_against_recipe(
    spec: SweepSpec, base: dict, recipe: Recipe, source: str, map_path: Any
) -> None:
    """Apply every value of every parameter to the base recipe (`recipe` is it validated);
    stop at the first misfit."""
    valid = metric_names(recipe, "val")
    if spec.metric not in valid:
        hint = "" if map_path else " (or map it in a name map beside the sweep file)"
        raise CnnlabError(
            f"sweep file {source}: metric {spec.metric!r} is not reported; "
            f"choose one of: {', '.join(valid)}{hint}"
        )
    cases = list(spec.constants.items())
    cases += [(p.name, value) for p in spec.params for value in p.samples()]
    for name, value in cases:
        overrides = spec.entry(name).overrides(name, value)
        try:
            validate(apply_to(base, overrides), source="recipe")
        except CnnlabError as err:
            detail = str(err).removeprefix("recipe: ")
            if "unknown key" in detail and name not in spec.mapping:
                raise CnnlabError(
                    f"sweep parameter {name!r} names no recipe field ({detail}); write a dotted "
                    f"recipe path, or map it in a name map beside the sweep file, e.g. "
                    f"`parameters: {{{name}: model.activation}}`"
                ) from None
            raise CnnlabError(f"sweep parameter {name!r} = {value!r}: {detail}") from None
