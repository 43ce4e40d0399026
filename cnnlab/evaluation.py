"""Test-set metrics of a model: what the end of training and `cnnlab eval` report.

`cnnlab eval` rebuilds the run through the one build path with its best weights and
measures them here: no optimizer, no run folder written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.build import build
from cnnlab.data.batches import Splits
from cnnlab.errors import CnnlabError
from cnnlab.precision import autocast_for
from cnnlab.runs import RunFolder, load_checkpoint
from cnnlab.tasks import EpochMeter, Task, evaluate
from cnnlab.tasks.calibration import Rows, batch_rows, share_kept
from cnnlab.tta import ViewAverage


@dataclass
class SplitPredictions:
    """Decoded predictions of the best model on one split, on the CPU."""

    truth: dict[str, torch.Tensor]  # task -> (N,) class index or target value
    pred: dict[str, torch.Tensor]  # task -> (N,)
    peaks: torch.Tensor  # (N, C) each image's max of each channel of the last conv layer
    # a classification's raw outputs (before its temperature) as rows: one per image, or a
    # sample of a mask's labelled pixels; what the reliability diagram bins
    rows: dict[str, Rows]

    def state(self) -> dict:
        """Plain tensors in plain dicts: what a file read with weights_only=True may hold."""
        rows = {k: {"logits": r.logits, "targets": r.targets} for k, r in self.rows.items()}
        return {"truth": self.truth, "pred": self.pred, "peaks": self.peaks, "rows": rows}

    @staticmethod
    def from_state(state: dict) -> SplitPredictions:
        rows = {k: Rows(r["logits"], r["targets"]) for k, r in state["rows"].items()}
        return SplitPredictions(state["truth"], state["pred"], state["peaks"], rows)

    def nbytes(self) -> int:
        tensors = [*self.truth.values(), *self.pred.values(), self.peaks]
        tensors += [t for r in self.rows.values() for t in (r.logits, r.targets)]
        return sum(t.numel() * t.element_size() for t in tensors)


class Recorder:
    """What the figures read from a pass over a split, gathered by the pass that measures
    it: targets and decoded predictions, each image's per-channel peak of one layer (guided
    backprop picks its images by them: `layer(model)`, the last conv), and the raw outputs
    of `rows_of` as rows. `cnnlab train` hands its test pass's to the report, which would
    otherwise run the model over the test set again, with every test-time view."""

    def __init__(
        self,
        targets: dict[str, str],
        layer: Callable[[nn.Module], nn.Module] | None,
        rows_of: list[str],
        images: int,
    ):
        """`targets`: each task's target; `layer` None: no peaks; `images`: the split's
        length (a mask's rows are sampled to a share of it)."""
        self.targets, self.layer, self.images = targets, layer, images
        self.truth: dict[str, list[torch.Tensor]] = {k: [] for k in targets}
        self.pred: dict[str, list[torch.Tensor]] = {k: [] for k in targets}
        self.rows: dict[str, list[Rows]] = {k: [] for k in rows_of}
        self.peaks: list[torch.Tensor] = []
        self._seen: list[torch.Tensor] = []
        self._gen = torch.Generator().manual_seed(0)

    @contextmanager
    def watching(self, model: nn.Module) -> Iterator[None]:
        """The layer's peaks of each batch's first forward: the first test-time view is the
        image as it is, so they stay those of the image as it is."""

        def hook(module: nn.Module, inputs, y: torch.Tensor) -> None:
            if not self._seen:
                self._seen.append(y.float().amax(dim=(2, 3)).cpu())

        if self.layer is None:
            yield
            return
        handle = self.layer(model).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def add(self, model: nn.Module, out: dict[str, torch.Tensor], targets: dict) -> None:
        """One batch's outputs (averaged over the views) and targets."""
        if self.layer is not None:
            self.peaks.append(self._seen.pop())
        for name, parts in self.rows.items():
            keep = share_kept(out[name][0, 0].numel(), self.images)
            parts.append(batch_rows(out[name], targets[self.targets[name]], keep, self._gen))
        for name, target in self.targets.items():
            self.truth[name].append(targets[target].cpu())
            self.pred[name].append(model.heads[name].decode(out[name]).cpu())

    def result(self) -> SplitPredictions:
        return SplitPredictions(
            {k: torch.cat(v) for k, v in self.truth.items()},
            {k: torch.cat(v) for k, v in self.pred.items()},
            torch.cat(self.peaks) if self.peaks else torch.empty(0, 0),
            {k: Rows.join(v) for k, v in self.rows.items()},
        )


@torch.inference_mode()
def measure(
    tasks: dict[str, Task],
    splits: Splits,
    model: nn.Module,
    autocast: Callable,
    batch_size: int,
    views: ViewAverage | None = None,
    split: str = "test",
    recorder: Recorder | None = None,
) -> dict[str, float]:
    """`model`'s metrics on one split, averaged over `views` when given; with how well
    its probabilities are calibrated (ECE, MCE), at the tasks' temperatures. `recorder`
    gathers what the figures read from the same pass."""
    device = next(model.parameters()).device
    meter = EpochMeter(tasks, device, calibration=True)
    needed = {t.target for t in tasks.values()}
    batches = splits.eval_batches(split, batch_size, needed)
    with recorder.watching(model) if recorder else nullcontext():
        evaluate(model, meter, batches, autocast, views, recorder and recorder.add)
    return meter.compute(split)


def evaluate_run(path: str | Path, split: str = "test") -> dict[str, float]:
    """`cnnlab eval`: a split's metrics of a run's best checkpoint, with the recipe's
    test-time views, in the precision it trained in."""
    run = RunFolder.open(path)
    if not run.best_path.is_file():
        raise CnnlabError(
            f"{run.path} has no checkpoints/best.pt yet; evaluate a run that finished an epoch"
        )
    best = load_checkpoint(run.best_path)
    built = build(run.recipe(), best, weights="judged")
    autocast = autocast_for(built.device, built.precision.precision)
    size = built.eval_batch_size
    views = built.views if split == "test" else None  # validation is single-view
    metrics = measure(built.tasks, built.splits, built.model, autocast, size, views, split)
    return {"best_epoch": best["loop"]["epoch"], **metrics}
