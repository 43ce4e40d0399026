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

    `detailed` meters (validation, test) feed torchmetrics: macro precision / recall / F1
    need per-class counts. The training meter keeps only running sums (loss, correct,
    |error|, error²) in one tensor: one add per step, since torchmetrics' per-call Python
    overhead cost ~20% of a small model's step on the CPU.

    It is an nn.Module so its running sums go into checkpoints: a run resumed mid-epoch
    reports the same epoch metrics as an uninterrupted one.
    """

    def __init__(
        self,
        recipe: Recipe,
        num_classes: dict[str, int],
        device: torch.device,
        detailed: bool = True,
    ):
        super().__init__()
        self.recipe, self.detailed = recipe, detailed
        self.metrics = nn.ModuleDict()
        if detailed:
            for name, task in recipe.tasks.items():
                self.metrics[name] = _task_metrics(task, num_classes.get(name))
                self.metrics[name].persistent(True)  # running states go into state_dict()
        # Layout of `sums`: count, total loss, then per task: loss, then correct (classification)
        # or |error|, error² (regression) when not detailed.
        width = 2 + sum(
            1 + (0 if detailed else 1 if t.type == "classification" else 2)
            for t in recipe.tasks.values()
        )
        self.register_buffer("sums", torch.zeros(width, dtype=torch.float64))
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
        stats = [torch.ones((), device=total.device), total.detach().float()]
        for name, task in self.recipe.tasks.items():
            stats.append(losses[name].detach().float())
            pred, target = model.heads[name].decode(outputs[name].detach()), targets[task.target]
            if self.detailed:
                self.metrics[name].update(pred, target)
            elif task.type == "classification":
                stats.append((pred == target).float().mean())
            else:
                err = pred - target.float()
                stats += [err.abs().mean(), err.square().mean()]
        self.sums += torch.stack(stats).double() * n

    def compute(self, split: str) -> dict[str, float]:
        """Read everything once: {'val.loss': ..., 'val.cls.accuracy': ..., ...}."""
        sums = self.sums.tolist()
        count = max(sums[0], 1.0)
        means = iter(v / count for v in sums[1:])
        out = {f"{split}.loss": next(means)}
        for name, task in self.recipe.tasks.items():
            out[f"{split}.{name}.loss"] = next(means)
            if self.detailed:
                for metric, value in self.metrics[name].compute().items():
                    out[f"{split}.{name}.{metric}"] = float(value)
            elif task.type == "classification":
                out[f"{split}.{name}.accuracy"] = next(means)
            else:
                out[f"{split}.{name}.mae"] = next(means)
                out[f"{split}.{name}.rmse"] = next(means) ** 0.5
        return out

    def reset(self) -> None:
        self.sums.zero_()
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
