"""The MLP that task heads are made of, on top of the shared backbone features."""

from __future__ import annotations

from torch import nn

from cnnlab.config import HeadConfig
from cnnlab.models.dropout import Dropout
from cnnlab.models.layers import create_act


class MLPHead(nn.Sequential):
    """(Linear → Act → Dropout) per hidden size, then Linear to `out_dim`."""

    def __init__(self, in_dim: int, out_dim: int, cfg: HeadConfig):
        layers: list[nn.Module] = []
        for width in cfg.hidden:
            layers += [
                nn.Linear(in_dim, width),
                create_act(cfg.activation),
                Dropout(cfg.dropout),
            ]
            in_dim = width
        if not cfg.hidden and cfg.dropout > 0:
            layers.append(Dropout(cfg.dropout))
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)
