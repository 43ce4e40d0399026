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

Where the compiled kernels are off (a short run, one pass over a split, the figures and
reports, a machine without a C++ compiler), the same formulas run uncompiled, a chunk of
2^18 values at a time and in place, so that their six to eleven passes stay in the core's
cache (aten's kernel makes one pass, but of three transcendental functions). Forward +
backward on seed 002's first map at 224 px (benchmarks/activations.py): 2.2-2.4x aten's
speed without AVX-512, 1.4-1.5x with; the compiled kernels, 5-7x. Anything neither path
covers runs aten's `F.mish`, with the same result (`cnnlab/models/compiled.py` says when),
and so do memory layouts that are not dense and the double backward (create_graph=True).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.compiled import MIN_NUMEL, Kernels, allowed, eligible

__all__ = ["MIN_NUMEL", "Mish", "mish"]

_LIMIT = 20.0  # above it mish(x) == x and mish'(x) == 1 in fp32
_CHUNK = 1 << 18  # values per pass of the uncompiled formulas: 1 MiB of fp32 per buffer


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


def _clamped(x: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    """min(x, _LIMIT) written into the fp32 buffer `into`."""
    if x.dtype == into.dtype:
        return torch.clamp(x, max=_LIMIT, out=into)
    return into.copy_(x).clamp_(max=_LIMIT)


def _buffers(x: torch.Tensor, count: int) -> list[torch.Tensor]:
    return [torch.empty(min(_CHUNK, x.numel())) for _ in range(count)]


def _chunks(out: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """Each chunk's span of `out` and the fp32 tensor to compute it in: that part of `out`
    itself, or (bf16, fp16) a buffer copied into it once the chunk is done."""
    buffer = None if out.dtype == torch.float32 else torch.empty(min(_CHUNK, out.numel()))
    for start in range(0, out.numel(), _CHUNK):
        span = slice(start, start + _CHUNK)
        part = out[span]
        work = part if buffer is None else buffer[: part.numel()]
        yield span, work
        if buffer is not None:
            part.copy_(work)


def _chunked_forward(x: torch.Tensor) -> torch.Tensor:
    """`_mish_forward` on a 1-D tensor without a compiler (see the module docstring)."""
    out = torch.empty_like(x)
    (t,) = _buffers(x, 1)
    for span, e in _chunks(out):
        xs, tk = x[span], t[: e.numel()]
        _clamped(xs, e).exp_()
        e.mul_(torch.add(e, 2, out=tk))  # n = e (e + 2)
        e.div_(torch.add(e, 2, out=tk)).mul_(xs)  # x n / (n + 2)
    return out


def _chunked_backward(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """`_mish_backward` on 1-D tensors without a compiler: with x clamped (the limit changes
    no slope in fp32, and keeps x·e² finite), slope = (n·d + 4·x·e·(e + 1)) / d²."""
    out = torch.empty_like(grad)
    b, c = _buffers(x, 2)
    for span, a in _chunks(out):
        xs, gs = x[span], grad[span]
        bk, ck = b[: a.numel()], c[: a.numel()]
        torch.exp(_clamped(xs, a), out=ck)  # a = x clamped, c = e
        torch.add(ck, 1, out=bk).mul_(ck).mul_(a).mul_(4)  # b = 4 x e (e + 1)
        torch.add(ck, 2, out=a).mul_(ck)  # a = n
        torch.add(a, 2, out=ck)  # c = d
        a.mul_(ck).add_(bk).div_(ck.mul_(ck)).mul_(gs)  # grad · slope
    return out


def _flat(t: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]] | None:
    """t as a 1-D view in memory order, and the map back to t's shape and strides."""
    if t.is_contiguous():
        return t.view(-1), lambda f: f.view(t.shape)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = t.shape
        return t.permute(0, 2, 3, 1).reshape(-1), lambda f: f.view(n, h, w, c).permute(0, 3, 1, 2)
    return None


def _run(direction: int, *tensors: torch.Tensor) -> torch.Tensor | None:
    """The forward (0) or backward (1) on the flattened tensors (same layout), compiled where
    allowed, else chunked, reshaped back; None where the layout does not flatten."""
    flats = [_flat(t) for t in tensors]
    if any(f is None for f in flats) or len({t.stride() for t in tensors}) > 1:
        return None
    ones = [f[0].detach() for f in flats]
    out = KERNELS.run(direction, *ones) if allowed(KERNELS) else None  # one variant per dtype
    if out is None:
        out = _chunked_backward(*ones) if direction else _chunked_forward(*ones)
    return flats[0][1](out)


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
    """Whether cnnlab's own formulas run on x, compiled or chunked."""
    return eligible(x)


def mish(x: torch.Tensor) -> torch.Tensor:
    """`F.mish`, one exp per value and recomputing on CPU (see the module docstring)."""
    return _MishFunction.apply(x) if _fast(x) else F.mish(x)


class Mish(nn.Mish):
    """nn.Mish (isinstance holds: guided backprop and hooks treat it as one), fused on CPU."""

    def __init__(self) -> None:
        super().__init__(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mish(x)
