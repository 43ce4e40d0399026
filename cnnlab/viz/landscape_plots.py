"""The pictures of a landscape: contours with labelled levels, a 3-D surface, 1-D curves,
several models side by side, and their flatness in numbers."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm

from cnnlab.landscape.flatness import flatness
from cnnlab.landscape.surface import Surface
from cnnlab.viz.base import Chart, new_figure, shorten

LEVELS = 12
CLIP = 0.9  # the 3-D surface shows heights up to this quantile of the grid


def _values(surface: Surface, log: bool) -> np.ndarray:
    loss = np.asarray(surface.loss, dtype=float)
    return np.log10(np.maximum(loss, 1e-12)) if log else loss


def _label(log: bool) -> str:
    return "log10 loss" if log else "loss"


def _axis_names(surface: Surface) -> tuple[str, str]:
    shares = surface.extra.get("explained")
    if shares:  # the path's own plane: say how much of the path each axis holds
        return tuple(
            f"PCA direction {k + 1} ({share:.0%} of the path)" for k, share in enumerate(shares)
        )
    return "direction 1", "direction 2"


def levels(z: np.ndarray) -> np.ndarray:
    """Levels at quantiles of the grid's values: each band holds an equal share of the grid,
    so the basin keeps its shape in the picture even when the rim climbs a thousandfold
    (BatchNorm with running statistics far from the moved weights' own)."""
    return np.unique(np.quantile(z[np.isfinite(z)], np.linspace(0, 1, LEVELS + 1)))


def contour_on(
    ax: Axes, surface: Surface, title: str, log: bool, path=None, bands: np.ndarray | None = None
) -> None:
    """Filled contours with labelled level lines; the trained weights at the centre, and the
    training path when given (then the plane is the path's own PCA plane). `bands`: levels
    shared with other panels (default: this grid's own)."""
    a = np.asarray(surface.coords)
    z = _values(surface, log)
    bands = levels(z) if bands is None else bands
    norm = BoundaryNorm(bands, ncolors=256)  # one colour per band, however wide in loss
    filled = ax.contourf(a, a, z, levels=bands, cmap="viridis", norm=norm)
    lines = ax.contour(a, a, z, levels=filled.levels, colors="white", linewidths=0.6)
    ax.clabel(lines, inline=True, fontsize=6, fmt="%.2f")
    ax.plot([0], [0], marker="*", color="red", markersize=9, label="trained weights")
    if path is not None:
        xy = np.asarray(path)
        ax.plot(xy[:, 0], xy[:, 1], "-o", color="orange", markersize=3, label="training path")
        ax.legend(loc="upper right", fontsize=6)
    x_name, y_name = _axis_names(surface)
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_aspect("equal")
    ax.set_title(title)


def contour(surface: Surface, name: str, log: bool = False) -> Chart:
    fig = new_figure(5.2, 4.6)
    ax = fig.add_subplot()
    path = surface.extra.get("path")
    contour_on(ax, surface, f"{shorten(name, 40)}: {_label(log)}", log, path)
    caption = (
        "the contour is computed in the plane of the path's two main directions" if path else ""
    )
    return Chart("landscape_contour", "Loss landscape: contours", fig, caption)


def surface3d(surface: Surface, name: str, log: bool = False) -> Chart:
    fig = new_figure(5.6, 4.6)
    ax = fig.add_subplot(projection="3d")
    a = np.asarray(surface.coords)
    x, y = np.meshgrid(a, a)
    z = _values(surface, log)
    cap = float(np.quantile(z, CLIP))  # the rim clipped: the basin, not the corners, fills it
    ax.plot_surface(x, y, np.minimum(z, cap), cmap="viridis", linewidth=0, antialiased=True)
    x_name, y_name = _axis_names(surface)
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.set_zlabel(_label(log))
    ax.set_title(shorten(name, 40))
    caption = f"heights above the grid's {CLIP:.0%} quantile ({cap:.3g}) drawn at it"
    return Chart("landscape_surface", "Loss landscape: 3-D surface", fig, caption)


def curves(surfaces: dict[str, Surface], log: bool = False) -> Chart:
    """1-D loss (and accuracy) along direction 1, every model on the same axes; for 2-D
    surfaces, the row through the trained weights."""
    fig = new_figure(8.0, 3.4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for name, s in surfaces.items():
        mid = len(s.loss) // 2
        ax_loss.plot(s.coords, s.loss[mid], label=shorten(name, 30))
        ax_acc.plot(s.coords, s.accuracy[mid], label=shorten(name, 30))
    ax_loss.set_yscale("log" if log else "linear")
    ax_loss.set_xlabel("step along direction 1")
    ax_loss.set_ylabel("loss")
    ax_acc.set_xlabel("step along direction 1")
    ax_acc.set_ylabel("accuracy")
    ax_loss.legend(fontsize=7)
    return Chart("landscape_1d", "Loss landscape: 1-D interpolation", fig)


def side_by_side(surfaces: dict[str, Surface], log: bool = False) -> Chart:
    """One contour per model in a row, with the same levels so heights compare."""
    n = len(surfaces)
    fig = new_figure(4.2 * n, 4.0)
    axes = np.atleast_1d(fig.subplots(1, n))
    bands = levels(np.concatenate([_values(s, log).ravel() for s in surfaces.values()]))
    for ax, (name, s) in zip(axes, surfaces.items(), strict=True):
        contour_on(ax, s, shorten(name, 30), log, s.extra.get("path"), bands)
    return Chart("landscape_compare", "Loss landscapes side by side", fig)


def flatness_chart(surfaces: dict[str, Surface]) -> Chart:
    """The flatness numbers per model as bars, and the same in the table under it."""
    rows = [{"model": name, **flatness(s)} for name, s in surfaces.items()]
    keys = ["rise", "curvature", "laplacian_var"]
    fig = new_figure(3.2 * len(keys), 3.2)
    for ax, key in zip(fig.subplots(1, len(keys)), keys, strict=True):
        ax.bar([shorten(r["model"], 14) for r in rows], [r[key] for r in rows], color="#4c72b0")
        ax.set_title(key.replace("_", " "))
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    caption = (
        f"rise: mean loss at radius {rows[0]['radius']:g} minus the loss at the weights; "
        "curvature: discrete Laplacian there; laplacian var: over the whole grid (lower = flatter)"
    )
    table = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    return Chart("landscape_flatness", "Flatness", fig, caption, table=table, extra={"rows": rows})


def run_charts(surface: Surface, name: str, log: bool = False) -> list[Chart]:
    """One run's figures of one surface: contour and 3-D (2-D grids), the curve through the
    weights and the flatness, keyed by the grid's dimension where both kinds can exist."""
    dims = surface.settings.dims
    charts = [contour(surface, name, log), surface3d(surface, name, log)] if dims == 2 else []
    curve, flat = curves({name: surface}, log), flatness_chart({name: surface})
    curve.key, flat.key = f"landscape_curve_{dims}d", f"landscape_flatness_{dims}d"
    return [*charts, curve, flat]
