"""Whole-batch augmentation on the training device: no per-image Python.

Augmentation is a stage that sees the images and their targets together, so a transform
that must change a target with the image (a flip that swaps GSN's left and right
triangles) has what it needs. Random draws come from an explicit generator, so a resumed
run replays exactly the draws the uninterrupted run would have made.

Geometric transforms (hflip, vflip, rot90, translate) may change targets; each source says
how, on its config class (`DataSection.label_maps`): a missing key means "not declared"
and the recipe is refused when that transform is on; None means "targets unchanged"; a
function is applied to the targets of the batch together with what was drawn for each
image. Photometric transforms (brightness, contrast, noise, erase) never change targets.

Order of the draws: hflip, vflip, rot90, translate, brightness, contrast, noise, erase;
a transform that is off draws nothing, so the default (hflip + translate) draws exactly
what it always did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from pydantic import Field

from cnnlab.config import Section
from cnnlab.errors import CnnlabError

Targets = dict[str, torch.Tensor]  # target name -> (B, ...) values of the batch's images
# (targets of the batch, what was drawn per image) -> new targets. What was drawn: a (B,)
# bool mask for hflip / vflip (True: this image was flipped), (B,) long quarter turns for
# rot90 (0..3, counter-clockwise as torch.rot90 turns an image shown rows down), (B, 2)
# long (dy, dx) shifts for translate.
LabelMap = Callable[[Targets, torch.Tensor], Targets]
GEOMETRIC = ("hflip", "vflip", "rot90", "translate")
# Natural images (clothes, CIFAR-10's objects, a folder of photos): a mirror, an upside-down
# or a turned picture still shows the same class, and a small shift too. Declaring them
# unchanged is honest for the class; whether such views help training is the recipe's call.
UNCHANGED: dict[str, LabelMap | None] = dict.fromkeys(GEOMETRIC)


class BrightnessConfig(Section):
    """Shift every pixel of some images by one random amount."""

    p: float = Field(0.0, ge=0.0, le=1.0)  # share of images changed; 0 = off
    max: float = Field(0.1, ge=0.0, le=1.0)  # add U(-max, max) to every pixel of the image


class ContrastConfig(Section):
    """Scale some images around their mean."""

    p: float = Field(0.0, ge=0.0, le=1.0)  # share of images changed; 0 = off
    max: float = Field(0.2, ge=0.0, le=1.0)  # scale around the image mean by U(1-max, 1+max)


class NoiseConfig(Section):
    """Add Gaussian noise to some images."""

    p: float = Field(0.0, ge=0.0, le=1.0)  # share of images changed; 0 = off
    std: float = Field(0.05, ge=0.0, le=1.0)  # Gaussian noise added to every pixel


class EraseConfig(Section):
    """Blank one random rectangle of some images (random erasing)."""

    p: float = Field(0.0, ge=0.0, le=1.0)  # share of images changed; 0 = off
    max_frac: float = Field(0.1, gt=0.0, le=1.0)  # one rectangle of up to this share, set to 0


class AugmentConfig(Section):
    """`data.augment`: whole-batch augmentation of the training batches, on the device."""

    hflip: bool = True  # random horizontal flip, p = 0.5 per image
    translate: int = Field(2, ge=0, le=16)  # max shift in pixels (pad-and-crop); 0 = off
    vflip: bool = False  # random vertical flip, p = 0.5 per image
    rot90: bool = False  # turn by 0, 90, 180 or 270 degrees, uniformly (square images only)
    brightness: BrightnessConfig = BrightnessConfig()  # shift every pixel of some images
    contrast: ContrastConfig = ContrastConfig()  # scale some images around their mean
    noise: NoiseConfig = NoiseConfig()  # add Gaussian noise to some images
    erase: EraseConfig = EraseConfig()  # blank a random rectangle of some images

    def geometric(self) -> list[str]:
        """The geometric transforms this config turns on, in the order they are applied."""
        on = {"hflip": self.hflip, "vflip": self.vflip, "rot90": self.rot90}
        on["translate"] = self.translate > 0
        return [name for name in GEOMETRIC if on[name]]


# ------------------------------------------------------------------------------ geometric


def _draw_half(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5


def flip_where(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Flip the images where mask (B,) is True along dim (3: left-right, 2: up-down)."""
    return torch.where(mask[:, None, None, None], x.flip(dim), x)


def rotate_where(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Turn image i by turns[i] quarter turns, counter-clockwise as shown (torch.rot90 on
    (H, W)). Square images only."""
    out = x
    for k in (1, 2, 3):
        out = torch.where((turns == k)[:, None, None, None], torch.rot90(x, k, (2, 3)), out)
    return out


def shift_by(
    x: torch.Tensor, shift: int, dy: torch.Tensor, dx: torch.Tensor, fill: int = 0
) -> torch.Tensor:
    """Crop image i at (dy[i], dx[i]) of the image padded by `shift` pixels of `fill` (zeros
    for images, "no label" for a mask) on every side.

    One `gather` along each image's flattened pixels: half the time of indexing the padded
    batch with three broadcast index tensors (75 against 175 us for 64 Fashion-MNIST images
    on the 2-core EPYC), with the same result."""
    b, c, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), value=fill).reshape(
        b, c, -1
    )  # (B, C, (H+2s)(W+2s))
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    at = rows[:, :, None] * (w + 2 * shift) + cols[:, None, :]  # (B, H, W) in the padded image
    return padded.gather(2, at.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip a random half of the batch left-right. x: (B, C, H, W)."""
    return flip_where(x, _draw_half(x, gen), 3)


def translate(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `shift` pixels in x and y, filling with zeros (pad-and-crop)."""
    dy, dx = torch.randint(0, 2 * shift + 1, (2, x.shape[0]), device=x.device, generator=gen)
    return shift_by(x, shift, dy, dx)


# ---------------------------------------------------------------------------- photometric


def _chosen(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """(B, 1, 1, 1) bool: the images a transform of probability p changes."""
    return (torch.rand(x.shape[0], device=x.device, generator=gen) < p)[:, None, None, None]


def _uniform(x: torch.Tensor, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(x.shape[0], device=x.device, generator=gen)
    return (lo + (hi - lo) * u)[:, None, None, None]


def brightness(x: torch.Tensor, cfg: BrightnessConfig, gen: torch.Generator) -> torch.Tensor:
    chosen = _chosen(x, cfg.p, gen)
    delta = _uniform(x, -cfg.max, cfg.max, gen)
    return torch.where(chosen, x + delta, x)


def contrast(x: torch.Tensor, cfg: ContrastConfig, gen: torch.Generator) -> torch.Tensor:
    chosen = _chosen(x, cfg.p, gen)
    factor = _uniform(x, 1 - cfg.max, 1 + cfg.max, gen)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(chosen, mean + (x - mean) * factor, x)


def noise(x: torch.Tensor, cfg: NoiseConfig, gen: torch.Generator) -> torch.Tensor:
    chosen = _chosen(x, cfg.p, gen)
    z = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=gen)
    return torch.where(chosen, x + cfg.std * z, x)


def erase(x: torch.Tensor, cfg: EraseConfig, gen: torch.Generator) -> torch.Tensor:
    """Set one rectangle per chosen image to 0: area U(0, max_frac) of the image (at least
    one pixel), aspect ratio log-uniform in [1/2, 2], placed uniformly inside the image."""
    b, _, h, w = x.shape
    chosen = _chosen(x, cfg.p, gen)
    u = torch.rand(4, b, device=x.device, generator=gen)
    area = u[0] * cfg.max_frac * h * w
    aspect = torch.exp((2 * u[1] - 1) * math.log(2))  # height / width
    eh = torch.sqrt(area * aspect).floor().clamp(1, h).long()
    ew = (area / eh).floor().clamp(1, w).long()
    top = (u[2] * (h - eh + 1)).floor().long()
    left = (u[3] * (w - ew + 1)).floor().long()
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (B, W)
    hole = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
    return torch.where(chosen & hole, torch.zeros((), dtype=x.dtype, device=x.device), x)


# ------------------------------------------------------------------------------ the stage

NO_LABEL = 255  # a mask pixel without a class; what a shift uncovers in a mask


def is_mask(value: torch.Tensor) -> bool:
    """A per-pixel class map: uint8 (B, H, W), as sources store masks (255: no label)."""
    return value.dtype == torch.uint8 and value.ndim == 3


def move_masks(targets: Targets, move: Callable[[torch.Tensor], torch.Tensor]) -> Targets:
    """The targets with every mask moved as its image was (`move` takes (B, 1, H, W))."""
    if not any(is_mask(v) for v in targets.values()):
        return targets
    return {k: move(v[:, None])[:, 0] if is_mask(v) else v for k, v in targets.items()}


def relabel(
    name: str, targets: Targets, drawn: torch.Tensor, maps: Mapping[str, LabelMap | None]
) -> Targets:
    if name not in maps:  # the recipe check refuses this first; a direct call lands here
        raise CnnlabError(f"data.augment.{name}: the source does not say how it changes targets")
    fn = maps[name]
    return targets if fn is None else fn(targets, drawn)


def augment(
    x: torch.Tensor,
    targets: Targets,
    cfg: AugmentConfig,
    gen: torch.Generator,
    label_maps: Mapping[str, LabelMap | None] = UNCHANGED,
) -> tuple[torch.Tensor, Targets]:
    """Apply the recipe's augmentations to a float batch in [0, 1] and its targets.

    `label_maps`: the source's (DataSection.maps()); the default leaves targets as they
    are under every geometric transform (natural images). A mask (`is_mask`) moves with its
    image under every one. Derived targets, such as ink, are computed later from the image
    the model sees."""
    if cfg.hflip:
        mask = _draw_half(x, gen)
        x = flip_where(x, mask, 3)
        targets = relabel(
            "hflip", move_masks(targets, lambda m: flip_where(m, mask, 3)), mask, label_maps
        )
    if cfg.vflip:
        mask = _draw_half(x, gen)
        x = flip_where(x, mask, 2)
        targets = relabel(
            "vflip", move_masks(targets, lambda m: flip_where(m, mask, 2)), mask, label_maps
        )
    if cfg.rot90:
        turns = torch.randint(0, 4, (x.shape[0],), device=x.device, generator=gen)
        x = rotate_where(x, turns)
        targets = relabel(
            "rot90", move_masks(targets, lambda m: rotate_where(m, turns)), turns, label_maps
        )
    if cfg.translate:
        s = cfg.translate
        dy, dx = torch.randint(0, 2 * s + 1, (2, x.shape[0]), device=x.device, generator=gen)
        x = shift_by(x, s, dy, dx)
        targets = move_masks(targets, lambda m: shift_by(m, s, dy, dx, NO_LABEL))
        targets = relabel("translate", targets, torch.stack([dy, dx], 1) - s, label_maps)
    photometric = False
    for name, fn in (
        ("brightness", brightness),
        ("contrast", contrast),
        ("noise", noise),
        ("erase", erase),
    ):
        sub = getattr(cfg, name)
        if sub.p > 0:
            x = fn(x, sub, gen)
            photometric = True
    if photometric:
        x = x.clamp(0.0, 1.0)
    return x, targets
