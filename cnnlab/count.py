"""What a network costs: per layer its output shape, parameters and multiply-accumulates.

MACs are measured two ways that share nothing: from each module's own shapes (a conv's
output elements × its input channels per group × its kernel area; a linear layer's output
× its inputs) and with torch's FLOP counter (which counts the ops that really ran; a MAC is
2 FLOPs). A transposed conv's MACs are its INPUT elements × its output channels per group ×
its kernel area: every input pixel meets every weight once, whatever the output's size.

The closed forms that two of the reproduced reports (the "seeds") derived by hand live in
`cnnlab.closed_forms`, one module per network they describe, and are evaluated beside this
measurement as `Term`s; this module only measures, so a formula can never leak into what is
measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.build import model_for_shapes
from cnnlab.errors import CnnlabError

# ----------------------------------------------------------------------- measured


@dataclass
class LayerCost:
    """One leaf module, for one image."""

    name: str  # e.g. backbone.blocks.0.0
    kind: str  # Conv2d, Linear, BatchNorm2d, ...
    shape: tuple[int, ...]  # output shape without the batch dimension
    params: int
    macs: int  # from the module's shapes
    counted_macs: int  # from torch's FLOP counter (FLOPs / 2)


def _shape_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """MACs of one image from the module's own definition (0 for layers without products)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out[0].numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return inp[0].numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out[0].numel() * module.in_features
    return 0


def measure(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerCost]:
    """Every leaf module that runs on one (C, H, W) image, in the order it runs."""
    x = torch.zeros(1, *input_shape)
    leaves = {n: m for n, m in model.named_modules() if n and not list(m.children())}
    seen: dict[str, tuple[tuple[int, ...], int]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen[name] = (tuple(out.shape[1:]), _shape_macs(module, args[0], out))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in leaves.items()]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    flops = counter.get_flop_counts()
    root = type(model).__name__
    return [
        LayerCost(
            name=name,
            kind=type(leaves[name]).__name__,
            shape=shape,
            params=sum(p.numel() for p in leaves[name].parameters(recurse=False)),
            macs=macs,
            counted_macs=sum(flops.get(f"{root}.{name}", {}).values()) // 2,
        )
        for name, (shape, macs) in seen.items()
    ]


# ------------------------------------------------------------------- beside a formula


@dataclass
class Term:
    """One term of a seed's hand-derived closed forms (`cnnlab.closed_forms`), evaluated at the
    model's sizes, beside what the model really has."""

    layer: str  # e.g. "conv 3", "dense", "deconv 1", "total"
    what: str  # seed 002: parameters | computations; seed 001: weights | outputs | MACs
    formula: float
    measured: int
    why: str = ""  # where they differ: the reason, as far as it is known
    expr: str = ""  # the formula as the seed wrote it, e.g. "NF·NIC·k²"

    @property
    def agrees(self) -> bool:
        return abs(self.formula - self.measured) < 0.5


# ------------------------------------------------------------------------- a recipe


def parse_input(text: str) -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise CnnlabError(f"--input {text!r}: give channels x height x width, e.g. 3x224x224")
    return int(parts[0]), int(parts[1]), int(parts[2])


def count_recipe(recipe, input_shape: tuple[int, int, int] | None = None):
    """(the recipe's real model, its input shape, per-layer costs). Without `input_shape`
    the source's image shape is used. A source that declares its shapes and classes
    (CIFAR-10, Fashion-MNIST) needs no files; any other is described from headers only."""
    model, shape = model_for_shapes(recipe, input_shape)
    return model, shape, measure(model, shape)
