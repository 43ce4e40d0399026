"""What every task type provides: one class per type owns its config, head, loss, metrics
(running sums per step, torchmetrics per epoch), their goals, decoding and captions, what
it needs to know about its target, and which figures apply. The loop, the model, the
meters and the figures ask the task; none of them branches on its type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from cnnlab.config import HeadConfig, Section
from cnnlab.errors import CnnlabError
from cnnlab.tasks.intervals import Interval
from cnnlab.tasks.thresholds import Threshold

if TYPE_CHECKING:
    from torchmetrics import MetricCollection

    from cnnlab.models.base import Backbone


NO_CLASS = -100  # a class index without a class (a mask's 255, a table's blank cell): no loss,
# no metric; torch's ignore_index. A number without a value is NaN (`labelled`).


def labelled(values: torch.Tensor) -> torch.Tensor:
    """Which of `values` are labels, bool of their shape: a class index other than NO_CLASS,
    a number other than NaN. A table's blank cell (data.targets.NAME.blank: unlabelled) and
    a mask's unlabelled pixel are neither; the built-in tasks' losses and metrics leave them
    out, and a task of one's own must too (`Task.loss`): they reach it as they are."""
    return values == values if values.is_floating_point() else values != NO_CLASS


def unlabelled_trouble(
    task: Task, head: nn.Module, shape: tuple[int, ...], values: torch.Tensor
) -> str | None:
    """How `task.loss` takes the unlabelled values among `values` (a split's targets), tried
    on 16 of its rows (those with the fewest labels, and some whole ones) with a finite
    stand-in for the head's output, of `shape` (K, ...) per row: "counted" when the loss or
    its gradient is not finite with them and is once each is replaced by a label, "empty"
    when it is not finite on the rows with no label alone (a mean over none), None when
    neither or when the loss fails on the stand-in. Asked after a run's loss went
    non-finite, when the weights that would give a real output may be NaN already."""
    ok = task.labelled(values).reshape(len(values), -1)  # (N, values per row)
    if ok.all() or not ok.any():
        return None
    rows = torch.cat([ok.sum(1).argsort()[:8], ok.all(1).nonzero()[:8, 0]])
    target, label = values[rows], values[task.labelled(values)][0]
    filled = torch.where(task.labelled(target), target, label)
    out = torch.full((len(rows), *shape), 0.5, device=values.device)
    empty = ~ok[rows].any(1)
    try:
        for trouble, r in (("counted", torch.ones_like(empty)), ("empty", empty)):
            tried = r.any() and _finite(task, head, out[r], filled[r])
            if tried and not _finite(task, head, out[r], target[r]):
                return trouble
    except Exception:  # a diagnosis: the run's own error is the one to report
        return None
    return None


@torch.enable_grad()
def _finite(task: Task, head: nn.Module, out: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether `task.loss` and its gradient for `out` are finite: a NaN target kept out of
    the value by a `torch.where` after the arithmetic still makes the gradient NaN."""
    out = out.clone().requires_grad_(True)
    loss = task.loss(head, out, target)
    if not torch.isfinite(loss).all():
        return False
    if not loss.requires_grad:  # a constant: no gradient to be NaN
        return True
    (grad,) = torch.autograd.grad(loss.sum(), out, allow_unused=True)
    return grad is None or bool(torch.isfinite(grad).all())


def labelled_rows(values: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which rows (images) of `values` (N, ...) hold at least one label."""
    ok = labelled(values)
    return ok.flatten(1).any(1) if ok.ndim > 1 else ok


class TaskSection(Section):
    """Fields every task has; a task type adds its own and a `type` literal (its tag)."""

    target: str  # a target the dataset provides (fashion_mnist: label, ink)
    weight: float = Field(1.0, ge=0.0)  # lambda: the task's weight in the summed loss
    head: HeadConfig = HeadConfig()  # the MLP on the backbone's pooled features


@dataclass(frozen=True)
class TargetSpec:
    """What the source says about a task's target, before any pixel is read."""

    classes: list[str] | None = None  # a categorical target's class names
    components: list[str] | None = None  # a vector target's component names
    # A vector target's values -> the index of a class (GSN: six counts -> the shape-pair
    # class), so a regression head can be scored as a classifier as well.
    to_class: Callable[[torch.Tensor], torch.Tensor] | None = None
    per_pixel: bool = False  # a class for every pixel (a mask), not one value per image


@dataclass
class TargetInfo:
    """What a head needs to know about its target, learnt from the training split."""

    classes: list[str] | None = None  # names of a categorical target's classes
    components: list[str] | None = None  # names of a vector target's components
    mean: float | list[float] = 0.0  # a standardized target's training mean and std
    std: float | list[float] = 1.0  # (per component for a vector target)


class Task:
    """One output of the multi-task model, named in the recipe (`tasks.<name>`)."""

    config: ClassVar[type[TaskSection]]
    metrics: ClassVar[tuple[str, ...]]  # per-epoch metric names, "loss" first
    maximize: ClassVar[frozenset[str]] = frozenset()  # metrics that improve upwards
    # Metrics given once per class or component, reported as `<metric>_<name>` each
    # (`epoch_values`): a recipe may monitor one (`val.tags.f1_cat`), its name checked
    # against the target's classes or components once the data is described.
    per_class: ClassVar[frozenset[str]] = frozenset()
    headline: ClassVar[tuple[str, ...]] = ()  # worth a glance on each epoch's line
    step_metrics: ClassVar[tuple[str, ...]] = ()  # what the training meter sums per step
    figures: ClassVar[tuple[str, ...]] = ()  # figure families that apply (`cnnlab figures`)
    legend: ClassVar[str] = ""  # how `caption` reads, for the title of the prediction grid
    # Outputs that are probabilities of logits (softmax, sigmoid): `probabilities`, `nll` and
    # `outcomes` say how, and temperature scaling (`cnnlab calibrate`) fits `temperature`, by
    # which every logit is divided before it becomes a probability, on the validation set.
    probabilistic: ClassVar[bool] = False
    temperature: float = 1.0
    # Outputs that are numbers in the target's units (a regression): `cnnlab calibrate` fits
    # them a prediction interval (tasks/intervals.py), which predict then gives.
    intervals: ClassVar[bool] = False
    # A regression's prediction interval, fitted by `cnnlab calibrate` (tasks/intervals.py):
    # predict gives each value's low and high with it.
    interval: Interval | None = None
    # Answers a class per image from probabilities (a classification): one of two classes
    # can be given a decision threshold by `cnnlab calibrate --recall` (tasks/thresholds.py),
    # its answers, test metrics and figures then at it, not at the top class.
    thresholds: ClassVar[bool] = False
    threshold: Threshold | None = None

    def __init__(self, name: str, cfg: Any):
        self.name, self.cfg = name, cfg
        self.info = TargetInfo()

    @property
    def target(self) -> str:
        return self.cfg.target

    @property
    def bounds(self) -> tuple[float | None, float | None] | None:
        """The range its decoded values are clamped to, (lo, hi) with None for an open side
        (a regression's `bounds`), for an exported file's metadata; None: unbounded."""
        return None

    @property
    def each(self) -> list[str]:
        """What a metric per class or component (`per_class`) is given for, by name: the
        target's components, else its classes."""
        return self.info.components or self.info.classes or []

    def fit(self, spec: TargetSpec, values: Callable[[], torch.Tensor] | None = None) -> None:
        """Learn what the head needs: the source's `spec` of the target (its classes or
        components); `values()` gives the training split's targets, or is None when the
        statistics come with the weights (a checkpoint)."""
        self.info = TargetInfo(classes=spec.classes, components=spec.components)

    def head(self, backbone: Backbone) -> nn.Module:
        """This task's head for `backbone`: on its pooled features (`num_features` wide), or
        on one of its stages (`feature_info`), when the head says so with a `stage` index."""
        raise NotImplementedError

    def loss(self, head: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The batch's loss, a scalar tensor, from the head's raw `out` and the batch's
        `target`, on the device (no host sync: it runs every step). Unlabelled values reach
        it as they are: NaN for a number, NO_CLASS (-100) for a class (a table's blank cell
        under `blank: unlabelled`, a mask's unlabelled pixel). It must count only
        `self.labelled(target)`, since nothing else leaves them out: one NaN in a plain
        `.mean()` makes the loss NaN and, through the shared gradient, every weight. Replace
        them before any arithmetic (a `torch.where` after it keeps a NaN out of the value, not
        out of the gradient), and give 0 for a batch with no label (a sum over the labelled
        values divided by their count clamped to 1): docs/components.md, "A task type"."""
        raise NotImplementedError

    def labelled(self, target: torch.Tensor) -> torch.Tensor:
        """Which values of a batch's `target` are labels (bool, its shape). The meters weigh
        a batch by how many it has; the task's own `loss`, `step_sums` and metrics must count
        only these themselves (the built-in tasks do), as cnnlab passes the others on."""
        return labelled(target)

    def step_sums(self, pred: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        """Per-step batch means over the labelled values (`labelled`), one per
        `step_metrics`; no host sync (the meter weighs them by the labelled count)."""
        raise NotImplementedError

    def from_step_means(self, means: list[float]) -> dict[str, float]:
        """The epoch's metrics from the means of `step_sums` over its images."""
        return dict(zip(self.step_metrics, means, strict=True))

    def epoch_metrics(self) -> MetricCollection:
        """The detailed metrics of validation and test, accumulated on the device."""
        raise NotImplementedError

    def calibration_metrics(self) -> dict[str, Any]:
        """Metrics of how far the probabilities can be trusted, added to the test's
        `epoch_metrics` (a task without probabilities has none)."""
        return {}

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """A probabilistic task's probabilities from its head's raw output, at `temperature`:
        what its metrics, `predict` and an exported model give."""
        raise NotImplementedError

    def nll(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """A probabilistic task's mean negative log-likelihood of `target` under `logits`,
        already divided by a temperature (the loss a temperature is fitted to), as rows: one
        per image, or per labelled pixel (`Rows`)."""
        raise NotImplementedError

    def outcomes(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prediction the rows make, from `logits` already divided by a temperature: how
        sure it is (the probability of what it says) and 1.0 where it is right, 0.0 where not
        (a row may make several: a multi-label task's tags). Reliability diagrams, ECE and
        MCE bin them."""
        raise NotImplementedError

    def update_metrics(
        self, metrics: MetricCollection, head: nn.Module, out: torch.Tensor, target: torch.Tensor
    ) -> None:
        """Feed one batch of raw head outputs to the detailed metrics (decoded by default)."""
        metrics.update(head.decode(out), target)

    def answers(self, head: nn.Module, out: torch.Tensor) -> torch.Tensor:
        """The answers a batch of raw head outputs gives, as predict, the figures and the
        test's metrics read them: the head's decoding (a classification's: at its fitted
        threshold, when it has one)."""
        return head.decode(out)

    def epoch_values(self, computed: dict[str, Any]) -> dict[str, float]:
        """`epoch_metrics().compute()` as named floats. A metric with a value per class or
        component (torchmetrics' `average=None`) gives one float per name, `f1_<name>`, whose
        goal is its metric's (`f1`): the per-tag scores of a multi-label task of one's own."""
        names = self.each
        out = {}
        for m, v in computed.items():
            v = torch.as_tensor(v)
            if v.numel() == 1:
                out[m] = float(v)
            elif v.shape == (len(names),):
                out.update({f"{m}_{n}": float(x) for n, x in zip(names, v, strict=True)})
            else:
                raise CnnlabError(
                    f"tasks.{self.name}: metric {m!r} gave values of shape {tuple(v.shape)}; a "
                    f"metric gives one number, or one per class or component ({len(names)}), "
                    f"or {type(self).__name__}.epoch_values names them"
                )
        return out

    def caption(
        self, truth: torch.Tensor, pred: torch.Tensor, short: Callable[[str], str] = str
    ) -> tuple[str, bool]:
        """Text under one image of a prediction grid (names passed through `short`), and
        whether the prediction is wrong."""
        raise NotImplementedError

    def worst(
        self, truth: torch.Tensor, pred: torch.Tensor, logits: torch.Tensor | None, n: int,
        short: Callable[[str], str] = str,
    ) -> Worst | None:  # fmt: skip
        """The at most `n` test images this task got most wrong, worst first (the `mistakes`
        figure): `truth`, `pred` decoded, `logits` one raw row per image where the task
        keeps them (`reliability`). None: the task does not rank its errors."""
        return None


@dataclass
class Worst:
    """A task's worst test images: their indices, worst first, a line under each, and what
    the ranking is, for the figure's title and caption."""

    index: torch.Tensor
    lines: list[str]
    what: str  # e.g. "wrong with the most confidence"
    caption: str
