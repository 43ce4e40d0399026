"""Backbones by name, and the multi-task model that joins a backbone with its heads.

A new backbone is one file (its config section and its `Backbone` subclass) and one entry in
BACKBONES, or, outside cnnlab, `@cnnlab.register_backbone` (cnnlab/components.py) on any
module that maps images to feature maps; the recipe's `model.backbone` picks it. Heads attach to its
pooled features, or, when the head names a `stage` (a per-pixel head), to that stage's map;
each task builds its own head for the backbone (`cnnlab/tasks/`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, NamedTuple, Protocol, Union

import torch
from pydantic import Discriminator, Tag
from torch import nn

from cnnlab.config import Section
from cnnlab.models.base import Backbone, FeatureInfo
from cnnlab.models.cnn import CNN, CNNConfig
from cnnlab.models.colorizer import Colorizer, ColorizerConfig
from cnnlab.models.resnet import PlainNetConfig, ResNet, ResNetConfig
from cnnlab.models.timm_backbone import TimmBackbone, TimmConfig


class HeadMaker(Protocol):
    """What the model needs of a task (`cnnlab.tasks.Task`): a head for the backbone. A head
    with an integer `stage` attribute reads that stage's map, any other the pooled features."""

    def head(self, backbone: Backbone) -> nn.Module: ...


class BackboneEntry(NamedTuple):
    # module(cfg, in_channels, image_size) builds it: a Backbone subclass, or for a registered
    # plain module the ModuleBuilder that wraps it (cnnlab/models/adapter.py)
    module: Callable[[Any, int, tuple[int, int]], Backbone]
    config: type[Section]  # its `model` section, with `backbone: Literal["<name>"]`
    doc: str  # one line for `cnnlab backbones`


BACKBONES: dict[str, BackboneEntry] = {
    "cnn": BackboneEntry(CNN, CNNConfig, "configurable Conv-BN-Act-Pool blocks"),
    "resnet": BackboneEntry(
        ResNet, ResNetConfig, "CIFAR ResNet(n), depth 6n+2, option-A shortcuts (He et al. 2015)"
    ),
    "plainnet": BackboneEntry(
        ResNet, PlainNetConfig, "ResNet(n) without shortcuts: the degradation baseline"
    ),
    "colorizer": BackboneEntry(
        Colorizer,
        ColorizerConfig,
        "encoder-decoder: 3 conv-pool blocks, 3 transposed convs back up",
    ),
    "timm": BackboneEntry(
        TimmBackbone, TimmConfig, "any timm model by model.name, ImageNet-pretrained"
    ),
}


def tagged_by_backbone(configs: list[type[Section]]) -> Any:
    """The configs as one type told apart by their `backbone` key; a `model` section without
    one is the first config's, as a recipe that leaves `backbone` out is a cnn today.
    Pydantic refuses a tagged union of one member, so a single config stands alone: its
    `backbone: Literal[...]` then names the one choice in the error."""
    if len(configs) == 1:
        return configs[0]
    tags = [c.model_fields["backbone"].default for c in configs]

    def pick(value: Any) -> str | None:
        if isinstance(value, dict):
            tag = value.get("backbone", tags[0])
            # `backbone: resnet50` is short for `backbone: timm, name: resnet50`
            return tag if tag in tags or "timm" not in tags else "timm"
        return getattr(value, "backbone", None)

    members = tuple(Annotated[c, Tag(t)] for c, t in zip(configs, tags, strict=True))
    return Annotated[Union[members], Discriminator(pick)]  # noqa: UP007 (built at run time)


def model_config() -> Any:
    """The recipe's `model` section as BACKBONES holds it now: one config per backbone, told
    apart by `backbone` (cnnlab/recipe.py rebuilds the recipe with it after a registration)."""
    return tagged_by_backbone([b.config for b in BACKBONES.values()])


ModelConfig = model_config()  # the built-in backbones' section


def owns_input(cfg: Section) -> bool:
    """Whether the backbone normalizes its own input (the data pipeline then does not)."""
    return getattr(type(cfg), "owns_input", False)


def for_checkpoint(cfg: Section) -> Section:
    """The model section for a network whose weights come from a checkpoint next: nothing
    pretrained is fetched (eval and resume work offline, whatever the run started from)."""
    if getattr(cfg, "pretrained", False) or getattr(cfg, "weights", None):
        return cfg.model_copy(update={"pretrained": False, "weights": None})
    return cfg


def list_backbones() -> dict[str, str]:
    return {name: b.doc for name, b in BACKBONES.items()}


class MultiTaskModel(nn.Module):
    """A shared backbone and one head per task; forward returns {task: raw output}.

    The backbone runs once per batch: image-level heads read its pooled features, per-pixel
    heads the stage map their `stage` names."""

    def __init__(self, backbone: Backbone, heads: dict[str, nn.Module]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.stages = {name: getattr(head, "stage", None) for name, head in heads.items()}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.backbone.forward_intermediates(x)
        pooled = None
        if None in self.stages.values():
            pooled = self.backbone.forward_pooled(maps)  # (B, F)
        return {
            name: head(pooled if self.stages[name] is None else maps[self.stages[name]])
            for name, head in self.heads.items()
        }

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decoded predictions: class indices, regression values in target units."""
        return {name: self.heads[name].decode(out) for name, out in self.forward(x).items()}


def create_backbone(cfg: Section, in_channels: int, image_size: tuple[int, int]) -> Backbone:
    """The backbone the `model` section names by its `backbone` key."""
    return BACKBONES[cfg.backbone].module(cfg, in_channels, image_size)


def create_model(
    cfg: Section,
    in_channels: int,
    image_size: tuple[int, int],
    tasks: dict[str, HeadMaker],
    channels_last: bool = True,
) -> MultiTaskModel:
    """The backbone `cfg` names with one head per task (each task knows its target by now)."""
    backbone = create_backbone(cfg, in_channels, image_size)
    heads = {name: task.head(backbone) for name, task in tasks.items()}
    model = MultiTaskModel(backbone, heads)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneEntry",
    "FeatureInfo",
    "ModelConfig",
    "MultiTaskModel",
    "create_backbone",
    "create_model",
    "for_checkpoint",
    "list_backbones",
    "model_config",
    "owns_input",
]
