"""Guided backpropagation (Springenberg et al. 2015) for neurons of the last conv layer.

A "neuron" is one channel of the last Conv2d; its value for an image is the channel's
maximum over positions. For each chosen channel we find the test image that excites it
most and show Captum's guided gradient of that value with respect to the image.

Captum applies the guided rule (only positive gradient flows back through a nonlinearity)
at nn.ReLU modules alone; a GELU, SiLU, Mish or LeakyReLU network (seed 002's best model used
Mish) would silently get the plain gradient. `guided_nonlinearities` applies the same rule at
those activations, so every backbone gets guided backprop.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from captum.attr import GuidedBackprop
from torch import nn

from cnnlab.viz.base import Chart, check_count, unit_range
from cnnlab.viz.hooks import (
    ACTIVATION_TYPES,
    analysis_mode,
    features_of,
    forward_hooks,
    last_conv,
)
from cnnlab.viz.mosaic import Tile, mosaic, rgb, side_for
from cnnlab.viz.run_view import RunView

# neurons' images through one backward pass: seed 002's 10 at 224 px took 0.39 s instead of
# 1.34 one at a time; at most this many, so that 64 neurons of a large network fit in memory
BATCH = 16


class NeuronOutput(nn.Module):
    """model -> (B,) value of one channel of `layer` (max over H, W), for Captum: the same
    channel for every image, or one channel per image (a (B,) tensor), so that many
    neurons' images go through in one batch (in eval mode the images do not interact)."""

    def __init__(self, model: nn.Module, layer: nn.Module, channel: int | torch.Tensor):
        super().__init__()
        self.model, self.layer, self.channel = model, layer, channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: dict[str, torch.Tensor] = {}
        with forward_hooks({"layer": self.layer}, lambda n, m, y: out.__setitem__(n, y)):
            features_of(self.model, x)
        y = out["layer"]
        channel = torch.as_tensor(self.channel, device=y.device).expand(len(y))
        return y[torch.arange(len(y), device=y.device), channel].amax(dim=(1, 2))  # (B,)


@contextmanager
def guided_nonlinearities(model: nn.Module) -> Iterator[None]:
    """Captum's guided rule on the activations it leaves alone: clamp the gradient that
    leaves each of them (the activation's own derivative already applied) at zero."""

    def clamp(module, grad_input, grad_output):
        return tuple(None if g is None else g.clamp(min=0) for g in grad_input)

    others = [
        m for m in model.modules() if isinstance(m, ACTIVATION_TYPES) and not isinstance(m, nn.ReLU)
    ]
    handles = []
    try:
        for m in others:
            handles.append(m.register_full_backward_hook(clamp))
        yield
    finally:
        for handle in handles:
            handle.remove()


def guided_gradient(
    model: nn.Module, layer: nn.Module, channel: int | torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """Guided backprop of one channel's peak (or of channel[i] for image i) for images x
    (B, C, H, W)."""
    with analysis_mode(model), guided_nonlinearities(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks")
        gbp = GuidedBackprop(NeuronOutput(model, layer, channel))
        x = x.detach().clone().requires_grad_(True)
        return gbp.attribute(x).detach()  # (B, C, H, W)


def guided_backprop(view: RunView, neurons: int = 10) -> list[Chart]:
    check_count("neurons", neurons, 64)
    name, conv = last_conv(view.model)
    peaks = view.test_predictions.peaks  # (N, C), recorded in the same pass as predictions
    best_value, best_image = peaks.max(dim=0)  # (C,), (C,)
    channels = best_value.argsort(descending=True)[: min(neurons, len(best_value))]
    channels = channels.sort().values.tolist()  # the most excitable channels, in order
    test = view.split("test")
    grads: list[torch.Tensor] = []
    for lo in range(0, len(channels), BATCH):  # a batch of images, each its own channel
        chosen = torch.tensor(channels[lo : lo + BATCH])
        x = view.batch("test", best_image[chosen])
        grads += list(guided_gradient(view.model, conv, chosen, x).cpu())
    tiles = [
        [
            Tile(rgb(test.images[int(best_image[c])]), f"ch {c}: test #{int(best_image[c])}"),
            Tile(rgb(unit_range(g)), "guided gradient"),
        ]
        for c, g in zip(channels, grads, strict=True)
    ]
    fig = mosaic(
        tiles,
        side_for(test.images.shape[-2], 150),
        f"Guided backprop, {name}\n(top-{len(channels)} channels by peak)",
        [f"peak {best_value[c]:.2f}" for c in channels],
    )
    return [
        Chart(
            "guided_backprop",
            f"Guided backpropagation ({len(channels)} neurons of {name})",
            fig,
            "Left: the test image that excites the channel most; right: its guided "
            "gradient (Captum's guided rule, at every activation), scaled to [0, 1].",
            extra={
                "channels": channels,
                "images": [int(best_image[c]) for c in channels],
                "grads": grads,
            },
        )
    ]
