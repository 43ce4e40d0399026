"""Backbones by name, and the multi-task model that joins a backbone with its heads.

A new backbone is one file and one entry in BACKBONES; heads attach to its
`forward(x) -> (B, num_features)`. Each task builds its own head (`cnnlab/tasks/`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from cnnlab.models.cnn import CNN, CNNConfig


class HeadMaker(Protocol):
    """What the model needs of a task (`cnnlab.tasks.Task`): a head for the features."""

    def head(self, in_features: int) -> nn.Module: ...


BACKBONES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "cnn": (CNN, "configurable Conv-BN-Act-Pool blocks (seeds 000-003)"),
}


def list_backbones() -> dict[str, str]:
    return {name: doc for name, (_, doc) in BACKBONES.items()}


class MultiTaskModel(nn.Module):
    """A shared backbone and one head per task; forward returns {task: raw output}."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)  # (B, F)
        return {name: head(features) for name, head in self.heads.items()}

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decoded predictions: class indices, regression values in target units."""
        return {name: self.heads[name].decode(out) for name, out in self.forward(x).items()}


def create_model(
    cfg: CNNConfig,
    in_channels: int,
    image_size: tuple[int, int],
    tasks: dict[str, HeadMaker],
    channels_last: bool = True,
) -> MultiTaskModel:
    """The backbone `cfg` names with one head per task (each task knows its target by now)."""
    build, _ = BACKBONES[cfg.backbone]
    backbone = build(cfg, in_channels, image_size)
    heads = {name: task.head(backbone.num_features) for name, task in tasks.items()}
    model = MultiTaskModel(backbone, heads)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
