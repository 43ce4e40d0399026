"""Flatten a channels-last map for the dense layers, with its gradient handed back channels-last.

The heads read a map's values in (C, H, W) order, so a channels-last map is copied into that
order; the gradient of that copy arrives back in (C, H, W) layout. Batch norm's backward,
which comes next, then mixes a channels-last input with a gradient that is not, and its CPU
kernel takes a slow path for that: 0.25 ms of a 7-9 ms `fashion_fast` step of 64 (AMD EPYC,
bf16) for a (64, 128, 3, 3) map, which in one layout takes 0.035. Copying the gradient to the
input's layout first costs about 0.04 ms, the autograd function around it included; the
features, their order and so every checkpoint stay as they were.
"""

from __future__ import annotations

import torch
from torch import nn


class _FlattenKeepLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.reshape(x.shape[0], -1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.view(ctx.shape).contiguous(memory_format=torch.channels_last)


class Flatten(nn.Flatten):
    """nn.Flatten (from dim 1) whose gradient keeps a channels-last input's layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        whole = self.start_dim == 1 and self.end_dim == -1
        if whole and x.requires_grad and _channels_last(x):
            return _FlattenKeepLayout.apply(x)
        return super().forward(x)


def _channels_last(x: torch.Tensor) -> bool:
    """A 4-D channels-last map that is not also (C, H, W)-contiguous (a 1×1 map is both: a
    view then). Other ranks are never channels-last."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
