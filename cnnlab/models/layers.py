"""Small layer factories, resolved by name.

Every call returns a fresh, non-inplace module: hook-based analysis (feature maps, guided
backprop) needs one module per use and activations that do not overwrite their input.
"""

from __future__ import annotations

from torch import nn

from cnnlab.errors import did_you_mean
from cnnlab.models.activations import Mish

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": Mish,  # nn.Mish subclass, fused on CPU
    "leaky_relu": nn.LeakyReLU,
}


def create_act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        close = did_you_mean(name, ACTIVATIONS)
        raise ValueError(
            f"activation {name!r} is unknown{close}; choose one of: {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]()


def init_kaiming(module: nn.Module) -> None:
    """He-normal convolutions (fan_out), identity batch norm: the usual CNN start."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
