"""Prediction intervals for a regression, by split conformal prediction (Vovk et al. 2005;
Lei et al. 2018): each value ± a half-width such that the share `coverage` of true values
falls within it, on images like the validation set's.

The half-width of a component is an order statistic of the validation set's absolute errors:
the ceil((n + 1) * coverage)-th smallest of its n labelled values. A new image's true value
then lies within it with probability at least `coverage` whenever the new image and the
validation images are exchangeable (drawn alike); nothing about the model is assumed. The
guarantee is on average over images, not for each image: a hard image's error is as likely
to exceed it as an easy one's. With too few validation values for the share asked
((n + 1) * coverage > n: 9 values cannot bound 90 %) the interval is infinite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

COVERAGE = 0.9  # the share of true values an interval is to hold: 90 %


@dataclass(frozen=True)
class Interval:
    """A regression's fitted half-widths, one per component ((1,) for a number)."""

    coverage: float
    halfwidth: list[float]

    def bounds(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) around `values` (N,) or (N, D)."""
        width = torch.tensor(self.halfwidth, dtype=values.dtype, device=values.device)
        width = width[0] if values.ndim == 1 else width
        return values - width, values + width


def errors_by_component(truth: torch.Tensor, pred: torch.Tensor) -> list[torch.Tensor]:
    """Each component's absolute errors on its labelled values (a blank cell is NaN)."""
    errors = (pred.double() - truth.double()).abs()
    columns = errors[:, None] if errors.ndim == 1 else errors
    return [column[~column.isnan()] for column in columns.T]


def fit_interval(truth: torch.Tensor, pred: torch.Tensor, coverage: float = COVERAGE) -> Interval:
    """The split-conformal half-widths of validation's `truth` and `pred` (target units)."""
    widths = []
    for errors in errors_by_component(truth, pred):
        k = math.ceil((len(errors) + 1) * coverage)
        widths.append(float(errors.sort().values[k - 1]) if k <= len(errors) else math.inf)
    return Interval(coverage, widths)


def covered(truth: torch.Tensor, pred: torch.Tensor, interval: Interval) -> list[float]:
    """Each component's share of labelled values within the interval (a test set's, to see
    the promise kept)."""
    return [
        float((errors <= width).double().mean()) if len(errors) else math.nan
        for errors, width in zip(errors_by_component(truth, pred), interval.halfwidth, strict=True)
    ]


def widths_said(halfwidth: list[float], components: list[str] | None = None) -> str:
    """`0.006885`, or a vector's half-widths by name: `discs 1.063, squares 1.019`."""
    named = [f"{c} " for c in components or []] or [""] * len(halfwidth)
    return ", ".join(f"{c}{w:.4g}" for c, w in zip(named, halfwidth, strict=True))


def shares_said(shares: list[float]) -> str:
    """`88.9%`, or a vector's components' `90.5%/85.5%`, in their order."""
    return "/".join(f"{c:.1%}" for c in shares)


def described(
    interval: Interval,
    components: list[str] | None = None,
    truth: torch.Tensor | None = None,
    pred: torch.Tensor | None = None,
) -> str:
    """`each value ± 0.006885, the range fitted to hold 90% of validation's values (cnnlab
    calibrate), which holds 88.9% of the test values`: the last part where the test set's
    `truth` and `pred` are given, the promise kept or not."""
    said = (
        f"each value ± {widths_said(interval.halfwidth, components)}, the range fitted to hold "
        f"{interval.coverage:.0%} of validation's values (cnnlab calibrate)"
    )
    if truth is None or pred is None:
        return said
    return f"{said}, which holds {shares_said(covered(truth, pred, interval))} of the test values"
