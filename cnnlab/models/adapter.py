"""Any torch module that turns images into feature maps, as a cnnlab backbone.

Why: a user's network is usually a plain `nn.Module` whose forward maps a batch of images
(B, C, H, W) to a feature map (B, C', H', W'), or to a list of maps, one per stage. The
heads, the training loop, the figures and `cnnlab count` need a `Backbone`
(cnnlab/models/base.py). `ModuleBackbone` gives the module one without the user writing it:

- its recipe section is made from the constructor's keyword parameters that have defaults
  (`module_config`), so `model: {backbone: mynet, width: 32}` is checked like any section,
  and a constructor parameter `in_channels` (or `image_size`) gets the data's;
- its stages are measured, not declared: one forward pass on a zero image of the data's
  size, at build time, gives every map's channels and stride;
- each stage's map passes through an `nn.Identity` of its own (`stages.<i>`): the module the
  figures hook by `FeatureInfo.name`, whatever the wrapped module's layout;
- the wrapped module is `self.net`, so its weights are saved as `backbone.net.<its own
  names>` and a checkpoint loads back into the same class.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import TypeAdapter, create_model
from torch import nn

from cnnlab.config import Section
from cnnlab.errors import CnnlabError
from cnnlab.models.base import Backbone, FeatureInfo

# Constructor parameters cnnlab fills from the data, never from the recipe.
FROM_DATA = ("in_channels", "image_size")


# ------------------------------------------------------------------------ the section


def _parameters(cls: type[nn.Module]) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # a constructor without a readable signature (C code)
        return []


def _hints(cls: type[nn.Module]) -> dict[str, Any]:
    """The constructor's annotations resolved to types; {} where they cannot be (a name only
    a type checker sees): the defaults' types stand in then."""
    try:
        return typing.get_type_hints(cls.__init__, include_extras=True)
    except Exception:
        return {}


def settable(cls: type[nn.Module]) -> list[inspect.Parameter]:
    """The constructor parameters a recipe sets: keyword ones with a default, not FROM_DATA
    and not private (`_name` keeps its default). One without a default cannot be left out
    of a recipe, so it is refused with its fix."""
    params = []
    for p in _parameters(cls):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in FROM_DATA:
            continue
        if p.name.startswith("_") and p.default is not p.empty:
            continue
        if p.default is p.empty or p.kind is p.POSITIONAL_ONLY:
            raise CnnlabError(
                f"{cls.__name__}({p.name}): a registered module is built from its recipe "
                f"section by keyword, so every parameter but {' and '.join(FROM_DATA)} needs a "
                f"keyword default (e.g. {p.name}=...); or register it with config=<a Section>"
            )
        params.append(p)
    return params


def _holds_data(value: Any) -> bool:
    """Whether a default is data a recipe can hold: None, a number, a string, or lists and
    dicts of them (not a class such as `act_layer=nn.ReLU`, nor a module)."""
    if value is None or type(value) in (bool, int, float, str):
        return True
    if isinstance(value, list | tuple):
        return all(map(_holds_data, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and _holds_data(v) for k, v in value.items())
    return False


def _field_type(hint: Any, default: Any) -> Any | None:
    """The type a field checks: the annotation if pydantic can check it, else the default's
    type; None when a recipe cannot set the parameter (its default is code, not data, or its
    annotation names a type no YAML value can be, such as `nn.Module | None`)."""
    if not _holds_data(default):
        return None
    if hint is None:
        return type(default) if default is not None else Any
    try:
        TypeAdapter(hint)
    except Exception:  # a class pydantic has no schema for
        return None
    return hint


def module_config(name: str, cls: type[nn.Module]) -> type[Section]:
    """The `model` section of a plain module: `backbone: Literal[name]`, then one field per
    settable constructor parameter, typed by its annotation (else by its default's type),
    defaulting to its default. Unknown keys are errors, as in every section. A parameter
    whose default is code (`act_layer=nn.ReLU`) is no field: it keeps its default."""
    hints = _hints(cls)
    fields: dict[str, Any] = {}
    for p in settable(cls):
        if p.name == "backbone":
            raise CnnlabError(
                f"{cls.__name__}(backbone=...): `backbone` is the recipe's tag that picks the "
                "module; rename the parameter"
            )
        kind = _field_type(hints.get(p.name), p.default)
        if kind is not None:
            fields[p.name] = (kind, p.default)
    doc = f"The `model` section of a recipe with `backbone: {name}` ({cls.__name__})."
    return create_model(
        f"{cls.__name__}Config",
        __base__=Section,
        __module__=cls.__module__,
        __doc__=doc,
        backbone=(Literal[name], name),
        **fields,
    )


def check_config_fits(cls: type[nn.Module], config: type[Section]) -> None:
    """A section given for a plain module sets constructor parameters: each of its fields
    must be one (unless the constructor takes **kwargs)."""
    params = {p.name: p for p in _parameters(cls)}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    extra = [f for f in config.model_fields if f != "backbone" and f not in params]
    if extra:
        raise CnnlabError(
            f"{config.__name__} has fields {', '.join(extra)} that {cls.__name__}'s constructor "
            f"does not take; its parameters: {', '.join(params) or 'none'}"
        )


@dataclass(frozen=True)
class ModuleBuilder:
    """The `module` of a registered plain module's BACKBONES entry: (cfg, in_channels,
    image_size) -> the module built from its section, wrapped as a Backbone."""

    net: type[nn.Module]

    def __call__(self, cfg: Section, in_channels: int, image_size: tuple[int, int]) -> Backbone:
        kwargs = {k: getattr(cfg, k) for k in type(cfg).model_fields if k != "backbone"}
        params = {p.name for p in _parameters(self.net)}
        given = {"in_channels": in_channels, "image_size": tuple(image_size)}
        kwargs.update({k: v for k, v in given.items() if k in params})
        return ModuleBackbone(self.net(**kwargs), in_channels, image_size, cfg.backbone)


# ------------------------------------------------------------------------ the backbone


def as_maps(out: Any, what: str) -> list[torch.Tensor]:
    """A module's output as its list of stage maps, (B, C, H, W) each: one map, a list or
    tuple of maps, a dict of them (torchvision's feature extractors), or timm's
    `forward_intermediates` pair (final map, [stage maps])."""
    if isinstance(out, torch.Tensor):
        maps = [out]
    elif isinstance(out, dict):
        maps = list(out.values())
    elif (
        isinstance(out, tuple)
        and len(out) == 2
        and isinstance(out[0], torch.Tensor)
        and isinstance(out[1], list | tuple)
    ):
        maps = list(out[1])  # timm: the stages its feature_info lists
    elif isinstance(out, list | tuple):
        maps = list(out)
    else:
        maps = []
    if not maps or not all(isinstance(m, torch.Tensor) and m.dim() == 4 for m in maps):
        shapes = [tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__ for m in maps]
        raise CnnlabError(
            f"{what} returns {shapes or type(out).__name__}; a backbone returns a feature map "
            "(B, C, H, W) or a list of them (end it before its pooling and classifier)"
        )
    return maps


def declared_stages(net: nn.Module) -> list[tuple[int, int]] | None:
    """(channels, reduction) of each stage the module declares in a `feature_info` (timm's
    dicts or object, or cnnlab's FeatureInfo), or None when it declares none."""
    info = getattr(net, "feature_info", None)
    if info is None:
        return None
    if hasattr(info, "get_dicts"):  # timm's FeatureInfo object (features_only models)
        info = info.get_dicts()
    if isinstance(info, FeatureInfo):
        info = [info]
    stages = []
    for s in info:
        if isinstance(s, FeatureInfo):
            stages.append((s.channels, s.stride))
        elif isinstance(s, dict) and "num_chs" in s:
            stages.append((int(s["num_chs"]), int(s.get("reduction", 1))))
        else:
            raise CnnlabError(
                f"{type(net).__name__}.feature_info holds {s!r}; give one dict per stage with "
                "num_chs, reduction and module (as timm does) or cnnlab FeatureInfo"
            )
    return stages


class ModuleBackbone(Backbone):
    """A plain module as a backbone: its maps are the stages, pooled by a global average
    for image-level heads. Every stage the module returns is exposed, so a per-pixel head
    can read any of them (`tasks.<name>.stage`)."""

    def __init__(self, net: nn.Module, in_channels: int, image_size: tuple[int, int], name: str):
        super().__init__()
        self.net = net
        self.title = f"model.backbone {name} ({type(net).__name__})"
        # A module with timm's interface gives its stages there; its forward gives logits.
        self.multi = callable(getattr(net, "forward_intermediates", None))
        maps = self._probe(in_channels, image_size)  # (1, C_i, H_i, W_i) per stage
        self.stages = nn.ModuleList(nn.Identity() for _ in maps)  # the figures' hook points
        self.feature_info = [
            FeatureInfo(f"stages.{i}", m.shape[1], max(1, round(image_size[0] / m.shape[-2])))
            for i, m in enumerate(maps)
        ]
        self.num_features = self.feature_info[-1].channels  # the pooled last map
        self._check_declared(declared_stages(net))

    @torch.no_grad()
    def _probe(self, in_channels: int, image_size: tuple[int, int]) -> list[torch.Tensor]:
        """The maps of one zero image, in eval mode so no BatchNorm statistic moves and no
        dropout draws a random number: building a model leaves its weights and RNG as they
        were, so a resumed run rebuilds exactly."""
        param = next(self.net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else None
        x = torch.zeros(1, in_channels, *image_size, device=device, dtype=dtype)
        was = self.net.training
        self.net.eval()
        try:
            out = self._run(x)
        except Exception as err:
            raise CnnlabError(
                f"{self.title} fails on a {in_channels}x{image_size[0]}x{image_size[1]} image "
                f"({type(err).__name__}: {str(err).splitlines()[0][:160]}); does it take this "
                "data's channels (give its constructor an in_channels parameter) and size?"
            ) from None
        finally:
            self.net.train(was)
        return as_maps(out, self.title)

    def _check_declared(self, declared: list[tuple[int, int]] | None) -> None:
        """A module's own feature_info must describe the maps it returns."""
        if declared is None:
            return
        found = [(s.channels, s.stride) for s in self.feature_info]
        if [c for c, _ in declared] != [c for c, _ in found]:
            raise CnnlabError(
                f"{self.title}: its feature_info declares stages of {[c for c, _ in declared]} "
                f"channels but its forward returns maps of {[c for c, _ in found]}; return one "
                "map per declared stage (a list), in order"
            )

    def _run(self, x: torch.Tensor) -> Any:
        return self.net.forward_intermediates(x) if self.multi else self.net(x)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = as_maps(self._run(x), self.title)
        return [tap(m) for tap, m in zip(self.stages, maps, strict=True)]  # (B, C_i, H_i, W_i)

    def forward_pooled(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return maps[-1].mean(dim=(2, 3))  # (B, num_features): global average pool + flatten
