"""Seed 001's colorizer: an encoder of three Conv-BN-ReLU-MaxPool blocks (NF, 2NF, 4NF filters,
k×k) and a decoder of three 2×2 stride-2 transposed convolutions back to full size.

The per-pixel head (a 1×1 convolution to the NC colour classes, `cnnlab/tasks/pixel.py`)
attaches to the last decoder stage. Seed 001's decoder ends in NC channels before that 1×1
classifier; `decoder_out` sets it (the recipe gives it the palette's size), so `cnnlab count`
measures the very network whose weights seed 001 counted by hand.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from cnnlab.config import Activation, Section
from cnnlab.errors import CnnlabError
from cnnlab.models.base import Backbone, FeatureInfo
from cnnlab.models.layers import create_act, init_kaiming
from cnnlab.models.pool import MaxPool2d


class ColorizerConfig(Section):
    """The `model` section of a recipe with `backbone: colorizer`."""

    backbone: Literal["colorizer"] = "colorizer"
    filters: int = Field(32, ge=1, le=1024)  # NF: the first conv's filters (then 2NF, 4NF)
    kernel_size: int = Field(3, ge=1, le=11)  # k of the encoder's convs, odd (padding k // 2)
    decoder_out: int | None = Field(None, ge=1)  # channels of the last transposed conv; None: NF
    activation: Activation = "relu"  # after every conv and transposed conv
    batch_norm: bool = True  # after every conv and transposed conv but the heads'
    init: Literal["default", "kaiming"] = "kaiming"  # kaiming: He normal weights; default: torch's

    @model_validator(mode="after")
    def _odd_kernel(self) -> ColorizerConfig:
        if self.kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size {self.kernel_size} is even; padding k // 2 keeps the size only "
                f"for odd k: use {self.kernel_size - 1} or {self.kernel_size + 1}"
            )
        return self


def _stage(layer: nn.Module, channels: int, cfg: ColorizerConfig, pool: bool) -> nn.Sequential:
    norm = [nn.BatchNorm2d(channels)] if cfg.batch_norm else []
    return nn.Sequential(layer, *norm, create_act(cfg.activation), *([MaxPool2d(2)] * pool))


class Colorizer(Backbone):
    """Six stages: `encoder.0-2` (strides 2, 4, 8) and `decoder.0-2` (strides 4, 2, 1)."""

    def __init__(self, cfg: ColorizerConfig, in_channels: int, image_size: tuple[int, int]):
        super().__init__()
        if min(image_size) < 8:
            raise CnnlabError(
                f"model.backbone colorizer halves the image three times; {image_size[0]}x"
                f"{image_size[1]} is too small (8x8 at least; the colorization assignment used "
                "32 and 64)"
            )
        nf, k = cfg.filters, cfg.kernel_size
        enc = [in_channels, nf, 2 * nf, 4 * nf]
        dec = [4 * nf, 2 * nf, nf, cfg.decoder_out or nf]
        bias = not cfg.batch_norm  # batch norm's shift makes a bias redundant
        conv = lambda i: nn.Conv2d(enc[i], enc[i + 1], k, padding=k // 2, bias=bias)  # noqa: E731
        up = lambda i: nn.ConvTranspose2d(dec[i], dec[i + 1], 2, stride=2, bias=bias)  # noqa: E731
        self.encoder = nn.ModuleList(_stage(conv(i), enc[i + 1], cfg, True) for i in range(3))
        self.decoder = nn.ModuleList(_stage(up(i), dec[i + 1], cfg, False) for i in range(3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_info = [
            *(FeatureInfo(f"encoder.{i}", enc[i + 1], 2 ** (i + 1)) for i in range(3)),
            *(FeatureInfo(f"decoder.{i}", dec[i + 1], 2 ** (2 - i)) for i in range(3)),
        ]
        self.num_features = 4 * nf  # an image-level head reads the pooled bottleneck
        if cfg.init == "kaiming":
            init_kaiming(self)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage maps of (H // stride, W // stride). A size that is not a multiple of 8 (28)
        is padded with zeros (the mean, once normalized) on the bottom and right, and every
        map is cropped back to its share of the real image."""
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            x = F.pad(x, (0, -w % 8, 0, -h % 8))
        maps = []
        for stage, info in zip([*self.encoder, *self.decoder], self.feature_info, strict=True):
            x = stage(x)
            maps.append(x[..., : h // info.stride, : w // info.stride])
        return maps

    def forward_pooled(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.pool(maps[2]).flatten(1)  # (B, 4NF): the bottleneck, averaged
