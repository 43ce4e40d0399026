"""Colour as per-pixel classes (seed 001): any colour source becomes a colorization problem.

With `data.colorize`, the model sees the luminance of each image and a derived target,
`colour`, names for every pixel the nearest of NC palette colours. The palette is fitted once
by mini-batch k-means on a seeded sample of training pixels and travels with the run as the
target's class names ("#rrggbb"), so evaluating or drawing a finished run uses the palette it
trained with, not a refit. Both the target and the grey input are made from the augmented
batch on the training device, so a flip or a shift moves the colours with the pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from cnnlab.config import Section
from cnnlab.data.mapped import Pixels, pixels_at
from cnnlab.errors import CnnlabError

TARGET = "colour"  # the derived per-pixel target a colorizing recipe's task names
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B: the grey a camera would give


class ColorizeConfig(Section):
    """`data.colorize`: turn the source's colour images into grey inputs + colour classes."""

    colours: int = Field(24, ge=2, le=256)  # NC: the palette's size
    sample_pixels: int = Field(200_000, ge=1_000)  # training pixels the k-means is fitted on


def check_colour(source: str, channels: int) -> None:
    if channels != 3:
        raise CnnlabError(
            f"data.colorize: {source} images have {channels} channel(s), colorizing needs RGB; "
            "use a colour source (cifar10, image_folder, skimage_photos) or drop data.colorize"
        )


def placeholder_names(cfg: ColorizeConfig) -> list[str]:
    """The target's classes before the palette exists (checking a recipe reads no pixels)."""
    return [f"colour {i + 1}" for i in range(cfg.colours)]


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), any dtype with values in any range."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def fit_palette(images: Pixels, cfg: ColorizeConfig, seed: int) -> torch.Tensor:
    """NC colours (NC, 3) uint8, dark to light, by k-means on a seeded sample of the pixels
    of uint8 images (N, 3, H, W); the sample is gathered by index, never a copy of the set."""
    from sklearn.cluster import MiniBatchKMeans  # imported here: recipe checks do not need it

    n, _, h, w = images.shape
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(n * h * w, (min(cfg.sample_pixels, n * h * w),), generator=gen)
    image, rest = pick // (h * w), pick % (h * w)
    pixels = pixels_at(images, image, rest // w, rest % w).cpu().double().div(255).numpy()  # (S, 3)
    kmeans = MiniBatchKMeans(cfg.colours, random_state=seed, batch_size=4096, n_init=3)
    centres = torch.from_numpy(kmeans.fit(pixels).cluster_centers_).float()
    centres = centres[luminance(centres.view(-1, 3, 1, 1)).flatten().argsort()]
    return centres.mul(255).round().clamp(0, 255).to(torch.uint8)


def palette_names(palette: torch.Tensor) -> list[str]:
    return ["#{:02x}{:02x}{:02x}".format(*rgb) for rgb in palette.tolist()]


def palette_from_names(names: list[str]) -> torch.Tensor | None:
    """The palette saved as class names, or None for names that are not all "#rrggbb"."""
    if not names or any(len(n) != 7 or n[0] != "#" for n in names):
        return None
    try:
        return torch.tensor([[int(n[i : i + 2], 16) for i in (1, 3, 5)] for n in names]).byte()
    except (ValueError, IndexError):
        return None


def nearest_colour(palette: torch.Tensor):
    """The derived target: for [0, 1] images (B, 3, H, W), the index of each pixel's nearest
    palette colour (B, H, W). ‖x − p‖² = ‖x‖² − 2 x·p + ‖p‖², and ‖x‖² is the same for every
    p, so a 1×1 convolution with weights −2p and bias ‖p‖² ranks the colours."""
    p = palette.float() / 255  # (K, 3)
    weight, bias = (-2 * p).view(*p.shape, 1, 1), p.square().sum(dim=1)

    def target(x: torch.Tensor) -> torch.Tensor:
        w, b = weight.to(x.device), bias.to(x.device)
        return F.conv2d(x.float(), w, b).argmin(dim=1)

    return target
