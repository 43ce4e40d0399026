"""Backbones by name, and the multi-task model that joins a backbone with its heads.

A new backbone is one file and one entry in BACKBONES; heads attach to its
`forward(x) -> (B, num_features)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cnnlab.models.cnn import CNN
from cnnlab.models.heads import ClassificationHead, RegressionHead
from cnnlab.recipe import Recipe

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
    recipe: Recipe,
    in_channels: int,
    image_size: tuple[int, int],
    num_classes: dict[str, int],
    target_stats: dict[str, tuple[float, float]] | None = None,
) -> MultiTaskModel:
    """Build backbone + heads. num_classes: per classification task; target_stats: (mean, std)."""
    build, _ = BACKBONES[recipe.model.backbone]
    backbone = build(recipe.model, in_channels, image_size)
    heads: dict[str, nn.Module] = {}
    for name, task in recipe.tasks.items():
        if task.type == "classification":
            heads[name] = ClassificationHead(backbone.num_features, num_classes[name], task.head)
        else:
            mean, std = (target_stats or {}).get(name, (0.0, 1.0))
            heads[name] = RegressionHead(backbone.num_features, task.head, mean, std)
    model = MultiTaskModel(backbone, heads)
    if recipe.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
