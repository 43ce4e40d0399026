"""Classification: logits per class, cross-entropy, accuracy and macro precision/recall/F1;
on the test set also the expected and maximum calibration error of its probabilities."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.heads import MLPHead
from cnnlab.tasks.base import NO_CLASS, TargetInfo, TargetSpec, Task, TaskSection, Worst, labelled

if TYPE_CHECKING:
    from torchmetrics import MetricCollection

    from cnnlab.models.base import Backbone


class ClassificationConfig(TaskSection):
    """A task that names one class per image."""

    type: Literal["classification"] = "classification"
    loss: Literal["cross_entropy"] = "cross_entropy"  # the only loss of a classification
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # 0.1: the true class gets 0.9 + 0.01
    # Each class's weight in the loss: none (all 1), balanced (the inverse of its share of the
    # training images, scaled to mean 1: a rare class counts as much as a common one), or one
    # per class. Metrics stay unweighted.
    class_weights: Literal["none", "balanced"] | list[float] = "none"


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
    figures = ("confusion", "reliability", "roc", "mistakes")
    legend = "the predicted class; ✗ when wrong, the true class in brackets (or no label)"
    # each per-epoch metric but the loss: torchmetrics' multiclass metric and its average
    measures: ClassVar[dict[str, tuple[str, str]]] = {
        "accuracy": ("MulticlassAccuracy", "micro"),
        "precision": ("MulticlassPrecision", "macro"),
        "recall": ("MulticlassRecall", "macro"),
        "f1": ("MulticlassF1Score", "macro"),
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's measures averaged `"none"` (one value per class) are its per-class
        metrics: `recall_of` gives `val.diag.recall_of_<class>`, a monitor like any other."""
        super().__init_subclass__(**kwargs)
        if "per_class" not in vars(cls):
            cls.per_class = frozenset(m for m, (_, avg) in cls.measures.items() if avg == "none")

    # more keyword arguments of the torchmetrics metrics: a row without a label counts in none
    metric_options: ClassVar[dict] = {"ignore_index": NO_CLASS}
    # Probabilities are softmax(logits / temperature); a temperature is fitted on the
    # validation set after training (cnnlab/calibration.py) and saved with the best weights.
    probabilistic = True
    thresholds = True  # one of two classes: `cnnlab calibrate --recall` fits its threshold
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
        self.weights = self.class_weights(values)

    def class_weights(self, values: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
        """The loss's class weights (`class_weights`), from the training split's labels for
        balanced: total / (classes × count), scaled to mean 1 (a class with no label: 0). None
        when they come with the head's weights (a checkpoint)."""
        choice, k = self.cfg.class_weights, self.num_classes
        if isinstance(choice, list):
            if len(choice) != k:
                raise CnnlabError(
                    f"tasks.{self.name}.class_weights has {len(choice)} entries for {k} "
                    "classes; give one per class, or balanced, or none"
                )
            return torch.tensor(choice, dtype=torch.float32)
        if choice == "none":
            return torch.ones(k)
        if values is None:
            return None
        labels = values().flatten().cpu()
        count = torch.bincount(labels[labels >= 0], minlength=k).double()  # NO_CLASS < 0: no label
        weight = torch.where(count > 0, count.sum() / (k * count.clamp_min(1)), 0.0)
        return (weight * k / weight.sum()).float()

    def carry_weights(self, head: nn.Module) -> nn.Module:
        """`head` with the loss's class weights in its buffer `class_weight`, saved with its
        weights, so a resumed or reloaded run weighs its loss as the one that trained it. A
        classification without class weights gets no buffer: its keys stay those of older
        checkpoints."""
        if not hasattr(head, "class_weight"):
            if self.cfg.class_weights == "none":
                return head
            head.register_buffer("class_weight", torch.ones(self.num_classes))
        if self.weights is not None:
            head.class_weight.copy_(self.weights)
        return head

    @property
    def num_classes(self) -> int:
        return len(self.info.classes or ())

    def head(self, backbone: Backbone) -> nn.Module:
        head = ClassificationHead(backbone.num_features, self.num_classes, self.cfg.head)
        return self.carry_weights(head)

    def loss(self, head: nn.Module, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = getattr(head, "class_weight", None)  # None: class_weights none
        return labelled_cross_entropy(out, target, weight, self.cfg.label_smoothing)

    def step_sums(self, pred: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        ok = labelled(target)  # per image, or per pixel
        return [((pred == target) & ok).sum() / ok.sum().clamp_min(1)]

    def epoch_metrics(self) -> MetricCollection:
        import torchmetrics  # imported when a meter is built: a recipe check needs no metrics

        kw = {"num_classes": self.num_classes, "validate_args": False, **self.metric_options}
        c = torchmetrics.classification
        return torchmetrics.MetricCollection(
            {
                name: getattr(c, kind)(average=avg, **kw)
                for name, (kind, avg) in self.measures.items()
            },
            # at a threshold, each metric is fed apart (`update_metrics`): no shared states
            compute_groups=self.threshold is None,
        )

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities (on dim 1) from the head's logits, or from the log of the
        test-time views' mean probabilities (cnnlab/tta.py), at the fitted temperature."""
        return (out.float() / self.temperature).softmax(dim=1)

    def nll(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    def outcomes(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top class's probability, and whether it is the true one."""
        confidence, predicted = logits.softmax(dim=1).max(dim=1)
        return confidence, (predicted == target).float()

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
        probabilities = self.probabilities(out)
        if self.threshold is None:
            metrics.update(probabilities, target)
            return
        from torchmetrics.classification import MulticlassStatScores

        # the counts (accuracy, precision, recall, F1, specificity, ...) of the answers at
        # the threshold; what reads the probabilities themselves (ECE, AUROC) reads them
        answers = self.threshold.answers(probabilities)
        for metric in metrics.values(copy_state=False):
            counts = isinstance(metric, MulticlassStatScores)
            metric.update(answers if counts else probabilities, target)

    def answers(self, head: nn.Module, out: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            return head.decode(out)
        return self.threshold.answers(self.probabilities(out))

    def caption(
        self, truth: torch.Tensor, pred: torch.Tensor, short: Callable[[str], str] = str
    ) -> tuple[str, bool]:
        names = self.info.classes or []
        t, p = int(truth), int(pred)
        if t == NO_CLASS:  # nothing to be right or wrong about
            return f"{short(names[p])}\n(no label)", False
        if t == p:
            return short(names[t]), False
        return f"✗ {short(names[p])}\n(true {short(names[t])})", True

    def worst(
        self, truth: torch.Tensor, pred: torch.Tensor, logits: torch.Tensor | None, n: int,
        short: Callable[[str], str] = str,
    ) -> Worst | None:  # fmt: skip
        """The wrong predictions made with the highest probability, at the fitted
        temperature: where a wrong label, or two classes the model confuses, shows first.
        `logits` has a row per labelled image (calibration's rows leave the others out)."""
        if logits is None or truth.ndim != 1:  # no row per image
            return None
        rows = labelled(truth).nonzero().squeeze(1)  # the images with a label
        if len(logits) != len(rows):
            return None
        answers = pred[rows] if self.threshold is not None else None  # else the top class
        at, said, sure, true_p = confident_errors(logits, truth[rows], self.temperature, n, answers)
        index = rows[at]
        names = self.info.classes or []
        lines = [
            f"✗ {short(names[p])} {s:.0%}\n(true {short(names[int(truth[i])])} {t:.0%})"
            for i, p, s, t in zip(index.tolist(), said.tolist(), sure.tolist(), true_p.tolist(),
                                  strict=True)
        ]  # fmt: skip
        wrong = int((pred[rows] != truth[rows]).sum())
        at = f" at the fitted temperature {self.temperature:.3g}" if self.temperature != 1 else ""
        of = "" if len(rows) == len(truth) else " labelled"
        return Worst(
            index,
            lines,
            "wrong with the most confidence",
            f"{wrong:,} of {len(rows):,}{of} test images are wrong; these {len(index)} most surely"
            f"{at} (the predicted class's probability, and the true class's). A label that "
            "looks wrong here is worth checking in the data; two classes that keep swapping "
            "are the model's to learn.",
        )


def labelled_cross_entropy(
    out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy's mean over the labelled rows (or pixels), weighted by `weight` as torch
    weighs its mean: the sum over them over their summed class weights. A batch without a
    label gives 0 and a gradient of 0, where torch's mean gives NaN (0 / 0); no host sync."""
    total = F.cross_entropy(
        out.float(), target, weight=weight, ignore_index=NO_CLASS,
        label_smoothing=smoothing, reduction="sum",
    )  # fmt: skip
    ok = labelled(target)
    counted = ok.sum() if weight is None else (weight[target.clamp_min(0)] * ok).sum()
    return total / torch.where(counted > 0, counted, 1)


def confident_errors(
    logits: torch.Tensor, truth: torch.Tensor, temperature: float, n: int,
    answers: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(index, predicted class, its probability, the true class's probability) of the at
    most `n` wrong predictions made with the highest probability, at `temperature`; the
    prediction is the top class, or each row's class in `answers` (a fitted threshold's)."""
    probs = (logits.double() / temperature).softmax(1)
    confidence, predicted = probs.max(1)
    if answers is not None:
        predicted = answers.to(predicted.device, predicted.dtype)
        confidence = probs.gather(1, predicted[:, None]).squeeze(1)
    wrong = (predicted != truth).nonzero().squeeze(1)
    index = wrong[confidence[wrong].argsort(descending=True, stable=True)[:n]]
    return index, predicted[index], confidence[index], probs[index, truth[index]]
