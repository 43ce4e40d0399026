"""A finished run as the figures see it: recipe, metrics, best weights, data, predictions.

Everything is read from the run folder (recipe.yaml, metrics.jsonl, checkpoints/best.pt
loaded with weights_only=True) and rebuilt through the one build path training used
(`cnnlab.build`), so figures show exactly the split and model the run was evaluated on.
Nothing here touches training state (optimizer, last.pt, rng); the one file it writes is
a cache, the test predictions it keeps for the next look (`keep_predictions`).
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import torch

from cnnlab.build import Built, build, saved_precision, saved_tasks
from cnnlab.data.base import ImageSet
from cnnlab.data.batches import Splits
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import Recorder, SplitPredictions
from cnnlab.models import MultiTaskModel
from cnnlab.precision import autocast_for
from cnnlab.recipe import Recipe
from cnnlab.runs import RunFolder, load_checkpoint
from cnnlab.tasks import Task, evaluate
from cnnlab.tta import ViewAverage
from cnnlab.viz.hooks import activation_modules, analysis_mode, last_conv

KEPT_FORMAT = 2  # of the test predictions a report keeps (SplitPredictions.state)
KEPT_BYTES = 256 << 20  # larger test predictions (large masks) are made again at each look


def digest(split: ImageSet) -> str:
    """A hash of a split's pixels and targets, read a few thousand images at a time (a
    mapped split is not loaded whole)."""
    h = hashlib.blake2b(digest_size=16)
    images = split.images
    for start in range(0, len(split), 4096):
        h.update(images[start : start + 4096].cpu().contiguous().numpy())
    for name in sorted(split.targets):
        h.update(name.encode())
        h.update(split.targets[name].cpu().contiguous().numpy())
    return h.hexdigest()


def figures_recorder(tasks: dict[str, Task], images: int) -> Recorder:
    """What the figures read from a pass over a split of `images`: every task's targets and
    predictions, the last conv layer's peaks, which units of the activation layers fired,
    the rows of the reliability diagrams and the ROC curves."""
    rows_of = [name for name, t in tasks.items() if {"reliability", "roc"} & set(t.figures)]
    return Recorder(tasks, lambda model: last_conv(model)[1], rows_of, images, activation_modules)


class RunView:
    """Lazy access to one run; each heavy part (data, model, predictions) is built once."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        path = Path(path)
        if not path.is_dir():
            raise CnnlabError(f"{path} is not a folder; give a run folder such as runs/<run>")
        self.run = RunFolder.open(path)
        self.run.check_trained("figures and predictions")
        self.recipe: Recipe = self.run.recipe()
        self.device = torch.device(device)

    def share_splits(self, splits: Splits) -> None:
        """Use data another view of the same data section, seed and layout has loaded (a
        sweep's runs share it): loading is the slow part of looking inside many runs."""
        self._shared = splits

    @property
    def name(self) -> str:
        """The run folder's name, e.g. fashion_fast-20261205-101500."""
        return self.run.path.name

    @cached_property
    def checkpoint(self) -> dict:
        return load_checkpoint(self.run.best_path, "cpu")

    @property
    def precision(self) -> str:
        """The precision the run trained and was tested in: predictions drawn in another one
        would not match the reported test metrics (a confusion matrix whose diagonal
        disagrees with the accuracy above it)."""
        return saved_precision(self.checkpoint, self.recipe)

    @property
    def classes(self) -> dict[str, list[str]]:
        """Class names per categorical target, as saved with the weights."""
        return self.checkpoint["classes"]

    @cached_property
    def tasks(self) -> dict[str, Task]:
        """The run's tasks, told their classes by the checkpoint: no data is loaded for a
        figure that needs only the metrics."""
        return saved_tasks(self.recipe, self.checkpoint)

    def task_classes(self, task: str) -> list[str]:
        return list(self.tasks[task].info.classes or [])

    def tasks_with(self, figure: str) -> list[str]:
        """The tasks a figure family applies to (`Task.figures`)."""
        return [name for name, t in self.tasks.items() if figure in t.figures]

    def metrics(self) -> list[dict]:
        """One dict per epoch, as metrics.jsonl holds them: train, val, lr, seconds."""
        return self.run.read_metrics()

    def test_metrics(self) -> dict:
        """The best checkpoint's test metrics, as test_metrics.json holds them."""
        return self.run.test_metrics()

    @cached_property
    def built(self) -> Built:
        """The run rebuilt with its best weights: data, tasks, model, test-time views.
        Normal tensors even when first asked for inside inference_mode: guided backprop
        later needs autograd through the same data and weights."""
        with torch.inference_mode(False):
            shared = getattr(self, "_shared", None)
            built = build(
                self.recipe, self.checkpoint, device=self.device, weights="judged", splits=shared
            )
            built.model.requires_grad_(False)
            built.model.eval()
            return built

    @property
    def splits(self) -> Splits:
        return self.built.splits

    @property
    def model(self) -> MultiTaskModel:
        """Best weights in a freshly built model, eval mode, gradients off. Called on
        `batch(split, index)` it returns a dict: each task's name to its raw output, before
        any softmax or temperature (`task.probabilities(out)` gives a classification's;
        `model.predict(x)` the answers: class indices, numbers in the target's units), a
        per-pixel task's as (B, classes, H, W): what a figure of masks needs, where
        `test_predictions` keep only a sample of each image's pixels. Called as it is, it
        runs in fp32, as the built-in figures do; the test pass ran in `precision`."""
        return self.built.model

    @property
    def views(self) -> ViewAverage | None:
        """The recipe's test-time views: the figures show what the test metrics measured."""
        return self.built.views

    def split(self, name: str) -> ImageSet:
        """A split (train, val, test) as uint8 images (N, C, H, W) and `targets` by name."""
        return getattr(self.splits, name)

    def batch(self, split: str, index: torch.Tensor) -> torch.Tensor:
        """Normalized model input for chosen images of a split: (B, C, H, W)."""
        images = self.split(split).images[index.to(self.device)].float().div_(255)
        x, _ = self.splits.finish(images, {}, set())
        return x

    def batches(self, split: str):
        """Batches as the test evaluation made them: the same batch size, so the same
        kernels and the same rounding in bf16."""
        needed = {t.target for t in self.recipe.tasks.values()}
        return self.splits.eval_batches(split, self.built.eval_batch_size, needed)

    def share_predictions(self, predictions: SplitPredictions) -> None:
        """Use the test set's predictions the pass that measured it gathered (`cnnlab
        train`): the same weights, precision, batches and views as `predict` would use."""
        self.__dict__["test_predictions"] = predictions

    @cached_property
    def test_predictions(self) -> SplitPredictions:
        """The test set's targets and predictions, from one pass every figure shares, or as
        the last report kept them for these weights and this test set."""
        kept = self._kept_predictions()
        if kept is not None:
            self.predictions_kept = True
            return kept
        return self.predict("test")

    predictions_kept = False  # test_predictions came from the run folder, not a pass

    def predictions_key(self) -> dict:
        """What kept test predictions must match: the best checkpoint as it is on disk, and
        the test split's every pixel and target (a label fixed in place counts)."""
        stat = self.run.best_path.stat()
        return {"kept": KEPT_FORMAT, "best": [stat.st_size, stat.st_mtime_ns], "test": self._test}

    @cached_property
    def _test(self) -> str:
        """The test split's digest, read once (a stale file's check, then its replacement)."""
        return digest(self.split("test"))

    def keep_predictions(self) -> None:
        """Save the test predictions the figures read, if a pass made them here, for the
        next report, `cnnlab viz` or notebook on the same weights and test set: they skip a
        pass over the test set with every view (the demo's 10,000 images, ten views each:
        its report 7.8 s -> 5.5 s). Beside the best weights, read with weights_only=True; a
        cache: a folder that cannot be written to keeps nothing, and says nothing."""
        made = "test_predictions" in self.__dict__ and not self.predictions_kept
        if not made or self.test_predictions.nbytes() > KEPT_BYTES:
            return
        state = {"key": self.predictions_key(), "predictions": self.test_predictions.state()}
        try:
            self.run.save_checkpoint(self.run.predictions_path, state)
        except OSError:  # a run folder shared read-only, a full disk: the next look makes them
            return
        self.predictions_kept = True

    def _kept_predictions(self) -> SplitPredictions | None:
        path = self.run.predictions_path
        if not path.is_file():
            return None
        try:
            state = load_checkpoint(path)
        except CnnlabError:  # unreadable: made again, and kept again by the next report
            return None
        if state.get("key") != self.predictions_key():
            return None
        return SplitPredictions.from_state(state["predictions"])

    @torch.inference_mode()
    def predict(self, split: str) -> SplitPredictions:
        """One pass over a split: decoded predictions, targets, and what the figures read
        besides (`figures_recorder`)."""
        recorder = figures_recorder(self.tasks, len(self.split(split)))
        autocast = autocast_for(self.device, self.precision)
        with analysis_mode(self.model), recorder.watching(self.model):
            evaluate(self.model, None, self.batches(split), autocast, self.views, recorder.add)
        return recorder.result()
