"""What every backbone offers, after timm: its feature stages and three forward passes.

`forward_intermediates(x)` gives the map of every stage, `forward_features(x)` the last one,
and `forward(x)` the pooled or flattened features the MLP heads see (`forward_pooled` makes
them from the stage maps, so a model with per-pixel and image-level heads runs the backbone
once). `feature_info` says, without running the model, what each stage gives: a per-pixel
head attaches to a stage by it, and the figures hook the stage's module by its name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """One stage's feature map, (B, channels, H // stride, W // stride) for an (H, W) input."""

    name: str  # qualified name of the submodule that outputs the map, e.g. "blocks.2"
    channels: int  # C of the map
    stride: int  # input size / map size (the reduction), e.g. 8 after three 2x2 pools


class Backbone(nn.Module):
    """Base of every backbone. A subclass sets `feature_info` and `num_features` in its
    `__init__(cfg, in_channels, image_size)` and writes `forward_intermediates` and
    `forward_pooled`."""

    feature_info: list[FeatureInfo]  # one entry per stage, in forward order
    num_features: int  # width of forward(x): the input of the heads

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's feature map, (B, C, H, W) each, in `feature_info` order."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[-1]  # (B, C, H, W) of the last stage

    def forward_pooled(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The features an image-level head sees, (B, num_features), from the stage maps."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_pooled(self.forward_intermediates(x))  # (B, num_features)
