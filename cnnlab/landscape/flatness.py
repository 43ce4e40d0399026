"""Flatness in numbers, so two landscapes can be compared without squinting at colours.

- rise: the mean loss on the circle (2-D) or at the two points (1-D) at radius r, minus
  the loss at the trained weights: how far the loss climbs a step of r away;
- curvature: the discrete Laplacian at the trained weights (the grid's centre),
  ∑ second differences / h²: the basin's bottom, sharp or wide;
- laplacian_var: the variance of the discrete Laplacian over every interior grid point
  (seed 004's "Laplacian variance": low = smooth and flat, high = rugged or sharp).
"""

from __future__ import annotations

import math

import numpy as np

from cnnlab.landscape.surface import Surface


def _grid(surface: Surface) -> tuple[np.ndarray, float]:
    loss = np.asarray(surface.loss, dtype=float)
    h = surface.coords[1] - surface.coords[0] if len(surface.coords) > 1 else 1.0
    return loss, h


def laplacian(loss: np.ndarray, h: float) -> np.ndarray:
    """Second differences summed over the axes at every interior point."""
    if loss.shape[0] == 1:
        row = loss[0]
        return ((row[2:] - 2 * row[1:-1] + row[:-2]) / h**2)[None]
    return (
        loss[1:-1, 2:] + loss[1:-1, :-2] + loss[2:, 1:-1] + loss[:-2, 1:-1] - 4 * loss[1:-1, 1:-1]
    ) / h**2


def rise(surface: Surface, radius: float, angles: int = 64) -> float:
    """Mean loss at distance `radius` from the centre (bilinear between grid points) minus
    the centre's loss."""
    loss, _ = _grid(surface)
    coords = np.asarray(surface.coords)
    centre = _at(loss, coords, 0.0, 0.0)
    if loss.shape[0] == 1:
        ring = [np.interp(s * radius, coords, loss[0]) for s in (-1, 1)]
    else:
        t = np.linspace(0, 2 * math.pi, angles, endpoint=False)
        ring = [_at(loss, coords, radius * math.cos(a), radius * math.sin(a)) for a in t]
    return float(np.mean(ring) - centre)


def _at(loss: np.ndarray, coords: np.ndarray, a: float, b: float) -> float:
    """Bilinear interpolation of the grid at (a, b) (a along columns, b along rows)."""
    if loss.shape[0] == 1:
        return float(np.interp(a, coords, loss[0]))
    col = np.interp(a, coords, np.arange(len(coords)))
    row = np.interp(b, coords, np.arange(len(coords)))
    j0, i0 = int(min(col, len(coords) - 2)), int(min(row, len(coords) - 2))
    fj, fi = col - j0, row - i0
    top = loss[i0, j0] * (1 - fj) + loss[i0, j0 + 1] * fj
    bottom = loss[i0 + 1, j0] * (1 - fj) + loss[i0 + 1, j0 + 1] * fj
    return float(top * (1 - fi) + bottom * fi)


def flatness(surface: Surface, radius: float | None = None) -> dict[str, float]:
    """The three numbers of the module doc; `radius` defaults to half the span."""
    loss, h = _grid(surface)
    radius = surface.settings.span / 2 if radius is None else radius
    lap = laplacian(loss, h)
    mid = len(surface.coords) // 2
    centre_lap = lap[0, mid - 1] if loss.shape[0] == 1 else lap[mid - 1, mid - 1]
    return {
        "loss_at_centre": float(_at(loss, np.asarray(surface.coords), 0.0, 0.0)),
        "radius": radius,
        "rise": rise(surface, radius),
        "curvature": float(centre_lap),
        "laplacian_var": float(np.var(lap)),
    }
