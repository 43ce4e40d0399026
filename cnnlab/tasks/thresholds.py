"""A decision threshold for a classification of two classes: how likely one class (the one
that must not be missed: a disease, a defect) must be before the model answers it.

The top class answers at a probability of one half, which finds as many of the class's
images as it happens to. A user who must find 95 % of them asks for that recall, and the
threshold is the probability of the class that finds it: split conformal on validation's
images of the class (as an interval is on its values, tasks/intervals.py), the
ceil((n + 1) * recall)-th highest of their n probabilities. A new image of the class is then
answered as it with probability at least `recall` whenever it and the validation images are
exchangeable (drawn alike); what it costs, the other class's images answered as it too, is
measured, not promised. With too few validation images of the class ((n + 1) * recall > n)
the threshold is 0: every image is answered as the class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Threshold:
    """The probability of class `positive` (named `name`) at or above which an image is
    answered as it, fitted to find the share `recall` of its images."""

    positive: int
    name: str
    recall: float
    probability: float

    def answers(self, probabilities: torch.Tensor) -> torch.Tensor:
        """(N,) class indices from (N, 2) probabilities: the class where its probability
        reaches the threshold, the other class elsewhere."""
        said = probabilities[:, self.positive] >= self.probability
        return torch.where(said, self.positive, 1 - self.positive)


def answered(probabilities: torch.Tensor, threshold: Threshold | None) -> torch.Tensor:
    """(N,) the class each row of (N, K) probabilities answers: the top class, or at a
    two-class task's fitted threshold."""
    return probabilities.argmax(1) if threshold is None else threshold.answers(probabilities)


def fit_threshold(
    probabilities: torch.Tensor, targets: torch.Tensor, positive: int, name: str, recall: float
) -> Threshold:
    """The split-conformal threshold of validation's (N, 2) `probabilities` and (N,) class
    indices `targets` (an unlabelled row counts in neither class) that finds `recall` of
    class `positive`."""
    scores = probabilities[targets == positive, positive].double().sort(descending=True).values
    if too_few(len(scores), recall):
        return Threshold(positive, name, recall, 0.0)
    return Threshold(
        positive, name, recall, float(scores[math.ceil((len(scores) + 1) * recall) - 1])
    )


def too_few(positives: int, recall: float) -> bool:
    """Whether `positives` validation images of a class are too few to promise `recall`
    (18 cannot promise 95 %): the threshold is 0 then, every image answered as the class."""
    return math.ceil((positives + 1) * recall) > positives


def found(probabilities: torch.Tensor, targets: torch.Tensor, threshold: Threshold) -> dict:
    """What the threshold does on a split's labelled images: the class's images (`positives`)
    and the share of them found (`recall`), the share of the other class's images answered
    as it too (`flagged`), and the share of the answers it that are right (`precision`;
    NaN where none is)."""
    ok = targets >= 0
    truth = targets[ok] == threshold.positive
    said = threshold.answers(probabilities[ok]) == threshold.positive
    return {"positives": int(truth.sum()), **rates(said, truth)}


def rates(said: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Answers (bool) against the truth (bool), per image: the share of the class found
    (`recall`), of the others answered as it too (`flagged`), of the answers that are
    right (`precision`); NaN where there is nothing to share (no answer: no precision)."""
    return {
        "recall": _share(said & truth, truth),
        "flagged": _share(said & ~truth, ~truth),
        "precision": _share(said & truth, said),
    }


def _share(part: torch.Tensor, whole: torch.Tensor) -> float:
    return float(part.sum()) / int(whole.sum()) if whole.any() else math.nan


def threshold_said(threshold: Threshold, result: dict | None = None) -> str:
    """`malignant at p ≥ 0.231, the threshold fitted to find 95% of its validation images
    (cnnlab calibrate --recall)`, and with a split's `found` result: `; on test it finds
    94.1% of them, flags 12.0% of the others, precision 61.2%`."""
    said = (
        f"{threshold.name} at p ≥ {threshold.probability:.3g}, the threshold fitted to find "
        f"{threshold.recall:.0%} of its validation images (cnnlab calibrate --recall)"
    )
    if result is None:
        return said
    return f"{said}; on the test images it {found_said(result)}"


def metrics_note(task: str, threshold: Threshold, result: dict | None = None) -> str:
    """Under a run's test metrics (the report, `cnnlab eval`): which answers they count."""
    return (
        f"{task}: answers {threshold_said(threshold, result)}; its test accuracy, precision, "
        "recall and F1 are of those answers"
    )


def saved(fitted: dict) -> Threshold:
    """A threshold as calibration.json and best.pt keep it (beside what it found)."""
    return Threshold(fitted["positive"], fitted["name"], fitted["recall"], fitted["probability"])


def found_said(result: dict) -> str:
    """`finds 94.1% of them (212 images), flags 12.0% of the others, precision 61.2%`."""
    return (
        f"finds {result['recall']:.1%} of them ({result['positives']:,} images), flags "
        f"{result['flagged']:.1%} of the others, precision {result['precision']:.1%}"
    )
