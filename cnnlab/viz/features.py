"""Feature maps of every block (seed 000) and first-layer filters with their maps (seed 002)."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.viz.base import (
    Chart,
    check_count,
    grid_shape,
    hide_ticks,
    new_figure,
    show_image,
    show_map,
)
from cnnlab.viz.hooks import analysis_mode, feature_blocks, features_of, first_conv, forward_hooks
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
    charts = []
    for n, i in enumerate(index.tolist()):
        fig = new_figure(1.6 * channels, 1.7 * (len(blocks) + 1))
        axes = fig.subplots(len(blocks) + 1, channels, squeeze=False)
        show_image(axes[0, 0], test.images[i], f"test image #{i}")
        for ax in axes[0, 1:]:
            ax.set_visible(False)
        for r, (name, fmap) in enumerate(maps.items(), start=1):  # fmap (B, C, H, W)
            for c in range(channels):
                ax = axes[r, c]
                if c < fmap.shape[1]:
                    show_map(ax, fmap[n, c], f"ch {c}")
                else:
                    ax.set_visible(False)
            axes[r, 0].set_ylabel(f"{name}\n{tuple(fmap.shape[1:])}")
        fig.suptitle(f"Feature maps of test image #{i}: first {channels} channels per block")
        charts.append(
            Chart(
                f"feature_maps_{n + 1}",
                f"Feature maps, test image #{i}",
                fig,
                extra={"shapes": {k: tuple(v.shape) for k, v in maps.items()}},
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
    rows, cols = grid_shape(w.shape[0])
    fig = new_figure(1.1 * cols, 1.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for o, ax in enumerate(axes):
        if o < w.shape[0]:
            show_image(ax, w[o], str(o), interpolation="nearest")
        else:
            ax.set_visible(False)
    kind = "RGB" if conv.weight.shape[1] == 3 else f"{conv.weight.shape[1]}-channel"
    fig.suptitle(
        f"{w.shape[0]} first-layer filters ({name}, {kind}, "
        f"{conv.kernel_size[0]}x{conv.kernel_size[1]})"
    )
    test = view.split("test")
    i = pick(len(test), 1, view.recipe.seed + 2)
    maps = capture(view.model, {name: conv}, view.batch("test", i))[name][0]  # (O, H, W)
    fig2 = new_figure(1.1 * (cols + 1), 1.2 * rows)
    axes2 = fig2.subplots(rows, cols + 1, squeeze=False)
    show_image(axes2[0, 0], test.images[int(i)], f"test #{int(i)}")
    for ax in axes2[1:, 0]:
        ax.set_visible(False)
    for o, ax in enumerate(axes2[:, 1:].ravel()):
        if o < maps.shape[0]:
            show_map(ax, maps[o], str(o))
        else:
            ax.set_visible(False)
    fig2.suptitle(f"Outputs of the {maps.shape[0]} first-layer filters for test image #{int(i)}")
    hide_ticks(axes2[0, 0])
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
