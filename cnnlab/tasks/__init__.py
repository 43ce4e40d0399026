"""Task types by name: what each head is trained on, its loss and its metrics.

A new task type is one file (its config section and its `Task` subclass) and one entry in
TASKS; the recipe's `tasks.<name>.type` picks it, and nothing else in cnnlab changes.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from cnnlab.tasks.base import TargetInfo, TargetSpec, Task, TaskSection
from cnnlab.tasks.classification import Classification
from cnnlab.tasks.meter import EpochMeter, evaluate, total_loss
from cnnlab.tasks.pixel import PixelClassification
from cnnlab.tasks.regression import Regression

TASKS: dict[str, type[Task]] = {
    "classification": Classification,
    "regression": Regression,
    "pixel_classification": PixelClassification,
}

# The recipe's `tasks.<name>` section: one config per type, told apart by `type`.
TaskConfig = Annotated[
    Union[tuple(t.config for t in TASKS.values())],  # noqa: UP007 (a union built at run time)
    Field(discriminator="type"),
]


def task_class(cfg: TaskSection) -> type[Task]:
    return TASKS[cfg.type]


def create_tasks(cfgs: dict[str, Any]) -> dict[str, Task]:
    """The recipe's tasks as objects, in recipe order."""
    return {name: task_class(cfg)(name, cfg) for name, cfg in cfgs.items()}


def metric_goal(name: str) -> str:
    """Whether a metric such as `val.cls.accuracy` improves upwards ("max") or downwards."""
    ups = set().union(*(t.maximize for t in TASKS.values()))
    return "max" if name.rsplit(".", 1)[-1] in ups else "min"


def headline_metrics() -> set[str]:
    """Metric names worth a glance on each epoch's line, over every task type."""
    return set().union(*(t.headline for t in TASKS.values()))


__all__ = [
    "TASKS",
    "EpochMeter",
    "TargetInfo",
    "TargetSpec",
    "Task",
    "TaskConfig",
    "create_tasks",
    "evaluate",
    "headline_metrics",
    "metric_goal",
    "task_class",
    "total_loss",
]
