"""Do a model's probabilities mean what they say? Calibration error, reliability bins and
temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

Everything works on rows: one row of logits (K,) per image (or one logit, a head of one's
own that answers yes or no), or per labelled pixel of a per-pixel task, with its target as
the task reads it (a class; a multi-label task's K yes/no values; a number it compares). A
temperature T divides the logits before they become probabilities (the task's softmax or
sigmoid: `Task.nll`, `Task.outcomes`); it changes no argmax, only how sure each prediction
claims to be. It is fitted by minimizing the negative log-likelihood on the validation set,
which a single positive number cannot overfit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cnnlab.tasks.base import NO_CLASS, Task

MAX_ROWS = 1 << 20  # rows kept per split and task: every image; a sample of a mask's pixels


@dataclass
class Rows:
    """A split's logits as rows, (N, K) or (N,), with their targets: classes (N,), a
    multi-label task's (N, K), or what a task of one's own reads; on the CPU."""

    logits: torch.Tensor
    targets: torch.Tensor

    @staticmethod
    def join(parts: list[Rows]) -> Rows:
        return Rows(torch.cat([p.logits for p in parts]), torch.cat([p.targets for p in parts]))


def batch_rows(out: torch.Tensor, target: torch.Tensor, keep: float, gen: torch.Generator) -> Rows:
    """One batch's rows: (B, K) or (B,) as they are; (B, K, H, W) as one row per labelled
    pixel, a `keep` share of them drawn with `gen` (so a split of masks fits in memory).
    Integer targets become int64 (classes, pixel labels; NO_CLASS dropped); floating ones
    stay as they are, for the task to read (a yes/no it derives from a number)."""
    out = out.detach().float()
    if not target.is_floating_point():
        target = target.long()
    if out.ndim > 2:
        out, target = out.movedim(1, -1).reshape(-1, out.shape[1]), target.reshape(-1)
    elif target.ndim > 1 or target.is_floating_point():  # every row labelled
        return Rows(out.cpu(), target.cpu())
    labelled = target != NO_CLASS
    if keep < 1.0:
        labelled &= torch.rand(target.shape, generator=gen, device="cpu").to(target.device) < keep
    if not bool(labelled.all()):
        out, target = out[labelled], target[labelled]
    return Rows(out.cpu(), target.cpu())


def share_kept(out: torch.Tensor, images: int, limit: int = MAX_ROWS) -> float:
    """The share of a batch's rows to keep so a split of `images` yields about `limit`: a
    (B, K, H, W) map makes a row per pixel, any other output one per image."""
    rows_per_image = out[0, 0].numel() if out.ndim > 2 else 1
    return min(1.0, limit / max(1, rows_per_image * images))


# Logits that tell nothing have no NLL minimum: T runs off (seen: 4e5), and logits / T then
# tie in float32, which moved the argmax, so the accuracy, of a temperature that should
# move neither. At 100 a model's probabilities are as near uniform as a user can read.
MAX_TEMPERATURE = 100.0


def made_worse(before: float, after: float) -> bool:
    """Whether a temperature raised an NLL (`before` at T = 1, `after` at the fitted T)
    beyond float noise (0.1 %): the fit lowered it on validation, and the test set may
    still disagree."""
    return after > before * (1 + 1e-3)


def fit_temperature(task: Task, rows: Rows) -> float:
    """The T > 0 that minimizes the task's NLL of logits / T (L-BFGS on log T), at most
    MAX_TEMPERATURE."""
    with torch.inference_mode(False), torch.enable_grad():
        logits, targets = rows.logits.clone(), rows.targets.clone()
        log_t = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = task.nll(logits / log_t.exp(), targets)
            loss.backward()
            return loss

        opt.step(closure)
        value = float(log_t.detach().exp())
    if not math.isfinite(value):  # NLL without a minimum: every row right (or wrong) alike
        return 1.0
    return min(value, MAX_TEMPERATURE)


@dataclass
class Bins:
    """Equal-width confidence bins: each bin's row count, mean confidence and accuracy."""

    edges: torch.Tensor  # (bins + 1,)
    count: torch.Tensor  # (bins,)
    confidence: torch.Tensor  # (bins,) NaN where empty
    accuracy: torch.Tensor  # (bins,) NaN where empty


def _outcomes(task: Task, rows: Rows, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every prediction's confidence and whether it is right, flat (`Task.outcomes`)."""
    confidence, correct = task.outcomes(rows.logits / temperature, rows.targets)
    return confidence.flatten(), correct.flatten()


def _binned(confidence: torch.Tensor, correct: torch.Tensor, bins: int) -> Bins:
    edges = torch.linspace(0, 1, bins + 1)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).float()
    per_bin = lambda v: torch.bincount(index, v, minlength=bins) / count  # noqa: E731
    return Bins(edges, count, per_bin(confidence), per_bin(correct))


def judged(
    task: Task, rows: Rows, temperature: float = 1.0, bins: int = 15
) -> tuple[Bins, dict[str, float]]:
    """The reliability bins of the task's predictions at logits / T (a classification's top
    label: the diagram of the ECE, binned as torchmetrics bins, an edge going to the bin
    above), and their accuracy (the share of predictions right), NLL, ECE and MCE. The errors
    come from the diagram's own bins, which equal torchmetrics' (the test metrics' ECE and
    MCE; a test compares them): the numbers under a diagram are the diagram's, and a report
    does not import torchmetrics (1-2 s) to draw one."""
    confidence, correct = _outcomes(task, rows, temperature)
    b = _binned(confidence, correct, bins)
    gap = (b.accuracy - b.confidence).abs().nan_to_num()  # an empty bin: no gap
    return b, {
        "accuracy": float(correct.mean()),
        "nll": float(task.nll(rows.logits / temperature, rows.targets)),
        "ece": float((gap * b.count).sum() / b.count.sum()),
        "mce": float(gap.max()),
    }


def scores(task: Task, rows: Rows, temperature: float = 1.0, bins: int = 15) -> dict[str, float]:
    """`judged`'s numbers alone."""
    return judged(task, rows, temperature, bins)[1]
