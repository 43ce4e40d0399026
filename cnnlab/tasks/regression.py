"""Regression: one value per image, learnt standardized, reported in the target's units."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import HeadConfig
from cnnlab.models.heads import MLPHead
from cnnlab.tasks.base import TargetInfo, Task, TaskSection

LOSSES = {"mse": F.mse_loss, "smooth_l1": F.smooth_l1_loss}


if TYPE_CHECKING:
    from torchmetrics import MetricCollection


class RegressionConfig(TaskSection):
    type: Literal["regression"] = "regression"
    loss: Literal["mse", "smooth_l1"] = "mse"
    standardize: bool = True  # learn (y - mean) / std of the training split; report in y's units


class RegressionHead(MLPHead):
    """A scalar per image, learned in standardized units; `decode` returns target units.

    The target's mean and std are buffers, so they travel with the weights in checkpoints.
    """

    def __init__(self, in_dim: int, cfg: HeadConfig, mean: float = 0.0, std: float = 1.0):
        super().__init__(in_dim, 1, cfg)
        self.register_buffer("target_mean", torch.tensor(float(mean)))
        self.register_buffer("target_std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(1)  # (B,)

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.target_mean) / self.target_std

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        return out.float() * self.target_std + self.target_mean


class Regression(Task):
    config = RegressionConfig
    metrics = ("loss", "mae", "rmse")
    headline = ("rmse",)
    step_metrics = ("mae", "mse")
    figures = ("regression",)

    def fit(self, classes: list[str] | None, values: Callable[[], torch.Tensor] | None) -> None:
        if not self.cfg.standardize or values is None:
            self.info = TargetInfo()
            return
        v = values().double()
        self.info = TargetInfo(mean=v.mean().item(), std=v.std().clamp_min(1e-12).item())

    def head(self, in_features: int) -> nn.Module:
        return RegressionHead(in_features, self.cfg.head, self.info.mean, self.info.std)

    def loss(self, head: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LOSSES[self.cfg.loss](out.float(), head.encode(target.float()))

    def step_sums(self, pred: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        err = pred - target.float()
        return [err.abs().mean(), err.square().mean()]

    def from_step_means(self, means: list[float]) -> dict[str, float]:
        mae, mse = means
        return {"mae": mae, "rmse": mse**0.5}

    def epoch_metrics(self) -> MetricCollection:
        import torchmetrics  # imported when a meter is built: a recipe check needs no metrics

        return torchmetrics.MetricCollection(
            {
                "mae": torchmetrics.MeanAbsoluteError(),
                "rmse": torchmetrics.MeanSquaredError(squared=False),
            }
        )

    def caption(
        self, truth: torch.Tensor, pred: torch.Tensor, short: Callable[[str], str] = str
    ) -> tuple[str, bool]:
        return f"{self.name} {float(truth):.3g} → {float(pred):.3g}", False
