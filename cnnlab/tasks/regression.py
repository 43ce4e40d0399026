"""Regression: one value per image, or a vector of them (GSN's six counts), learnt
standardized, reported in the target's units: overall and, for a vector, per component."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import field_validator
from torch import nn

from cnnlab.config import HeadConfig
from cnnlab.errors import CnnlabError, listed
from cnnlab.models.heads import MLPHead
from cnnlab.tasks.base import TargetInfo, TargetSpec, Task, TaskSection, Worst, labelled

LOSSES = {"mse": F.mse_loss, "smooth_l1": F.smooth_l1_loss, "l1": F.l1_loss}
# elementwise, for the mean over labelled values alone (NaN: a blank cell, no label)
ERRORS = {"mse": lambda e: e.square(), "l1": lambda e: e.abs(), "smooth_l1": lambda e: (
    torch.where(e.abs() < 1, 0.5 * e.square(), e.abs() - 0.5))}  # fmt: skip


if TYPE_CHECKING:
    from torchmetrics import Metric, MetricCollection

    from cnnlab.models.base import Backbone


Bound = float | None  # null: that side is open


class RegressionConfig(TaskSection):
    """A task that predicts a number, or a vector of numbers, per image."""

    type: Literal["regression"] = "regression"
    loss: Literal["mse", "smooth_l1", "l1"] = "mse"  # on the standardized target if standardize
    standardize: bool = True  # learn (y - mean) / std of the training split; report in y's units
    # [lo, hi]: the range the target lives in (a 0-100 score: [0, 100]; a count: [0, null]);
    # null leaves that side open, and a vector's components share it. Every prediction is
    # clamped to it: predict, the exported file, metrics and figures. The loss trains on the
    # unclamped output (a clamped one has no gradient outside the range). Training values
    # outside it stop the run.
    bounds: tuple[Bound, Bound] | None = None

    @field_validator("bounds")
    @classmethod
    def _bounds_in_order(cls, bounds: tuple[Bound, Bound] | None) -> tuple[Bound, Bound] | None:
        lo, hi = bounds or (None, None)
        if not all(math.isfinite(b) for b in (lo, hi) if b is not None):
            raise ValueError(
                f"{_bounds(lo, hi)}: a bound is a finite number; null leaves a side open"
            )
        if lo is not None and hi is not None and lo >= hi:
            fix = f"write [{hi:g}, {lo:g}]" if lo > hi else "give two different values"
            raise ValueError(
                f"[{lo:g}, {hi:g}] is not a range: the lower bound must be below the upper one; "
                f"{fix}, or null for an open side ([{lo:g}, null])"
            )
        return bounds


class RegressionHead(MLPHead):
    """A scalar (B,) or a vector (B, K) per image, learned in standardized units; `decode`
    returns target units.

    The target's mean and std (per component) are buffers, so they travel with the weights.
    `bounds` (the recipe's, not saved with the weights: checkpoints from before it load as
    they were) clamp the decoded values; `decode` is the one place that makes a raw output
    a prediction, for metrics, figures, predict and the exported graph alike.
    """

    def __init__(
        self,
        in_dim: int,
        cfg: HeadConfig,
        mean: float | list[float] = 0.0,
        std: float | list[float] = 1.0,
        outputs: int | None = None,  # None: a scalar target
        bounds: tuple[float | None, float | None] | None = None,  # (lo, hi), None: open
    ):
        super().__init__(in_dim, outputs or 1, cfg)
        self.scalar = outputs is None
        shape = () if self.scalar else (outputs,)
        self.register_buffer("target_mean", torch.zeros(shape) + torch.tensor(mean))
        self.register_buffer("target_std", torch.ones(shape) * torch.tensor(std))
        self.lo, self.hi = bounds or (None, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out.squeeze(1) if self.scalar else out

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.target_mean) / self.target_std

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """Target units, clamped to the bounds (a constant Clip in an exported graph). The
        loss reads the raw output instead: the clamp would give it no gradient outside."""
        value = out.float() * self.target_std + self.target_mean
        if self.lo is None and self.hi is None:
            return value
        return value.clamp(self.lo, self.hi)


def class_agreement(to_class: Callable[[torch.Tensor], torch.Tensor]) -> Metric:
    """A metric: how often the predicted vector and the true one give the same class (GSN:
    the count head read as a classifier, comparable with the class head's accuracy), over
    the images whose every component is labelled."""
    import torchmetrics

    class _Agreement(torchmetrics.Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("same", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
            self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

        def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
            whole = labelled(target).all(1)
            same = to_class(pred) == to_class(target.nan_to_num())
            self.same += (same & whole).sum()
            self.total += whole.sum()

        def compute(self) -> torch.Tensor:
            return self.same.float() / self.total.clamp_min(1)

    return _Agreement()


def labelled_error(power: int, components: int | None = None) -> Metric:
    """A metric: the mean of |predicted - true| ** `power` over the labelled values (a NaN
    target is none), over all of them, or per component (`components`: a vector's count);
    its square root for power 2 (RMSE). Masked by weights, not by indexing: no host sync."""
    import torchmetrics

    class _LabelledError(torchmetrics.Metric):
        def __init__(self) -> None:
            super().__init__()
            shape = (components,) if components else ()
            self.add_state("total", torch.zeros(shape), dist_reduce_fx="sum")
            self.add_state("count", torch.zeros(shape), dist_reduce_fx="sum")

        def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
            ok = labelled(target)
            err = torch.where(ok, pred.float() - target.float(), 0.0).abs() ** power
            over = 0 if components else None  # per component: sum the images only
            self.total += err.sum(over) if over is not None else err.sum()
            self.count += ok.sum(over) if over is not None else ok.sum()

        def compute(self) -> torch.Tensor:
            mean = self.total / self.count  # NaN where nothing was labelled
            return mean.sqrt() if power == 2 else mean

    return _LabelledError()


class Regression(Task):
    config = RegressionConfig
    metrics = ("loss", "mae", "rmse")
    maximize = frozenset({"accuracy"})  # of a vector target read as a class (TargetSpec)
    per_class = frozenset({"mae", "rmse"})  # a vector's, per component: val.counts.rmse_squares
    intervals = True  # calibrate fits each value a range
    to_class: Callable[[torch.Tensor], torch.Tensor] | None = None
    headline = ("rmse",)
    step_metrics = ("mae", "mse")
    figures = ("regression", "mistakes")
    legend = "true → predicted (? where the image has no label)"

    def fit(self, spec: TargetSpec, values: Callable[[], torch.Tensor] | None = None) -> None:
        if spec.classes:  # its class indices would be fitted as numbers, and silently
            shown = listed(spec.classes, ", ", most=4)
            fix = "classify it (type: classification), or name a numeric target"
            if all(_number(c) for c in spec.classes):  # numbers read as classes
                fix = (
                    "its classes are numbers: read them as numbers (a table's "
                    f"data.targets.{self.target}.kind: number), or classify it"
                )
            raise CnnlabError(
                f"tasks.{self.name}: target {self.target!r} is categorical ({len(spec.classes)} "
                f"classes: {shown}); a regression reads a number or a vector: {fix}"
            )
        components = spec.components
        self.info = TargetInfo(components=components)
        self.to_class = spec.to_class
        if values is None or not (self.cfg.standardize or self.cfg.bounds):
            return
        v = values()  # (N,) or (N, K)
        if v.ndim != (1 if components is None else 2):
            raise CnnlabError(
                f"tasks.{self.name}: target {self.target!r} has values of shape "
                f"{tuple(v.shape[1:])} per image, but its source names "
                f"{len(components or [])} components; the source's describe() must name them"
            )
        self.check_bounds(v)
        if self.cfg.standardize:
            mean, std = nan_mean_std(v.double())
            self.info.mean, self.info.std = mean.tolist(), std.clamp_min(1e-12).tolist()

    def check_bounds(self, v: torch.Tensor) -> None:
        """Training values outside `bounds` contradict them: a typo in the bounds or in the
        data, and either way the model would learn values it may never predict. Compared in
        the values' own precision, as `decode` clamps (0.1 stored in float32 is within 0.1)."""
        lo, hi = self.cfg.bounds or (None, None)
        v = v[labelled(v)] if v.is_floating_point() else v.float()
        below = int((v < lo).sum()) if lo is not None else 0
        above = int((v > hi).sum()) if hi is not None else 0
        if not below and not above:
            return
        low, high = float(v.min()), float(v.max())
        said = " and ".join(
            [f"{below:,} below the lower bound"] * (below > 0)
            + [f"{above:,} above the upper bound"] * (above > 0)
        )
        wider = (
            None if lo is None else _outward(min(lo, low), up=False),
            None if hi is None else _outward(max(hi, high), up=True),
        )
        raise CnnlabError(
            f"tasks.{self.name}.bounds: the training split's {self.target!r} values run from "
            f"{low:.6g} to {high:.6g}, {said} of {_bounds(lo, hi)}; widen "
            f"the bounds to hold them ({_bounds(*wider)}), or correct those values in the data"
        )

    @property
    def bounds(self) -> tuple[float | None, float | None] | None:
        return self.cfg.bounds

    @property
    def outputs(self) -> int | None:
        return None if self.info.components is None else len(self.info.components)

    def head(self, backbone: Backbone) -> nn.Module:
        info, width = self.info, backbone.num_features
        bounds = self.cfg.bounds
        return RegressionHead(width, self.cfg.head, info.mean, info.std, self.outputs, bounds)

    def loss(self, head: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss's mean over the labelled values: an unlabelled one (NaN) adds 0 to the
        sum and its gradient, and a batch without a label gives 0, not NaN."""
        ok, out = labelled(target), out.float()
        error = torch.where(ok, out - head.encode(target.float()), 0.0)
        return ERRORS[self.cfg.loss](error).sum() / ok.sum().clamp_min(1)

    def step_sums(self, pred: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        ok = labelled(target)
        err, count = torch.where(ok, pred - target.float(), 0.0), ok.sum().clamp_min(1)
        return [err.abs().sum() / count, err.square().sum() / count]

    def from_step_means(self, means: list[float]) -> dict[str, float]:
        mae, mse = means
        return {"mae": mae, "rmse": mse**0.5}

    def epoch_metrics(self) -> MetricCollection:
        import torchmetrics  # imported when a meter is built: a recipe check needs no metrics

        metrics = {
            "mae": labelled_error(1),  # over every labelled output of every image
            "rmse": labelled_error(2),
        }
        if self.outputs:
            metrics["rmse_each"] = labelled_error(2, self.outputs)
            metrics["mae_each"] = labelled_error(1, self.outputs)
        if self.to_class is not None:
            metrics["accuracy"] = class_agreement(self.to_class)
        return torchmetrics.MetricCollection(metrics)

    def epoch_values(self, computed: dict) -> dict[str, float]:
        """Overall MAE and RMSE, then per component: `rmse_squares`, `mae_squares`, ..."""
        out = {m: float(v) for m, v in computed.items() if not m.endswith("_each")}
        for m in ("rmse", "mae"):
            each = computed.get(f"{m}_each")
            if each is not None:
                names = self.info.components or []
                out.update({f"{m}_{n}": float(v) for n, v in zip(names, each, strict=True)})
        return out

    def caption(
        self, truth: torch.Tensor, pred: torch.Tensor, short: Callable[[str], str] = str
    ) -> tuple[str, bool]:
        """`name true → predicted`; a value without a label (a blank cell) reads `?`."""
        if truth.ndim == 0:
            return f"{self.name} {_value(truth, '.3g')} → {float(pred):.3g}", False
        values = (",".join(_value(x, ".2g") for x in t) for t in (truth, pred))
        return f"{self.name} [{next(values)}] → [{next(values)}]", False

    def worst(
        self, truth: torch.Tensor, pred: torch.Tensor, logits: torch.Tensor | None, n: int,
        short: Callable[[str], str] = str,
    ) -> Worst | None:  # fmt: skip
        """The largest errors in the target's units (a vector's: their Euclidean length, over
        its labelled components); an image without a label is not ranked."""
        ok = labelled(truth).reshape(len(truth), -1)
        diff = (pred.double() - truth.double()).reshape(len(truth), -1)
        error = torch.where(ok, diff, 0.0).norm(dim=1)
        rows = ok.any(1)
        order = torch.where(rows, error, -1.0).argsort(descending=True, stable=True)
        index = order[: min(n, int(rows.sum()))]
        lines = [
            f"{self.caption(truth[i], pred[i], short)[0]}\noff by {float(error[i]):.3g}"
            for i in index.tolist()
        ]
        of = "" if bool(rows.all()) else " labelled images of the"
        rms = float(error[rows].pow(2).mean().sqrt())
        return Worst(
            index,
            lines,
            "with the largest errors",
            f"true → predicted, in the target's units; over the{of} test set the root mean "
            f"square of the errors is {rms:.3g}. An image far off here may hold a target that "
            "was measured or typed wrong.",
        )


def nan_mean_std(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) std over dim 0 of the labelled values, NaN (no label) left out;
    0 and 1 where a component has fewer than two."""
    ok = labelled(v)
    n = ok.sum(0)
    mean = torch.where(ok, v, 0.0).sum(0) / n.clamp_min(1)
    var = torch.where(ok, v - mean, 0.0).square().sum(0) / (n - 1).clamp_min(1)
    return mean, torch.where(n > 1, var.sqrt(), 1.0)


def _bounds(lo: float | None, hi: float | None) -> str:
    return "[" + ", ".join("null" if b is None else f"{b:g}" for b in (lo, hi)) + "]"


def _outward(x: float, up: bool) -> float:
    """`x` to 4 significant digits, rounded away from the range's inside (down for a lower
    bound, up for an upper one), so the bound it suggests holds the value it was made from."""
    if x == 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(abs(x))) - 3)
    return (math.ceil(x / step) if up else math.floor(x / step)) * step


def _value(x: torch.Tensor, spec: str) -> str:
    return format(float(x), spec) if bool(labelled(x)) else "?"


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
