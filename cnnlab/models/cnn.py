"""The configurable plain CNN: blocks of Conv-(BN)-Act ×n, then pooling and dropout.

Seeds 000-003 use the usual order (Conv → BN → Act, pooled at the end of the block); seed 004's
CNN pools first and normalizes last (Conv → MaxPool → ReLU → BN), which `order` selects.

`stem: strided` replaces the first block's convolution and max-pool with one convolution of
the same window, strided by the pool (3×3 then 2×2 pooling: 4×4 with stride 2). On a
28-pixel image the first block's full-size maps (32 of 28×28, written, pooled, zero-filled
and read again in the backward pass) cost a CPU step 1.6-2.8 ms of 15 for 2 % of its FLOPs;
the strided convolution never makes them. It reads the same pixels but is not max-pooling's
shift-tolerant choice among them (docs/benchmarks.md: faster epochs, a little less accuracy).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from cnnlab.config import Activation, Section
from cnnlab.errors import CnnlabError
from cnnlab.models.base import Backbone, FeatureInfo
from cnnlab.models.dropout import Dropout
from cnnlab.models.flatten import Flatten
from cnnlab.models.layers import create_act, init_kaiming
from cnnlab.models.pool import MaxPool2d


class CNNConfig(Section):
    """The `model` section of a recipe with `backbone: cnn`."""

    backbone: Literal["cnn"] = "cnn"
    blocks: int = Field(3, ge=1, le=8)  # Conv-(BN)-Act-Pool blocks
    filters: list[PositiveInt] | None = None  # per block; overrides base_filters + filter_org
    base_filters: int = Field(32, ge=1)  # filters of the first block
    filter_org: Literal["same", "double", "half"] = "double"  # how filters change per block
    kernel_size: int = Field(3, ge=1, le=11)  # side of every conv's kernel, odd ("same" padding)
    convs_per_block: int = Field(1, ge=1, le=4)  # convolutions before each pool
    activation: Activation = "relu"  # after every conv
    batch_norm: bool = True  # BatchNorm after every conv
    pool: int = Field(2, ge=1, le=4)  # max-pool kernel and stride; 1 = no pooling
    order: Literal["conv_bn_act", "conv_pool_act_bn"] = "conv_bn_act"  # see the module doc
    stem: Literal["pooled", "strided"] = "pooled"  # the first block's downsampling; see above
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # channel dropout after each block
    feature_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the features the heads receive
    global_pool: bool = False  # average-pool features to 1x1 before the heads; else flatten
    # Dense layers (Linear → Act) shared by every head, after flattening: seed 003's network
    # ends in Linear(64·28·28 → 256) + ReLU that both of its heads read. [] = none.
    dense: list[PositiveInt] = Field(default_factory=list)
    init: Literal["default", "kaiming"] = "kaiming"  # kaiming: He normal weights; default: torch's

    @model_validator(mode="after")
    def _filters_match_blocks(self) -> CNNConfig:
        if self.filters is not None and len(self.filters) != self.blocks:
            raise ValueError(
                f"filters has {len(self.filters)} entries but blocks = {self.blocks}; "
                "give one entry per block or drop filters and use base_filters + filter_org"
            )
        if self.stem == "strided" and (self.pool == 1 or self.convs_per_block > 1):
            raise ValueError(
                "stem: strided folds the first block's one convolution into its pooling; "
                "it needs pool > 1 and convs_per_block: 1 (or set stem: pooled)"
            )
        if self.order == "conv_pool_act_bn" and self.convs_per_block > 1:
            raise ValueError(
                "order conv_pool_act_bn has one conv per block (the CIFAR-10 CNN of the ResNet "
                "study); set convs_per_block: 1 or order: conv_bn_act"
            )
        return self

    def block_filters(self) -> list[int]:
        """Filters per block, from the explicit list or from base + organisation."""
        if self.filters is not None:
            return list(self.filters)
        factor = {"same": 1.0, "double": 2.0, "half": 0.5}[self.filter_org]
        return [max(1, round(self.base_filters * factor**i)) for i in range(self.blocks)]


def _conv(cin: int, cout: int, cfg: CNNConfig, strided: bool, bias: bool) -> nn.Conv2d:
    """A k×k same-padded conv; `strided`: that conv and the p×p pool after it as one conv of
    stride p, which reads the same (k + p - 1)² window."""
    k, p = cfg.kernel_size, cfg.pool
    if strided:
        return nn.Conv2d(cin, cout, k + p - 1, stride=p, padding=k // 2, bias=bias)
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class ConvBlock(nn.Sequential):
    """`convs` × (Conv k×k, same padding → BN → Act), then MaxPool and Dropout2d; or, with
    order conv_pool_act_bn, Conv → MaxPool → Act → BN (one conv per block). `strided`: the
    conv and pool as one strided conv, the rest in the order's sequence."""

    def __init__(self, cin: int, cout: int, cfg: CNNConfig, strided: bool = False):
        pool = [MaxPool2d(cfg.pool)] if cfg.pool > 1 and not strided else []
        layers: list[nn.Module] = []
        if cfg.order == "conv_pool_act_bn":
            # The bias comes before the activation here, so batch norm does not cancel it.
            conv = _conv(cin, cout, cfg, strided, bias=True)
            norm = [nn.BatchNorm2d(cout)] if cfg.batch_norm else []
            layers += [conv, *pool, create_act(cfg.activation), *norm]
        else:
            for i in range(cfg.convs_per_block):  # one when strided (CNNConfig checks)
                c_in = cin if i == 0 else cout
                conv = _conv(c_in, cout, cfg, strided and i == 0, bias=not cfg.batch_norm)
                layers += [conv, *([nn.BatchNorm2d(cout)] if cfg.batch_norm else [])]
                layers.append(create_act(cfg.activation))
            layers += pool
        if cfg.dropout > 0:
            layers.append(nn.Dropout2d(cfg.dropout))
        super().__init__(*layers)


class CNN(Backbone):
    """Plain stacked blocks; a stage is one ConvBlock, so `blocks.i` gives stage i's map."""

    def __init__(self, cfg: CNNConfig, in_channels: int, image_size: tuple[int, int]):
        super().__init__()
        filters = cfg.block_filters()
        chans = [in_channels, *filters]
        self.blocks = nn.ModuleList(
            ConvBlock(chans[i], chans[i + 1], cfg, strided=i == 0 and cfg.stem == "strided")
            for i in range(cfg.blocks)
        )
        self.pool = nn.AdaptiveAvgPool2d(1) if cfg.global_pool else nn.Identity()
        self.flatten = Flatten()
        self.drop = Dropout(cfg.feature_dropout) if cfg.feature_dropout else nn.Identity()
        h, w = image_size
        for _ in range(cfg.blocks):
            h, w = h // cfg.pool, w // cfg.pool
        if min(h, w) < 1:
            raise CnnlabError(
                f"model.blocks: {cfg.blocks} blocks with pool {cfg.pool} shrink a "
                f"{image_size[0]}x{image_size[1]} image to nothing; use fewer blocks or pool: 1"
            )
        self.feature_info = [
            FeatureInfo(f"blocks.{i}", filters[i], cfg.pool ** (i + 1)) for i in range(cfg.blocks)
        ]
        self.feature_shape = (filters[-1], h, w)  # output of forward_features
        flat = filters[-1] * (1 if cfg.global_pool else h * w)
        widths = [flat, *cfg.dense]
        self.dense = nn.Sequential(
            *(
                layer
                for i in range(len(cfg.dense))
                for layer in (nn.Linear(widths[i], widths[i + 1]), create_act(cfg.activation))
            )
        )
        self.num_features = widths[-1]  # input of the heads
        if cfg.init == "kaiming":
            init_kaiming(self)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for block in self.blocks:
            x = block(x)  # (B, filters[i], H // pool**(i+1), W // pool**(i+1))
            maps.append(x)
        return maps

    def forward_pooled(self, maps: list[torch.Tensor]) -> torch.Tensor:
        flat = self.drop(self.flatten(self.pool(maps[-1])))
        return self.dense(flat)  # (B, num_features)
