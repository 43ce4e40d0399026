"""2×2 max-pooling with a compiled CPU kernel for training.

aten's CPU max-pool records the position of every maximum as an int64 index (for bf16 maps,
four times the bytes of the output) and its backward zero-fills the whole input gradient
before scattering into it. In seed 002's CNN at 224 px that was about 14 % of a training
step. Here the forward is a max over each 2×2 window of the channels-last map, saving only
the output; the backward compares the input with it and hands each window's gradient to its
first maximum in row-major order, as aten's kernel does, so both directions equal aten's
bit for bit, ties included. Both are compiled by inductor with the batch size symbolic and
the map's height, width and channels fixed (a symbolic size cost the backward its
vectorisation: 77 ms against 45 ms on a (32, 32, 224, 224) bf16 map), one pair per map
shape and dtype.

The compiled path covers what training needs: 2×2 windows with stride 2 and no padding on
large (MIN_VALUES) channels-last maps of even size, with gradients on. Everything else
(evaluation, small maps, other windows or layouts, odd sizes, and whatever
`cnnlab/models/compiled.py` excludes) runs aten.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.compiled import Kernels, usable


def _windows(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) -> (N, H/2, 2, W/2, 2, C): each 2×2 window's four values."""
    n, h, w, c = x.shape
    return x.view(n, h // 2, 2, w // 2, 2, c)


def _pool_forward(x: torch.Tensor) -> torch.Tensor:
    return _windows(x).amax(dim=(2, 4))  # (N, H/2, W/2, C)


def _pool_backward(x: torch.Tensor, out: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient of each window goes to its first maximum: (0,0), (0,1), (1,0), (1,1)."""
    n, h, w, c = x.shape
    v = _windows(x)
    top = out.view(n, h // 2, 1, w // 2, 1, c)
    hit = v == top
    a, b, d = hit[:, :, 0:1, :, 0:1], hit[:, :, 0:1, :, 1:2], hit[:, :, 1:2, :, 0:1]
    row = torch.arange(2, device=x.device).view(1, 1, 2, 1, 1, 1)
    col = torch.arange(2, device=x.device).view(1, 1, 1, 1, 2, 1)
    earlier = (
        ((row == 0) & (col == 1) & a)
        | ((row == 1) & (col == 0) & (a | b))
        | ((row == 1) & (col == 1) & (a | b | d))
    )
    g = grad.view(n, h // 2, 1, w // 2, 1, c)
    return torch.where(hit & ~earlier, g, torch.zeros((), dtype=grad.dtype)).view(n, h, w, c)


KERNELS = Kernels("max-pool", _pool_forward, _pool_backward, dynamic=False)
# Maps smaller than this run aten's: at 28 or 56 px both take a millisecond or two, and
# compiling a kernel per shape would cost more than it saves (seed 002's 224 and 112 px
# maps, 51 M and 13 M values at batch 32, are where the time goes).
MIN_VALUES = 1 << 22


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """A channels-last (N, C, H, W) tensor as the contiguous (N, H, W, C) it is in memory,
    its batch size marked as varying (one compiled variant serves every batch size but 1,
    which dynamo always specialises)."""
    t = t.permute(0, 2, 3, 1)
    if t.shape[0] > 1:
        torch._dynamo.mark_dynamic(t, 0)
    return t


def _key(x: torch.Tensor) -> tuple:
    return (*x.shape[1:], x.dtype)


class _MaxPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = KERNELS.run(0, _nhwc(x.detach()), key=_key(x))
        if out is None:
            out, _ = torch.ops.aten.max_pool2d_with_indices(x, 2, 2)
        else:
            out = out.permute(0, 3, 1, 2)
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, out = ctx.saved_tensors
        if not torch.is_grad_enabled():  # not a double backward
            g = grad.contiguous(memory_format=torch.channels_last)
            dx = KERNELS.run(1, _nhwc(x), _nhwc(out), _nhwc(g), key=_key(x))
            if dx is not None:
                return dx.permute(0, 3, 1, 2)
        # aten's own backward, from the indices it computes again
        with torch.enable_grad():
            xr = x.detach().requires_grad_()
            (dx,) = torch.autograd.grad(F.max_pool2d(xr, 2), xr, grad)
        return dx


def _fast(module: nn.MaxPool2d, x: torch.Tensor) -> bool:
    square = module.kernel_size in (2, (2, 2)) and module.stride in (2, (2, 2))
    plain = module.padding in (0, (0, 0)) and module.dilation in (1, (1, 1))
    plain = plain and not module.ceil_mode and not module.return_indices
    return (
        square
        and plain
        and x.dim() == 4
        and x.requires_grad
        and torch.is_grad_enabled()
        and x.shape[2] % 2 == 0
        and x.shape[3] % 2 == 0
        and x.is_contiguous(memory_format=torch.channels_last)
        and usable(x, KERNELS)  # before the size: it tests none while tracing
        and x.numel() >= MIN_VALUES
    )


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d (isinstance holds: hooks and `cnnlab count` treat it as one), compiled
    for 2×2 training steps on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MaxPoolFunction.apply(x) if _fast(self, x) else super().forward(x)
