"""Test-set metrics of a model: what the end of training and `cnnlab eval` report.

`cnnlab eval` rebuilds the run through the one build path with its best weights and
measures them here: no optimizer, no run folder written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cnnlab.build import build
from cnnlab.data.batches import Splits
from cnnlab.errors import CnnlabError
from cnnlab.precision import autocast_for
from cnnlab.runs import RunFolder, load_checkpoint
from cnnlab.tasks import EpochMeter, Task, evaluate
from cnnlab.tta import ViewAverage


@torch.inference_mode()
def measure(
    tasks: dict[str, Task],
    splits: Splits,
    model: nn.Module,
    autocast: Callable,
    batch_size: int,
    views: ViewAverage | None = None,
    split: str = "test",
) -> dict[str, float]:
    """`model`'s metrics on one split, averaged over `views` when given; with how well
    its probabilities are calibrated (ECE, MCE), at the tasks' temperatures."""
    device = next(model.parameters()).device
    meter = EpochMeter(tasks, device, calibration=True)
    needed = {t.target for t in tasks.values()}
    evaluate(model, meter, splits.eval_batches(split, batch_size, needed), autocast, views)
    return meter.compute(split)


def evaluate_run(path: str | Path, split: str = "test") -> dict[str, float]:
    """`cnnlab eval`: a split's metrics of a run's best checkpoint, with the recipe's
    test-time views, in the precision it trained in."""
    run = RunFolder.open(path)
    if not run.best_path.is_file():
        raise CnnlabError(
            f"{run.path} has no checkpoints/best.pt yet; evaluate a run that finished an epoch"
        )
    best = load_checkpoint(run.best_path)
    built = build(run.recipe(), best, weights="judged")
    autocast = autocast_for(built.device, built.precision.precision)
    size = built.eval_batch_size
    views = built.views if split == "test" else None  # validation is single-view
    metrics = measure(built.tasks, built.splits, built.model, autocast, size, views, split)
    return {"best_epoch": best["loop"]["epoch"], **metrics}
