"""Test-set metrics of a model: what the end of training and `cnnlab eval` report.

`cnnlab eval` rebuilds the run through the one build path with its best weights and
measures them here: no optimizer; of the run folder, only an untested run's
test_metrics.json is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnlab.build import build
from cnnlab.data.batches import Splits
from cnnlab.precision import autocast_for
from cnnlab.runs import RunFolder, load_checkpoint, write_json
from cnnlab.tasks import EpochMeter, Task, evaluate
from cnnlab.tasks.calibration import Rows, batch_rows, share_kept
from cnnlab.tta import ViewAverage

Modules = Callable[[nn.Module], dict[str, nn.Module]]  # model -> the modules to watch, by name


def unit_max(y: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) -> (C,) each unit's largest output; (B,) -> (1,), one unit. A
    channels-last map is reduced as rows of W * C values, then over W: reducing (B*H*W, C)
    straight down its short rows, or `(y > 0).any(...)` on the mask, took 10-20x longer (a
    batch of seed 002 at 224 px: 28 ms against 260-590)."""
    if y.dim() == 1:
        return y.amax().view(1)
    last = y.movedim(1, -1)
    if y.dim() > 2 and last.is_contiguous():
        return (
            last.reshape(-1, last.shape[-2] * last.shape[-1]).amax(0).view(-1, y.shape[1]).amax(0)
        )
    return y.amax(dim=[d for d in range(y.dim()) if d != 1])


@dataclass
class SplitPredictions:
    """Decoded predictions of the best model on one split, on the CPU."""

    truth: dict[str, torch.Tensor]  # task -> (N,) class index or target value
    pred: dict[str, torch.Tensor]  # task -> (N,)
    peaks: torch.Tensor  # (N, C) each image's max of each channel of the last conv layer
    # a classification's raw outputs (before its temperature) as rows: one per image, or a
    # sample of a mask's labelled pixels; what the reliability diagram bins
    rows: dict[str, Rows]
    # activation layer -> (units,) bool: did the unit output > 0 anywhere in some image (as
    # it is, not its test-time views); what the dead-units figure counts
    alive: dict[str, torch.Tensor] = field(default_factory=dict)
    # activation modules that ran more than once per forward (one module reused in several
    # places, whose uses cannot be told apart) -> how many times
    reused: dict[str, int] = field(default_factory=dict)

    def state(self) -> dict:
        """Plain tensors in plain dicts: what a file read with weights_only=True may hold."""
        rows = {k: {"logits": r.logits, "targets": r.targets} for k, r in self.rows.items()}
        return {
            "truth": self.truth, "pred": self.pred, "peaks": self.peaks, "rows": rows,
            "alive": self.alive, "reused": self.reused,
        }  # fmt: skip

    @staticmethod
    def from_state(state: dict) -> SplitPredictions:
        rows = {k: Rows(r["logits"], r["targets"]) for k, r in state["rows"].items()}
        return SplitPredictions(
            state["truth"], state["pred"], state["peaks"], rows, state["alive"], state["reused"]
        )

    def nbytes(self) -> int:
        tensors = [*self.truth.values(), *self.pred.values(), self.peaks, *self.alive.values()]
        tensors += [t for r in self.rows.values() for t in (r.logits, r.targets)]
        return sum(t.numel() * t.element_size() for t in tensors)


class Recorder:
    """What the figures read from a pass over a split, gathered by the pass that measures
    it: targets and decoded predictions, each image's per-channel peak of one layer (guided
    backprop picks its images by them: `layer(model)`, the last conv), which units of
    `units(model)` (the activation layers) ever fired, and the raw outputs of `rows_of` as
    rows. `cnnlab train` hands its test pass's to the report, which would otherwise run the
    model over the test set again, with every test-time view, and over validation for the
    dead units."""

    def __init__(
        self,
        tasks: dict[str, Task],
        layer: Callable[[nn.Module], nn.Module] | None,
        rows_of: list[str],
        images: int,
        units: Modules | None = None,
    ):
        """`tasks`: those whose targets and answers are kept; `layer` None: no peaks;
        `images`: the split's length (a mask's rows are sampled to a share of it)."""
        self.tasks, self.layer, self.units, self.images = tasks, layer, units, images
        self.targets = {name: task.target for name, task in tasks.items()}
        self.truth: dict[str, list[torch.Tensor]] = {k: [] for k in tasks}
        self.pred: dict[str, list[torch.Tensor]] = {k: [] for k in tasks}
        self.rows: dict[str, list[Rows]] = {k: [] for k in rows_of}
        self.peaks: list[torch.Tensor] = []
        self.alive: dict[str, torch.Tensor] = {}
        self.reused: dict[str, int] = {}
        self._seen: list[torch.Tensor] = []
        self._forwards = 0  # of the batch under way: its views
        self._calls: Counter = Counter()  # of each unit module, in the batch's first forward
        self._gen = torch.Generator().manual_seed(0)

    @contextmanager
    def watching(self, model: nn.Module) -> Iterator[None]:
        """Hooks that act in each batch's first forward only: the first test-time view is
        the image as it is, so the peaks and units stay those of the image as it is."""
        modules = self.units(model) if self.units is not None else {}
        handles = [model.register_forward_pre_hook(self._count)]
        try:
            if self.layer is not None:
                handles.append(self.layer(model).register_forward_hook(self._peak))
            for name, module in modules.items():
                handles.append(module.register_forward_hook(self._fired(name)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _count(self, model: nn.Module, args) -> None:
        self._forwards += 1
        self._calls.clear()

    def _peak(self, module: nn.Module, inputs, y: torch.Tensor) -> None:
        if self._forwards == 1 and not self._seen:
            self._seen.append(y.float().amax(dim=(2, 3)).cpu())

    def _fired(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs, y: torch.Tensor) -> None:
            if self._forwards != 1:
                return
            self._calls[name] += 1
            if self._calls[name] > 1:  # its later uses cannot be told from its first
                self.reused[name] = max(self.reused.get(name, 0), self._calls[name])
                return
            fired = (unit_max(y) > 0).cpu()
            self.alive[name] = self.alive[name] | fired if name in self.alive else fired

        return hook

    def add(self, model: nn.Module, out: dict[str, torch.Tensor], targets: dict) -> None:
        """One batch's outputs (averaged over the views) and targets."""
        self._forwards = 0
        if self.layer is not None:
            self.peaks.append(self._seen.pop())
        for name, parts in self.rows.items():
            keep = share_kept(out[name], self.images)
            parts.append(batch_rows(out[name], targets[self.targets[name]], keep, self._gen))
        for name, target in self.targets.items():
            self.truth[name].append(targets[target].cpu())
            self.pred[name].append(self.tasks[name].answers(model.heads[name], out[name]).cpu())

    def result(self) -> SplitPredictions:
        return SplitPredictions(
            {k: torch.cat(v) for k, v in self.truth.items()},
            {k: torch.cat(v) for k, v in self.pred.items()},
            torch.cat(self.peaks) if self.peaks else torch.empty(0, 0),
            {k: Rows.join(v) for k, v in self.rows.items()},
            dict(self.alive),
            dict(self.reused),
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


# a run in one of these states goes on when resumed, and its own test ends it
CONTINUES = ("running", "interrupted", "trained")


def evaluate_run(path: str | Path, split: str = "test") -> dict[str, float]:
    """`cnnlab eval`: a split's metrics of a run's best checkpoint, with the recipe's
    test-time views, in the precision it trained in. A finished run that was never tested
    (a sweep's trial) keeps its first test in test_metrics.json, as training's test would:
    `cnnlab compare`, `report` and a sweep's `select` read it there."""
    run = RunFolder.open(path)
    run.check_trained("eval")
    best = load_checkpoint(run.best_path)
    built = build(run.recipe(), best, weights="judged")
    autocast = autocast_for(built.device, built.precision.precision)
    size = built.eval_batch_size
    views = built.views if split == "test" else None  # validation is single-view
    metrics = measure(built.tasks, built.splits, built.model, autocast, size, views, split)
    result = {"best_epoch": best["loop"]["epoch"], **metrics}
    untested = split == "test" and not run.test_path.is_file()
    if untested and run.status().get("state") not in CONTINUES:
        with run.lock():
            write_json(run.test_path, result)
    return result
