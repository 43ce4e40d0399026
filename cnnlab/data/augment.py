"""Whole-batch augmentation on the training device: no per-image Python.

Augmentation is a stage that sees the images and their targets together, so a transform
that must change a target with the image (a label-aware mix, a flip of a position target)
has what it needs. Random draws come from an explicit generator, so a resumed run replays
exactly the draws the uninterrupted run would have made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from cnnlab.config import Section

Targets = dict[str, torch.Tensor]  # target name -> (B, ...) values of the batch's images


class AugmentConfig(Section):
    hflip: bool = True  # random horizontal flip, p = 0.5 per image
    translate: int = Field(2, ge=0, le=16)  # max shift in pixels (pad-and-crop); 0 = off


def hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip a random half of the batch left-right. x: (B, C, H, W)."""
    flip = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def translate(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `shift` pixels in x and y, filling with zeros (pad-and-crop)."""
    b, _, h, w = x.shape
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b), device=x.device, generator=gen)
    padded = F.pad(x, (shift, shift, shift, shift))  # (B, C, H + 2s, W + 2s)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def augment(
    x: torch.Tensor, targets: Targets, cfg: AugmentConfig, gen: torch.Generator
) -> tuple[torch.Tensor, Targets]:
    """Apply the recipe's augmentations to a float batch in [0, 1] and its targets.

    Flips and shifts leave the stored targets as they are (derived ones, such as ink, are
    computed later from the image the model sees)."""
    if cfg.hflip:
        x = hflip(x, gen)
    if cfg.translate:
        x = translate(x, cfg.translate, gen)
    return x, targets
