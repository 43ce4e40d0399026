"""ResNet(n) and PlainNet(n) for small images (He et al. 2015, §4.2; seed 004).

A 3×3 stem of 16 filters, then three stages of n basic blocks (two 3×3 convs each) at 16,
32 and 64 channels, the last two starting with stride 2; global average pooling gives the
heads 64 features. Depth 6n + 2: n = 3, 9, 18 give 20, 56, 110 layers. Shortcuts are
option A: the identity, subsampled and zero-padded in channels where a stage starts, so
they add no parameters. PlainNet is the same network without the shortcuts. Seed 004's
convs carry biases, which is how its table counts 270,410 / 855,050 / 1,732,010 parameters
for depth 20 / 56 / 110 (with a linear 10-way head).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from cnnlab.config import Section
from cnnlab.models.base import Backbone, FeatureInfo
from cnnlab.models.layers import create_act, init_kaiming


class ResNetConfig(Section):
    """`model` of a CIFAR ResNet(n) (He et al. 2015, §4.2): three stages of n basic blocks."""

    backbone: Literal["resnet"] = "resnet"
    n: int = Field(3, ge=1, le=200)  # blocks per stage: depth 6n + 2 (3: 20, 9: 56, 18: 110)
    widths: tuple[PositiveInt, PositiveInt, PositiveInt] = (16, 32, 64)  # channels per stage
    conv_bias: bool = True  # seed 004's convs carry biases (270,410 parameters at depth 20)
    init: Literal["default", "kaiming"] = "kaiming"  # kaiming: He normal weights; default: torch's

    residual: ClassVar[bool] = True  # PlainNet: False


class PlainNetConfig(ResNetConfig):
    """`model` of a PlainNet(n): ResNet(n)'s layers without the shortcuts."""

    backbone: Literal["plainnet"] = "plainnet"

    residual: ClassVar[bool] = False


class BasicBlock(nn.Module):
    """conv 3×3 (stride s) → BN → ReLU → conv 3×3 → BN, + shortcut, → ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: ResNetConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=cfg.conv_bias)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = create_act("relu")
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=cfg.conv_bias)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = create_act("relu")  # a module of its own: hooks see each use once
        self.residual, self.stride, self.pad = cfg.residual, stride, cout - cin

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: the identity, subsampled by the stride, new channels zero (half each side)."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.residual:
            out = out + self.shortcut(x)
        return self.act2(out)


class ResNet(Backbone):
    """The stem and three stages; `forward` average-pools the last stage to (B, widths[2])."""

    def __init__(self, cfg: ResNetConfig, in_channels: int, image_size: tuple[int, int]):
        super().__init__()
        w1, w2, w3 = cfg.widths
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3, 1, 1, bias=cfg.conv_bias),
            nn.BatchNorm2d(w1),
            create_act("relu"),
        )
        self.stages = nn.ModuleList(
            nn.Sequential(
                *(BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, cfg)
                  for i in range(cfg.n))
            )
            for cin, cout, stride in ((w1, w1, 1), (w1, w2, 2), (w2, w3, 2))
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.feature_info = [
            FeatureInfo(f"stages.{i}", width, 2**i) for i, width in enumerate(cfg.widths)
        ]
        self.num_features = w3
        if cfg.init == "kaiming":
            init_kaiming(self)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)  # (B, w1, H, W)
        maps = []
        for stage in self.stages:
            x = stage(x)  # (B, w_i, H / 2^i, W / 2^i), rounded up
            maps.append(x)
        return maps

    def forward_pooled(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.flatten(self.pool(maps[-1]))  # (B, widths[2])
