"""Per-channel normalization statistics, by a streaming pass over uint8 images.

A float copy of a whole training set is what this avoids: 50,000 CIFAR images at 224 px are
about 5 GB as float32. Chunks are converted one at a time and summed in float64, whose sums of
uint8 values and of their squares stay exact far beyond any set held in memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cnnlab.data.mapped import MappedImages, Pixels

CHUNK_VALUES = 1 << 22  # values converted at once: 32 MiB of float64 per chunk


def channel_stats(
    images: Pixels, view: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) std per channel of uint8 images (N, C, H, W), scaled to [0, 1],
    as float32 (C,) tensors; std is at least 1e-6 so normalizing never divides by zero.
    `view` maps each float64 chunk to what the model sees (colorizing: its luminance).
    Mapped images are read in file order: the sums are exact, so the order changes nothing."""
    if isinstance(images, MappedImages):
        images = images.in_file_order()
    n, c, h, w = images.shape
    chunk = max(1, CHUNK_VALUES // (c * h * w))
    total = squares = torch.zeros((), dtype=torch.float64)
    for lo in range(0, n, chunk):
        x = images[lo : lo + chunk].to(torch.float64)  # (b, C, H, W), values 0..255
        if view is not None:
            x = view(x)
        total = total + x.sum(dim=(0, 2, 3))
        squares = squares + x.square().sum(dim=(0, 2, 3))
    count = n * h * w
    mean = total / count
    var = (squares - total * mean) / max(count - 1, 1)  # Σx² − (Σx)²/n, over n − 1
    std = var.clamp_min(0).sqrt()
    return (mean / 255).float(), (std / 255).float().clamp_min(1e-6)
