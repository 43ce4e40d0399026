"""Directions in weight space: random ones normalized filter by filter (Li et al. 2017), or
the main directions of a training path.

Why filter-wise: a ReLU network computes the same function when one layer's weights are
scaled by c and the next one's by 1/c, but a plain random direction would look c times
flatter along the first layer. Scaling each filter of the direction to the norm of the
same filter of the trained weights makes the picture blind to that rescaling, so two
networks' landscapes can be compared. A filter is one output channel of a conv (dim 0) or
one row of a linear layer. Biases and BatchNorm parameters (1-D tensors) get no direction
by default, as in Li et al.; with `include_1d` they move along themselves.
"""

from __future__ import annotations

import torch
from torch import nn

Direction = list[torch.Tensor]  # one tensor per parameter, in model.parameters() order


def parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters()]


def filter_normalized(model: nn.Module, seed: int, include_1d: bool = False) -> Direction:
    """A seeded Gaussian direction, each filter scaled to its weights' filter norm."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for w in parameters(model):
        w = w.detach().float().cpu()
        if w.ndim <= 1:
            out.append(w.clone() if include_1d else torch.zeros_like(w))
            continue
        d = torch.randn(w.shape, generator=gen)
        dims = tuple(range(1, w.ndim))
        norms = [torch.linalg.vector_norm(t, dim=dims, keepdim=True) for t in (w, d)]
        scale = norms[0] / (norms[1] + 1e-10)
        out.append(d * scale)
    return [d.to(p.device, p.dtype) for d, p in zip(out, parameters(model), strict=True)]


def flatten(direction: Direction) -> torch.Tensor:
    return torch.cat([d.reshape(-1).float().cpu() for d in direction])


def unflatten(vector: torch.Tensor, like: list[torch.Tensor]) -> Direction:
    out, at = [], 0
    for p in like:
        out.append(vector[at : at + p.numel()].view(p.shape).to(p.device, p.dtype))
        at += p.numel()
    return out


def path_directions(
    path: list[list[torch.Tensor]], final: list[torch.Tensor], include_1d: bool = False
) -> tuple[list[Direction], torch.Tensor, list[float]]:
    """The two main (PCA) directions of the weight changes w_i - w_final along a training
    path; returns (directions, the path's coordinates (N, 2) in them, explained variance
    shares). 1-D parameters are left out unless `include_1d`, as for random directions."""
    keep = [include_1d or p.ndim > 1 for p in final]
    masked = lambda ws: [w if k else torch.zeros_like(w) for w, k in zip(ws, keep, strict=True)]  # noqa: E731
    base = flatten(masked(final))
    changes = torch.stack([flatten(masked(w)) - base for w in path])  # (N, P)
    centred = changes - changes.mean(0, keepdim=True)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    axes = v[:2]  # (2, P), unit vectors
    shares = (s[:2] ** 2 / (s**2).sum().clamp_min(1e-30)).tolist()
    coords = changes @ axes.T  # (N, 2): the path seen in the plane through w_final
    return [unflatten(a, final) for a in axes], coords, shares
