"""Classification: logits per class, cross-entropy, accuracy and macro precision/recall/F1;
on the test set also the expected and maximum calibration error of its probabilities."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.heads import MLPHead
from cnnlab.tasks.base import TargetInfo, TargetSpec, Task, TaskSection

if TYPE_CHECKING:
    from torchmetrics import MetricCollection

    from cnnlab.models.base import Backbone


class ClassificationConfig(TaskSection):
    """A task that names one class per image."""

    type: Literal["classification"] = "classification"
    loss: Literal["cross_entropy"] = "cross_entropy"  # the only loss of a classification
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # 0.1: the true class gets 0.9 + 0.01


class ClassificationHead(MLPHead):
    """Logits (B, num_classes)."""

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        return out.argmax(dim=1)


class Classification(Task):
    config = ClassificationConfig
    metrics = ("loss", "accuracy", "precision", "recall", "f1")
    maximize = frozenset({"accuracy", "precision", "recall", "f1"})
    headline = ("accuracy", "f1")
    step_metrics = ("accuracy",)
    figures = ("confusion", "reliability", "mistakes")
    # each per-epoch metric but the loss: torchmetrics' multiclass metric and its average
    measures: ClassVar[dict[str, tuple[str, str]]] = {
        "accuracy": ("MulticlassAccuracy", "micro"),
        "precision": ("MulticlassPrecision", "macro"),
        "recall": ("MulticlassRecall", "macro"),
        "f1": ("MulticlassF1Score", "macro"),
    }

    metric_options: ClassVar[dict] = {}  # more keyword arguments of the torchmetrics metrics
    # Probabilities are softmax(logits / temperature); a temperature is fitted on the
    # validation set after training (cnnlab/calibration.py) and saved with the best weights.
    temperature: float = 1.0
    calibration_bins: ClassVar[int] = 15  # equal-width confidence bins of ECE and MCE

    def fit(self, spec: TargetSpec, values: Callable[[], torch.Tensor] | None = None) -> None:
        if not spec.classes:
            raise CnnlabError(
                f"tasks.{self.name}: target {self.target!r} is not categorical; classify a "
                "target with classes, or make this task type: regression"
            )
        if spec.per_pixel:
            raise CnnlabError(
                f"tasks.{self.name}: target {self.target!r} is a class per pixel (a mask); "
                "make this task type: pixel_classification"
            )
        self.info = TargetInfo(classes=list(spec.classes))

    @property
    def num_classes(self) -> int:
        return len(self.info.classes or ())

    def head(self, backbone: Backbone) -> nn.Module:
        return ClassificationHead(backbone.num_features, self.num_classes, self.cfg.head)

    def loss(self, head: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.float(), target, label_smoothing=self.cfg.label_smoothing)

    def step_sums(self, pred: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        return [(pred == target).float().mean()]

    def epoch_metrics(self) -> MetricCollection:
        import torchmetrics  # imported when a meter is built: a recipe check needs no metrics

        kw = {"num_classes": self.num_classes, "validate_args": False, **self.metric_options}
        c = torchmetrics.classification
        return torchmetrics.MetricCollection(
            {
                name: getattr(c, kind)(average=avg, **kw)
                for name, (kind, avg) in self.measures.items()
            }
        )

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities (on dim 1) from the head's logits, or from the log of the
        test-time views' mean probabilities (cnnlab/tta.py), at the fitted temperature."""
        return (out.float() / self.temperature).softmax(dim=1)

    def calibration_metrics(self) -> dict:
        import torchmetrics

        kw = {"num_classes": self.num_classes, "validate_args": False, **self.metric_options}
        error = torchmetrics.classification.MulticlassCalibrationError
        bins = self.calibration_bins
        return {
            "ece": error(n_bins=bins, norm="l1", **kw),
            "mce": error(n_bins=bins, norm="max", **kw),
        }

    def update_metrics(
        self, metrics: MetricCollection, head: nn.Module, out: torch.Tensor, target: torch.Tensor
    ) -> None:
        # probabilities serve every metric: torchmetrics takes the argmax for the counts
        metrics.update(self.probabilities(out), target)

    def caption(
        self, truth: torch.Tensor, pred: torch.Tensor, short: Callable[[str], str] = str
    ) -> tuple[str, bool]:
        names = self.info.classes or []
        t, p = int(truth), int(pred)
        if t == p:
            return short(names[t]), False
        return f"✗ {short(names[p])}\n(true {short(names[t])})", True
