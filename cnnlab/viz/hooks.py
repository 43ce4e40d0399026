"""Forward hooks that are always removed, and how analyses find layers in any backbone.

Hook-based analysis breaks on three things: in-place activations (the hooked output is
overwritten by the next op), one activation module reused in several places (its hook
fires more than once per forward), and functional activations (`F.relu`: no module, no
hook). cnnlab's layer factory avoids all three; `analysis_mode` additionally turns off any
`inplace` flag for the duration of an analysis, and `check_single_use` names a reused
module instead of returning silently wrong numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import ACTIVATIONS

Hook = Callable[[str, nn.Module, torch.Tensor], None]  # (layer name, module, output)

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    *ACTIVATIONS.values(),
    nn.Mish,  # ACTIVATIONS holds a subclass of it
    nn.ReLU6,
    nn.ELU,
    nn.PReLU,
)


@contextmanager
def forward_hooks(modules: dict[str, nn.Module], fn: Hook) -> Iterator[Counter]:
    """Call `fn(name, module, output)` after each module's forward; yields call counts.

    The hooks are removed in `finally`, so an exception inside the block (or inside `fn`)
    leaves the model exactly as it was.
    """
    calls: Counter = Counter()
    handles = []

    def make(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            calls[name] += 1
            fn(name, module, output)

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make(name)))
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def analysis_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with every `inplace` flag off; both restored afterwards."""
    was_training = model.training
    inplace = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    try:
        for m in inplace:
            m.inplace = False
        model.eval()
        yield model
    finally:
        for m in inplace:
            m.inplace = True
        model.train(was_training)


def check_single_use(reused: dict[str, int]) -> None:
    """A module that ran more than once per forward (`reused`: name -> times) is shared
    between places, and its hook cannot tell them apart: say which."""
    for name, times in reused.items():
        raise CnnlabError(
            f"module {name!r} runs {times} times per forward (one module reused in several "
            "places); hook-based figures need one module per use"
        )


# ---------------------------------------------------------------- finding layers


def backbone_of(model: nn.Module) -> nn.Module:
    return getattr(model, "backbone", model)


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every Conv2d of the backbone in forward-definition order, by qualified name."""
    return {n: m for n, m in backbone_of(model).named_modules() if isinstance(m, nn.Conv2d)}


def _convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    convs = list(conv_layers(model).items())
    if not convs:
        raise CnnlabError(f"{type(model).__name__} has no Conv2d layer")
    return convs


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    return _convs(model)[0]


def last_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    return _convs(model)[-1]


def feature_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The stages whose outputs are "feature maps": the modules the backbone's
    `feature_info` names (cnnlab/models/base.py), labelled block 1, block 2, ..."""
    backbone = backbone_of(model)
    stages = getattr(backbone, "feature_info", None)
    if not stages:
        raise CnnlabError(f"{type(backbone).__name__} has no feature_info: no stages to show")
    return {f"block {i + 1}": backbone.get_submodule(s.name) for i, s in enumerate(stages)}


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Activation modules (ReLU, GELU, ...) anywhere in the model, by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ACTIVATION_TYPES)}


def activation_layers(model: nn.Module) -> dict[str, nn.Module]:
    """`activation_modules`, of which there must be one."""
    acts = activation_modules(model)
    if not acts:
        raise CnnlabError(
            f"{type(model).__name__} has no activation modules (functional activations such "
            "as F.relu cannot be hooked); build activations with cnnlab.models.layers.create_act"
        )
    return acts


def features_of(model: nn.Module, x: torch.Tensor) -> None:
    """Run only as far as the backbone's features when it can (skips the heads)."""
    if hasattr(model, "forward_features"):
        model.forward_features(x)
    else:
        model(x)
