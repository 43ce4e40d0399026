"""cnnlab: CNN image experiments as YAML recipes, from the command line or from Python.

    import cnnlab
    run = cnnlab.train("fashion_fast", overrides={"train.epochs": 3})
    run.metrics, run.test_metrics, run.predict(images), run.figure("confusion")

The names below load on first use, so `import cnnlab` (and the `cnnlab` command) stays
quick: torch and the rest arrive with the first function called.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load_recipe": "cnnlab.api",
    "train": "cnnlab.api",
    "resume": "cnnlab.api",
    "load_run": "cnnlab.api",
    "sweep": "cnnlab.api",
    "compare": "cnnlab.api",
    "cross_validate": "cnnlab.api",
    "Run": "cnnlab.api",
    "Sweep": "cnnlab.api",
    "Recipe": "cnnlab.recipe",
    "CnnlabError": "cnnlab.errors",
    "Predictions": "cnnlab.inference",
    "Chart": "cnnlab.viz.base",
    "RunView": "cnnlab.viz.run_view",
    "Backbone": "cnnlab.models.base",
    "FeatureInfo": "cnnlab.models.base",
    "MLPHead": "cnnlab.models.heads",
    "Task": "cnnlab.tasks.base",
    "TaskSection": "cnnlab.tasks.base",
    "TargetSpec": "cnnlab.tasks.base",
    "TargetInfo": "cnnlab.tasks.base",
    "Worst": "cnnlab.tasks.base",
    "register_backbone": "cnnlab.components",
    "register_source": "cnnlab.components",
    "register_task": "cnnlab.components",
    "register_figure": "cnnlab.components",
    "unregister": "cnnlab.components",
    "registration_scope": "cnnlab.components",
    "import_modules": "cnnlab.plugins",
    "load_entry_points": "cnnlab.plugins",
}

if TYPE_CHECKING:
    from cnnlab.api import Run, Sweep, compare, load_recipe, load_run, resume, sweep, train
    from cnnlab.components import (
        register_backbone,
        register_figure,
        register_source,
        register_task,
        registration_scope,
        unregister,
    )
    from cnnlab.errors import CnnlabError
    from cnnlab.inference import Predictions
    from cnnlab.models.base import Backbone, FeatureInfo
    from cnnlab.models.heads import MLPHead
    from cnnlab.plugins import import_modules, load_entry_points
    from cnnlab.recipe import Recipe
    from cnnlab.tasks.base import TargetInfo, TargetSpec, Task, TaskSection, Worst
    from cnnlab.viz.base import Chart
    from cnnlab.viz.run_view import RunView


def __getattr__(name: str) -> Any:
    """A public name, or a submodule the docs name (`cnnlab.predict.image_paths`,
    `cnnlab.export.ExportedModel`), imported on first use as `import cnnlab.predict` would."""
    if name not in _EXPORTS:
        if name.isidentifier() and importlib.util.find_spec(f"cnnlab.{name}") is not None:
            return importlib.import_module(f"cnnlab.{name}")  # the import sets the attribute
        raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    """The public names (what a notebook's completion offers), not this module's imports."""
    return sorted([*_EXPORTS, "__version__"])


__all__ = [
    "Backbone",
    "Chart",
    "CnnlabError",
    "FeatureInfo",
    "MLPHead",
    "Predictions",
    "Recipe",
    "Run",
    "RunView",
    "Sweep",
    "TargetInfo",
    "TargetSpec",
    "Task",
    "TaskSection",
    "Worst",
    "compare",
    "cross_validate",
    "import_modules",
    "load_entry_points",
    "load_recipe",
    "load_run",
    "register_backbone",
    "register_figure",
    "register_source",
    "register_task",
    "registration_scope",
    "resume",
    "sweep",
    "train",
    "unregister",
]
