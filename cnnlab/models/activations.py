"""Mish with a fused, recomputing CPU kernel.

aten's Mish computes exp, log1p and tanh per element in the forward and again in the
backward; on CPU that made Mish the costliest op of seed 002's CNN (more than the
convolutions). With e = exp(x) and n = e·(e + 2):

    mish(x)  = x · n / (n + 2)                        (tanh(softplus(x)) = n / (n + 2))
    mish'(x) = n / (n + 2) + 4·x·e·(e + 1) / (n + 2)²

one exp for either direction; for x > 20 mish(x) = x and mish'(x) = 1 in fp32 (and the
clamp keeps n finite). Both directions are compiled by inductor into one vectorised loop
each (internal arithmetic in fp32 for bf16/fp16 tensors); the forward saves only its
input, the backward recomputes from it. Tensors are flattened to 1-D in memory order before
the call, so one compiled kernel serves every shape, batch size and memory format.

Anything the fast path does not cover runs aten's `F.mish`, with the same result
(`cnnlab/models/compiled.py` says when), and so do memory layouts that are not dense and
the double backward (create_graph=True).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.compiled import MIN_NUMEL, Kernels, usable

__all__ = ["MIN_NUMEL", "Mish", "mish"]

_LIMIT = 20.0  # above it mish(x) == x and mish'(x) == 1 in fp32


def _mish_forward(x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    e = torch.exp(xf.clamp(max=_LIMIT))
    n = e * (e + 2)
    return torch.where(xf > _LIMIT, xf, xf * n / (n + 2)).to(x.dtype)


def _mish_backward(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    e = torch.exp(xf.clamp(max=_LIMIT))
    n = e * (e + 2)
    d = n + 2
    slope = n / d + 4 * xf * e * (e + 1) / (d * d)
    slope = torch.where(xf > _LIMIT, torch.ones_like(xf), slope)
    return (grad.float() * slope).to(grad.dtype)


KERNELS = Kernels("Mish", _mish_forward, _mish_backward)


def _flat(t: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]] | None:
    """t as a 1-D view in memory order, and the map back to t's shape and strides."""
    if t.is_contiguous():
        return t.view(-1), lambda f: f.view(t.shape)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = t.shape
        return t.permute(0, 2, 3, 1).reshape(-1), lambda f: f.view(n, h, w, c).permute(0, 3, 1, 2)
    return None


def _run(direction: int, *tensors: torch.Tensor) -> torch.Tensor | None:
    """The compiled forward (0) or backward (1) on the flattened tensors (same layout),
    reshaped back; None where it does not apply or failed."""
    flats = [_flat(t) for t in tensors]
    if any(f is None for f in flats) or len({t.stride() for t in tensors}) > 1:
        return None
    out = KERNELS.run(direction, *(f[0].detach() for f in flats))  # one variant per dtype
    return None if out is None else flats[0][1](out)


class _MishFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        out = _run(0, x)
        return F.mish(x) if out is None else out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return _mish_backward(x, grad)
        out = _run(1, x, grad.contiguous(memory_format=_format(x)))
        return torch.ops.aten.mish_backward(grad, x) if out is None else out


def _format(t: torch.Tensor) -> torch.memory_format:
    if (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


def _fast(x: torch.Tensor) -> bool:
    return usable(x, KERNELS)


def mish(x: torch.Tensor) -> torch.Tensor:
    """`F.mish`, fused and recomputing on CPU (see the module docstring)."""
    return _MishFunction.apply(x) if _fast(x) else F.mish(x)


class Mish(nn.Mish):
    """nn.Mish (isinstance holds: guided backprop and hooks treat it as one), fused on CPU."""

    def __init__(self) -> None:
        super().__init__(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mish(x)
