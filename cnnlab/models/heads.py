"""Task heads: one small MLP per task on top of the shared backbone features."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.layers import create_act
from cnnlab.recipe import HeadConfig


class MLPHead(nn.Sequential):
    """(Linear → Act → Dropout) per hidden size, then Linear to `out_dim`."""

    def __init__(self, in_dim: int, out_dim: int, cfg: HeadConfig):
        layers: list[nn.Module] = []
        for width in cfg.hidden:
            layers += [
                nn.Linear(in_dim, width),
                create_act(cfg.activation),
                nn.Dropout(cfg.dropout),
            ]
            in_dim = width
        if not cfg.hidden and cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)


class ClassificationHead(MLPHead):
    """Logits (B, num_classes)."""

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        return out.argmax(dim=1)


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
