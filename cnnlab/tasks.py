"""Tasks: what each head is trained on, its loss, and its metrics.

The training loss is Σ λ_task · loss_task. Metrics accumulate on the device (torchmetrics)
and are read once per epoch; regression metrics are in the target's own units even when
the head learns a standardized target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from cnnlab.recipe import Recipe, TaskConfig


def task_loss(
    task: TaskConfig, head: nn.Module, out: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    out = out.float()
    if task.type == "classification":
        return F.cross_entropy(out, target, label_smoothing=task.label_smoothing)
    encoded = head.encode(target.float())
    if task.loss == "smooth_l1":
        return F.smooth_l1_loss(out, encoded)
    return F.mse_loss(out, encoded)


def total_loss(
    recipe: Recipe,
    model: nn.Module,
    outputs: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(Σ λ·loss, {task: loss}) for one batch; all tensors, no host sync."""
    losses = {
        name: task_loss(task, model.heads[name], outputs[name], targets[task.target])
        for name, task in recipe.tasks.items()
    }
    total = sum(recipe.tasks[name].weight * loss for name, loss in losses.items())
    return total, losses


def _task_metrics(task: TaskConfig, num_classes: int | None) -> torchmetrics.MetricCollection:
    if task.type == "classification":
        kw = {"num_classes": num_classes, "validate_args": False}
        return torchmetrics.MetricCollection(
            {
                "accuracy": torchmetrics.classification.MulticlassAccuracy(average="micro", **kw),
                "precision": torchmetrics.classification.MulticlassPrecision(average="macro", **kw),
                "recall": torchmetrics.classification.MulticlassRecall(average="macro", **kw),
                "f1": torchmetrics.classification.MulticlassF1Score(average="macro", **kw),
            }
        )
    return torchmetrics.MetricCollection(
        {
            "mae": torchmetrics.MeanAbsoluteError(),
            "rmse": torchmetrics.MeanSquaredError(squared=False),
        }
    )


class EpochMeter(nn.Module):
    """Accumulates losses and metrics of one split over one epoch, on the device.

    It is an nn.Module so its running sums go into checkpoints: a run resumed mid-epoch
    reports the same epoch metrics as an uninterrupted one.
    """

    def __init__(self, recipe: Recipe, num_classes: dict[str, int], device: torch.device):
        super().__init__()
        self.recipe = recipe
        self.metrics = nn.ModuleDict(
            {name: _task_metrics(t, num_classes.get(name)) for name, t in recipe.tasks.items()}
        )
        for collection in self.metrics.values():
            collection.persistent(True)  # running states go into state_dict()
        names = ["loss", *recipe.tasks]
        self.register_buffer("loss_sums", torch.zeros(len(names), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.loss_names = names
        self.to(device)

    @torch.no_grad()
    def update(
        self,
        model: nn.Module,
        outputs: dict[str, torch.Tensor],
        targets: dict[str, torch.Tensor],
        total: torch.Tensor,
        losses: dict[str, torch.Tensor],
    ) -> None:
        n = next(iter(outputs.values())).shape[0]
        batch_losses = torch.stack(
            [total.detach(), *(losses[k].detach() for k in self.recipe.tasks)]
        )
        self.loss_sums += batch_losses.double() * n
        self.count += n
        for name, task in self.recipe.tasks.items():
            pred = model.heads[name].decode(outputs[name].detach())
            self.metrics[name].update(pred, targets[task.target])

    def compute(self, split: str) -> dict[str, float]:
        """Read everything once: {'val.loss': ..., 'val.cls.accuracy': ..., ...}."""
        means = (self.loss_sums / self.count.clamp_min(1)).tolist()
        out = {f"{split}.loss": means[0]}
        for i, name in enumerate(self.recipe.tasks, start=1):
            out[f"{split}.{name}.loss"] = means[i]
            for metric, value in self.metrics[name].compute().items():
                out[f"{split}.{name}.{metric}"] = float(value)
        return out

    def reset(self) -> None:
        self.loss_sums.zero_()
        self.count.zero_()
        for m in self.metrics.values():
            m.reset()

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)
        for collection in self.metrics.values():
            for metric in collection.values():
                metric._update_count = 1  # states came from a checkpoint: compute() is valid


@torch.inference_mode()
def evaluate(model: nn.Module, meter: EpochMeter, batches, autocast) -> None:
    """Run `model` over eval batches and feed the meter (caller resets and computes)."""
    model.eval()
    for x, targets in batches:
        with autocast():
            outputs = model(x)
        total, losses = total_loss(meter.recipe, model, outputs, targets)
        meter.update(model, outputs, targets, total, losses)
