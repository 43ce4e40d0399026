"""Per-pixel classification: a class for every pixel (seed 001's colour classes, or any
per-pixel labels a source provides), read from one spatial stage of the backbone.

The head is 1×1 convolutions on the stage's map (seed 001's classifier is one, NC → NC),
upsampled bilinearly to the input's size when the stage is coarser. Metrics count pixels:
accuracy over all of them, and the mean over classes of the intersection over union, which a
model that paints everything in the commonest colour cannot fake.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import create_act
from cnnlab.tasks.base import NO_CLASS, TargetInfo, TargetSpec, TaskSection
from cnnlab.tasks.classification import Classification, labelled_cross_entropy

if TYPE_CHECKING:
    from cnnlab.config import HeadConfig
    from cnnlab.models.base import Backbone


class PixelClassificationConfig(TaskSection):
    """A task that names one class per pixel (a mask, or colorization's palette colours)."""

    type: Literal["pixel_classification"] = "pixel_classification"
    loss: Literal["cross_entropy"] = "cross_entropy"  # per pixel; unlabelled pixels left out
    stage: int = -1  # the backbone stage the head reads (`cnnlab backbones`); -1: the last
    # Each class's weight in the loss: none (all 1), balanced (the inverse of its share of the
    # training pixels, scaled to mean 1: rare colours count as much as the sky), or one per class.
    class_weights: Literal["none", "balanced"] | list[float] = "none"


class PixelHead(nn.Module):
    """(1×1 conv → act) per hidden size, then 1×1 conv to the classes; logits (B, K, H, W) at
    the input's size. `stage` tells the model which map to hand it."""

    def __init__(self, stage: int, channels: int, stride: int, classes: int, cfg: HeadConfig):
        super().__init__()
        layers: list[nn.Module] = []
        for width in cfg.hidden:
            layers += [nn.Conv2d(channels, width, 1), create_act(cfg.activation)]
            layers += [nn.Dropout2d(cfg.dropout)] if cfg.dropout > 0 else []
            channels = width
        self.classify = nn.Sequential(*layers, nn.Conv2d(channels, classes, 1))
        self.stage, self.stride = stage, stride
        self.register_buffer("class_weight", torch.ones(classes))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        out = self.classify(fmap)
        if self.stride > 1:
            out = F.interpolate(out, scale_factor=self.stride, mode="bilinear")
        return out

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        return out.argmax(dim=1)  # (B, H, W)


class PixelClassification(Classification):
    """A classification of every pixel: the class's per-step accuracy, its metrics by name
    and its class weights (counted over the training pixels); its own head, loss and figures."""

    config = PixelClassificationConfig
    metrics = ("loss", "accuracy", "miou")
    maximize = frozenset({"accuracy", "miou"})
    headline = ("accuracy", "miou")
    figures = ("pixels", "reliability")
    legend = "the share of labelled pixels predicted right (wrong: under half)"
    thresholds = False  # a class per pixel: no threshold per image
    measures: ClassVar[dict[str, tuple[str, str]]] = {
        "accuracy": ("MulticlassAccuracy", "micro"),
        "miou": ("MulticlassJaccardIndex", "macro"),
    }
    metric_options: ClassVar[dict] = {"ignore_index": NO_CLASS}

    def fit(self, spec: TargetSpec, values: Callable[[], torch.Tensor] | None = None) -> None:
        if not (spec.classes and spec.per_pixel):
            raise CnnlabError(
                f"tasks.{self.name}: target {self.target!r} is not a class per pixel; a per-pixel "
                "classification needs a mask (a table's kind: mask, or data.colorize's `colour`)"
            )
        self.info = TargetInfo(classes=list(spec.classes))
        self.weights = self.class_weights(values)  # Classification.class_weights

    def head(self, backbone: Backbone) -> nn.Module:
        stages = backbone.feature_info
        if not -len(stages) <= self.cfg.stage < len(stages):
            raise CnnlabError(
                f"tasks.{self.name}.stage {self.cfg.stage}: the backbone has {len(stages)} "
                f"stages ({', '.join(s.name for s in stages)}); choose 0 to {len(stages) - 1}"
            )
        index = self.cfg.stage % len(stages)
        stage = stages[index]
        head = PixelHead(index, stage.channels, stage.stride, self.num_classes, self.cfg.head)
        return self.carry_weights(head)

    def loss(self, head: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return labelled_cross_entropy(out, target, head.class_weight)

    def caption(
        self, truth: torch.Tensor, pred: torch.Tensor, short: Callable[[str], str] = str
    ) -> tuple[str, bool]:
        labelled = truth != NO_CLASS
        if not labelled.any():  # a blank mask cell: nothing to be right or wrong about
            return "no labelled pixel", False
        right = ((truth == pred) & labelled).sum().item() / labelled.sum().item()
        return f"{right:.0%} of pixels right", right < 0.5
