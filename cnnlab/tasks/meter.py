"""The summed loss of all tasks, and the meter that turns a split's batches into metrics.

The training loss is Σ λ_task · loss_task. Metrics accumulate on the device and are read
once per epoch; regression metrics are in the target's own units even when the head learns
a standardized target. Every task-specific step is the task's own (`cnnlab/tasks/*.py`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from cnnlab.tasks.base import Task


def total_loss(
    tasks: dict[str, Task],
    model: nn.Module,
    outputs: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(Σ λ·loss, {task: loss}) for one batch; all tensors, no host sync."""
    losses = {
        name: task.loss(model.heads[name], outputs[name], targets[task.target])
        for name, task in tasks.items()
    }
    total = sum(tasks[name].cfg.weight * loss for name, loss in losses.items())
    return total, losses


class EpochMeter(nn.Module):
    """Accumulates losses and metrics of one split over one epoch, on the device.

    `detailed` meters (validation, test) feed each task's torchmetrics: macro precision /
    recall / F1 need per-class counts. The training meter keeps only running sums (each
    task's `step_metrics`) in one tensor: one add per step, since torchmetrics' per-call
    Python overhead cost ~20% of a small model's step on the CPU.

    It is an nn.Module so its running sums go into checkpoints: a run resumed mid-epoch
    reports the same epoch metrics as an uninterrupted one.
    """

    def __init__(
        self,
        tasks: dict[str, Task],
        device: torch.device,
        detailed: bool = True,
        calibration: bool = False,
    ):
        super().__init__()
        self.tasks, self.detailed = tasks, detailed
        self.metrics = nn.ModuleDict()
        if detailed:
            for name, task in tasks.items():
                self.metrics[name] = task.epoch_metrics()
                if calibration:  # a test's: kept out of validation, whose state checkpoints hold
                    self.metrics[name].add_metrics(task.calibration_metrics())
                self.metrics[name].persistent(True)  # running states go into state_dict()
        # Layout of `sums`: images, total loss, then per task: its labelled values (images,
        # or pixels), its loss and, when not detailed, its step metrics, each summed over
        # them: a task's means are then over its labelled values alone (a table's blank
        # cells, a mask's unlabelled pixels count in none).
        width = 2 + sum(2 + (0 if detailed else len(t.step_metrics)) for t in tasks.values())
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
        stats = [torch.full((), float(n), device=total.device), total.detach().float() * n]
        for name, task in self.tasks.items():
            head, out, target = model.heads[name], outputs[name].detach(), targets[task.target]
            count = task.labelled(target).sum().float()  # a batch weighs by its labels
            means = [losses[name].detach().float()]
            if self.detailed:
                task.update_metrics(self.metrics[name], head, out, target)
            else:
                means += task.step_sums(head.decode(out), target)
            stats += [count, *(m.float() * count for m in means)]
        self.sums += torch.stack(stats).double()

    def compute(self, split: str) -> dict[str, float]:
        """Read everything once: {'val.loss': ..., 'val.cls.accuracy': ..., ...}."""
        sums = self.sums.tolist()
        out, at = {f"{split}.loss": sums[1] / max(sums[0], 1.0)}, 2
        for name, task in self.tasks.items():
            width = 1 + (0 if self.detailed else len(task.step_metrics))
            count = sums[at]  # none labelled (a test split of blanks): NaN, not 0
            means = [v / count if count else math.nan for v in sums[at + 1 : at + 1 + width]]
            at += 1 + width
            out[f"{split}.{name}.loss"] = means[0]
            if self.detailed:
                values = task.epoch_values(self.metrics[name].compute())
            else:
                values = task.from_step_means(means[1:])
            out.update({f"{split}.{name}.{m}": v for m, v in values.items()})
        return out

    def reset(self) -> None:
        self.sums.zero_()
        for m in self.metrics.values():
            m.reset()

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        if state["sums"].shape != self.sums.shape:  # a checkpoint of an older cnnlab
            state = {**state, "sums": self._from_older(state["sums"])}
        self.load_state_dict(state)
        for collection in self.metrics.values():
            for metric in collection.values():
                metric._update_count = 1  # states came from a checkpoint: compute() is valid

    def _from_older(self, old: torch.Tensor) -> torch.Tensor:
        """Sums saved before they counted labels (images, loss, then per task its loss and
        step metrics, each times the images) in this layout, each task's labelled count
        taken as the images: exact for a per-image target, which then had a label in every
        row; a per-pixel task's mean of the broken epoch leans on the batches after it."""
        n, out, at = old[0], [old[0], old[1]], 2
        for task in self.tasks.values():
            width = 1 + (0 if self.detailed else len(task.step_metrics))
            out += [n, *old[at : at + width]]
            at += width
        return torch.stack(out)


@torch.inference_mode()
def evaluate(
    model: nn.Module, meter: EpochMeter | None, batches, autocast, views=None, record=None
) -> None:
    """Run `model` over eval batches and feed the meter (caller resets and computes).
    `views(model, x)`: test-time views (cnnlab/tta.py) in place of one forward pass;
    `record(model, outputs, targets)` sees each batch too (with or without a meter)."""
    model.eval()
    for x, targets in batches:
        with autocast():
            outputs = views(model, x) if views else model(x)
        if meter is not None:
            total, losses = total_loss(meter.tasks, model, outputs, targets)
            meter.update(model, outputs, targets, total, losses)
        if record is not None:
            record(model, outputs, targets)
