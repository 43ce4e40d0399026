"""Feature maps of every block (seed 000) and first-layer filters with their maps (seed 002)."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.viz.base import Chart, check_count, grid_shape
from cnnlab.viz.hooks import analysis_mode, feature_blocks, features_of, first_conv, forward_hooks
from cnnlab.viz.mosaic import Tile, colored, mosaic, rgb, rows_of, side_for
from cnnlab.viz.predictions import pick
from cnnlab.viz.run_view import RunView


@torch.inference_mode()
def capture(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor) -> dict:
    """Outputs of `layers` for input x: name -> (B, C, H, W), on the CPU."""
    out: dict[str, torch.Tensor] = {}
    with analysis_mode(model), forward_hooks(layers, lambda n, m, y: out.__setitem__(n, y)):
        features_of(model, x)
    return {k: v.float().cpu() for k, v in out.items()}


def feature_maps(view: RunView, images: int = 3, channels: int = 4) -> list[Chart]:
    """Per test image: the input, then the first `channels` maps of every block."""
    check_count("images", images, 20)
    check_count("channels", channels, 64)
    test = view.split("test")
    index = pick(len(test), images, view.recipe.seed + 1)
    blocks = feature_blocks(view.model)
    maps = capture(view.model, blocks, view.batch("test", index))
    side = side_for(test.images.shape[-2], 112)
    charts = []
    for n, i in enumerate(index.tolist()):
        tiles = [[Tile(rgb(test.images[i]), f"test image #{i}")]]
        tiles += [
            [Tile(colored(fmap[n, c]), f"ch {c}") for c in range(min(channels, fmap.shape[1]))]
            for fmap in maps.values()  # (B, C, H, W)
        ]
        labels = ["", *(f"{name}\n{tuple(fmap.shape[1:])}" for name, fmap in maps.items())]
        title = f"Feature maps of test image #{i}: first {channels} channels per block"
        fig = mosaic(tiles, side, title, labels)
        charts.append(
            Chart(
                f"feature_maps_{n + 1}",
                f"Feature maps, test image #{i}",
                fig,
                extra={
                    "shapes": {k: tuple(v.shape) for k, v in maps.items()},
                    "grid": (len(tiles), max(len(r) for r in tiles)),
                },
            )
        )
    return charts


def _filter_images(weight: torch.Tensor) -> torch.Tensor:
    """(O, I, k, k) -> (O, C, k, k) with C = 3 for RGB filters, else 1 (mean over inputs),
    each filter scaled to [0, 1] on its own so its pattern, not its norm, is visible."""
    w = weight.detach().float().cpu()
    if w.shape[1] != 3:
        w = w.mean(1, keepdim=True)
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    return (w - lo) / (hi - lo).clamp_min(1e-12)


def filters(view: RunView) -> list[Chart]:
    """First-layer filters as a grid (8x8 for 64) and their activation maps for one image."""
    name, conv = first_conv(view.model)
    w = _filter_images(conv.weight)  # (O, C, k, k)
    _, cols = grid_shape(w.shape[0])
    tiles = [Tile(rgb(w[o]), str(o)) for o in range(w.shape[0])]
    kind = "RGB" if conv.weight.shape[1] == 3 else f"{conv.weight.shape[1]}-channel"
    fig = mosaic(
        rows_of(tiles, cols),
        side_for(w.shape[-1], 90),
        f"{w.shape[0]} first-layer filters ({name}, {kind}, "
        f"{conv.kernel_size[0]}x{conv.kernel_size[1]})",
    )
    test = view.split("test")
    i = pick(len(test), 1, view.recipe.seed + 2)
    maps = capture(view.model, {name: conv}, view.batch("test", i))[name][0]  # (O, H, W)
    tiles = [Tile(colored(m), str(o)) for o, m in enumerate(maps)]
    first = Tile(rgb(test.images[int(i)]), f"test #{int(i)}")
    fig2 = mosaic(
        [[first if r == 0 else None, *row] for r, row in enumerate(rows_of(tiles, cols))],
        side_for(maps.shape[-1], 90),
        f"Outputs of the {maps.shape[0]} first-layer filters for test image #{int(i)}",
    )
    return [
        Chart(
            "filters",
            "First-layer filters",
            fig,
            f"Each filter scaled to its own range; "
            f"{'colour' if kind == 'RGB' else 'mean over input channels'}.",
        ),
        Chart("filter_activations", "First-layer activation maps", fig2),
    ]
