"""Optional logging integrations: W&B, TensorBoard, MLflow — switched on in the recipe.

    log: {wandb: true, tensorboard: true, mlflow: false, project: fmnist}

metrics.jsonl in the run folder is always written; these send the same rows (every epoch's
train.* / val.* / lr, then the test metrics) and the resolved recipe as the config, so
users keep their dashboards without a line of code. Each package is imported only when
asked for; a missing one is one clear error before training starts. W&B's offline mode
(WANDB_MODE=offline) works with no network: runs sync later with `wandb sync`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.recipe import Recipe, flatten
from cnnlab.runs import RunFolder


def _require(name: str) -> Any:
    """The package behind log.<name> (each is named as its switch)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise CnnlabError(
            f"the recipe asks for log.{name} but the package {name!r} is not installed; "
            f"pip install 'cnnlab[{name}]' or set log.{name}=false"
        ) from None


def _numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}


class WandbLogger:
    def __init__(self, recipe: Recipe, run: RunFolder):
        wandb = _require("wandb")
        self.run = wandb.init(
            project=recipe.log.project or recipe.name,
            name=run.path.name,
            dir=str(run.path),
            config=recipe.model_dump(mode="json"),
            reinit=True,
        )

    def epoch(self, row: dict) -> None:
        self.run.log(_numbers(row), step=int(row["epoch"]))

    def close(self, summary: dict) -> None:
        self.run.summary.update(_numbers(summary))
        self.run.finish()


class TensorBoardLogger:
    def __init__(self, recipe: Recipe, run: RunFolder):
        _require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.path / "tensorboard"))
        self.writer.add_text("recipe", "```\n" + run.recipe_path.read_text() + "\n```")

    def epoch(self, row: dict) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, int(row["epoch"]))
        self.writer.flush()

    def close(self, summary: dict) -> None:
        for key, value in _numbers(summary).items():
            self.writer.add_scalar(key, value, 0)
        self.writer.close()


class MlflowLogger:
    def __init__(self, recipe: Recipe, run: RunFolder):
        self.mlflow = _require("mlflow")
        self.mlflow.set_experiment(recipe.log.project or recipe.name)
        self.mlflow.start_run(run_name=run.path.name)
        flat = flatten(recipe.model_dump(mode="json"))
        self.mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})

    def epoch(self, row: dict) -> None:
        self.mlflow.log_metrics(_numbers(row), step=int(row["epoch"]))

    def close(self, summary: dict) -> None:
        self.mlflow.log_metrics(_numbers(summary))
        self.mlflow.end_run()


LOGGERS = {"wandb": WandbLogger, "tensorboard": TensorBoardLogger, "mlflow": MlflowLogger}


class Loggers:
    """The loggers a recipe asks for, fed together; empty (and free) when none is asked."""

    def __init__(self, recipe: Recipe, run: RunFolder):
        self.loggers = [LOGGERS[name](recipe, run) for name in self.check(recipe)]

    @staticmethod
    def check(recipe: Recipe) -> list[str]:
        """The loggers asked for, every package imported: fails before anything is written."""
        wanted = [name for name in LOGGERS if getattr(recipe.log, name)]
        for name in wanted:
            _require(name)
        return wanted

    def chain(self, on_epoch: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
        """An epoch callback that logs the row, then calls the caller's own (sweeps)."""
        if not self.loggers:
            return on_epoch

        def both(row: dict) -> None:
            for logger in self.loggers:
                logger.epoch(row)
            if on_epoch is not None:
                on_epoch(row)

        return both

    def close(self, summary: dict | None = None) -> None:
        for logger in self.loggers:
            logger.close(summary or {})
