"""Task types by name: what each head is trained on, its loss and its metrics.

A new task type is one file (its config section and its `Task` subclass) and one entry in
TASKS, or, outside cnnlab, `@cnnlab.register_task` on the class (cnnlab/components.py); the
recipe's `tasks.<name>.type` picks it, and nothing else in cnnlab changes.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from cnnlab.tasks.base import TargetInfo, TargetSpec, Task, TaskSection
from cnnlab.tasks.classification import Classification
from cnnlab.tasks.goal import Goal
from cnnlab.tasks.meter import EpochMeter, evaluate, total_loss
from cnnlab.tasks.pixel import PixelClassification
from cnnlab.tasks.regression import Regression

TASKS: dict[str, type[Task]] = {
    "classification": Classification,
    "regression": Regression,
    "pixel_classification": PixelClassification,
}


def task_config() -> Any:
    """The recipe's `tasks.<name>` section as TASKS holds it now: one config per type, told
    apart by `type` (cnnlab/recipe.py rebuilds the recipe with it after a registration)."""
    members = tuple(t.config for t in TASKS.values())
    return Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007 (run time)


TaskConfig = task_config()  # the built-in task types' section


def task_class(cfg: TaskSection) -> type[Task]:
    return TASKS[cfg.type]


def create_tasks(cfgs: dict[str, Any]) -> dict[str, Task]:
    """The recipe's tasks as objects, in recipe order."""
    return {name: task_class(cfg)(name, cfg) for name, cfg in cfgs.items()}


def metric_parts(name: str) -> tuple[str, str, str]:
    """`val.cls.recall_of_Ankle boot` -> ("val", "cls", "recall_of_Ankle boot"): split, task,
    metric (a class's name may hold dots); `val.loss` -> ("val", "loss", ""): empty where the
    name stops early."""
    split, _, rest = name.partition(".")
    key, _, metric = rest.partition(".")
    return split, key, metric


def metric_goal(name: str) -> Goal:
    """Whether a metric such as `val.cls.accuracy` improves upwards or downwards; one of a
    class or component (`val.tags.f1_cat`, `Task.epoch_values`) as its metric (`f1`): the
    longest metric name the name starts with decides (`recall_of_x` is `recall_of`'s)."""
    ups = set().union(*(t.maximize for t in TASKS.values()))
    downs = set().union(*(set(t.metrics) | t.per_class for t in TASKS.values())) - ups
    split, key, metric = metric_parts(name)
    metric = metric or key or split  # `val.loss`: the loss; a bare `accuracy` as it is
    ends = [i for i, c in enumerate(metric) if c == "_"][::-1]
    for cut in [metric] + [metric[:i] for i in ends]:
        if cut in ups or cut in downs:
            return Goal.MAXIMIZE if cut in ups else Goal.MINIMIZE
    return Goal.MINIMIZE


def headline_metrics() -> set[str]:
    """Metric names worth a glance on each epoch's line, over every task type."""
    return set().union(*(t.headline for t in TASKS.values()))


__all__ = [
    "TASKS",
    "EpochMeter",
    "Goal",
    "TargetInfo",
    "TargetSpec",
    "Task",
    "TaskConfig",
    "create_tasks",
    "evaluate",
    "headline_metrics",
    "metric_goal",
    "metric_parts",
    "task_class",
    "task_config",
    "total_loss",
]
