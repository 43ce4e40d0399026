"""A finished run as the figures see it: recipe, metrics, best weights, data, predictions.

Everything is read from the run folder (recipe.yaml, metrics.jsonl, checkpoints/best.pt
loaded with weights_only=True) and rebuilt through the one build path training used
(`cnnlab.build`), so figures show exactly the split and model the run was evaluated on.
Nothing here writes to the run or touches training state (optimizer, last.pt, rng).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from cnnlab.build import Built, build, saved_precision, saved_tasks
from cnnlab.data.base import ImageSet
from cnnlab.data.batches import Splits
from cnnlab.errors import CnnlabError
from cnnlab.models import MultiTaskModel
from cnnlab.precision import autocast_for
from cnnlab.recipe import Recipe
from cnnlab.runs import RunFolder, load_checkpoint
from cnnlab.tasks import Task
from cnnlab.tasks.calibration import Rows, batch_rows, share_kept
from cnnlab.tta import ViewAverage
from cnnlab.viz.hooks import analysis_mode, forward_hooks, last_conv


@dataclass
class Predictions:
    """Decoded predictions of the best model on one split, on the CPU."""

    truth: dict[str, torch.Tensor]  # task -> (N,) class index or target value
    pred: dict[str, torch.Tensor]  # task -> (N,)
    peaks: torch.Tensor  # (N, C) each image's max of each channel of the last conv layer
    # a classification's raw outputs (before its temperature) as rows: one per image, or a
    # sample of a mask's labelled pixels; what the reliability diagram bins
    rows: dict[str, Rows]


class RunView:
    """Lazy access to one run; each heavy part (data, model, predictions) is built once."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        path = Path(path)
        if not path.is_dir():
            raise CnnlabError(f"{path} is not a folder; give a run folder such as runs/<run>")
        self.run = RunFolder.open(path)
        if not self.run.best_path.is_file():
            raise CnnlabError(
                f"{path} has no checkpoints/best.pt yet; figures need a run that finished "
                "at least one epoch"
            )
        self.recipe: Recipe = self.run.recipe()
        self.device = torch.device(device)

    def share_splits(self, splits: Splits) -> None:
        """Use data another view of the same data section, seed and layout has loaded (a
        sweep's runs share it): loading is the slow part of looking inside many runs."""
        self._shared = splits

    @property
    def name(self) -> str:
        return self.run.path.name

    @cached_property
    def checkpoint(self) -> dict:
        return load_checkpoint(self.run.best_path, "cpu")

    @property
    def precision(self) -> str:
        """The precision the run trained and was tested in: predictions drawn in another one
        would not match the reported test metrics (a confusion matrix whose diagonal
        disagrees with the accuracy above it)."""
        return saved_precision(self.checkpoint, self.recipe)

    @property
    def classes(self) -> dict[str, list[str]]:
        """Class names per categorical target, as saved with the weights."""
        return self.checkpoint["classes"]

    @cached_property
    def tasks(self) -> dict[str, Task]:
        """The run's tasks, told their classes by the checkpoint: no data is loaded for a
        figure that needs only the metrics."""
        return saved_tasks(self.recipe, self.checkpoint)

    def task_classes(self, task: str) -> list[str]:
        return list(self.tasks[task].info.classes or [])

    def tasks_with(self, figure: str) -> list[str]:
        """The tasks a figure family applies to (`Task.figures`)."""
        return [name for name, t in self.tasks.items() if figure in t.figures]

    def metrics(self) -> list[dict]:
        return self.run.read_metrics()

    def test_metrics(self) -> dict:
        return self.run.test_metrics()

    @cached_property
    def built(self) -> Built:
        """The run rebuilt with its best weights: data, tasks, model, test-time views.
        Normal tensors even when first asked for inside inference_mode: guided backprop
        later needs autograd through the same data and weights."""
        with torch.inference_mode(False):
            shared = getattr(self, "_shared", None)
            built = build(
                self.recipe, self.checkpoint, device=self.device, weights="judged", splits=shared
            )
            built.model.requires_grad_(False)
            built.model.eval()
            return built

    @property
    def splits(self) -> Splits:
        return self.built.splits

    @property
    def model(self) -> MultiTaskModel:
        """Best weights in a freshly built model, eval mode, gradients off."""
        return self.built.model

    @property
    def views(self) -> ViewAverage | None:
        """The recipe's test-time views: the figures show what the test metrics measured."""
        return self.built.views

    def split(self, name: str) -> ImageSet:
        return getattr(self.splits, name)

    def batch(self, split: str, index: torch.Tensor) -> torch.Tensor:
        """Normalized model input for chosen images of a split: (B, C, H, W)."""
        images = self.split(split).images[index.to(self.device)].float().div_(255)
        x, _ = self.splits.finish(images, {}, set())
        return x

    def batches(self, split: str):
        """Batches as the test evaluation made them: the same batch size, so the same
        kernels and the same rounding in bf16."""
        needed = {t.target for t in self.recipe.tasks.values()}
        return self.splits.eval_batches(split, self.built.eval_batch_size, needed)

    @cached_property
    def test_predictions(self) -> Predictions:
        return self.predict("test")

    @torch.inference_mode()
    def predict(self, split: str) -> Predictions:
        """One pass over a split: decoded predictions, targets, and the per-channel peaks of
        the last conv layer (guided backprop picks its images from them)."""
        truth: dict[str, list[torch.Tensor]] = {k: [] for k in self.recipe.tasks}
        pred: dict[str, list[torch.Tensor]] = {k: [] for k in self.recipe.tasks}
        peaks: list[torch.Tensor] = []
        rows: dict[str, list[Rows]] = {k: [] for k in self.tasks_with("reliability")}
        images, gen = len(self.split(split)), torch.Generator().manual_seed(0)
        _, conv = last_conv(self.model)
        seen: list[torch.Tensor] = []  # this batch's peaks: its first forward's only

        def record(name: str, module: nn.Module, y: torch.Tensor) -> None:
            if not seen:
                seen.append(y.float().amax(dim=(2, 3)).cpu())

        autocast = autocast_for(self.device, self.precision)
        with analysis_mode(self.model):
            for x, targets in self.batches(split):
                # the first of the test-time views is the image as it is: its forward gives
                # the peaks, so they stay those of the image as it is
                with autocast(), forward_hooks({"conv": conv}, record):
                    out = self.views(self.model, x) if self.views else self.model(x)
                peaks.append(seen.pop())
                for name, parts in rows.items():
                    target = targets[self.recipe.tasks[name].target]
                    keep = share_kept(out[name][0, 0].numel(), images)
                    parts.append(batch_rows(out[name], target, keep, gen))
                out = {name: self.model.heads[name].decode(o) for name, o in out.items()}
                for name, task in self.recipe.tasks.items():
                    truth[name].append(targets[task.target].cpu())
                    pred[name].append(out[name].cpu())
        return Predictions(
            {k: torch.cat(v) for k, v in truth.items()},
            {k: torch.cat(v) for k, v in pred.items()},
            torch.cat(peaks),
            {k: Rows.join(v) for k, v in rows.items()},
        )
