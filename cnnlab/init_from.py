"""`train.init_from`: a new run whose model starts at a trained run's weights.

A resume continues a run exactly (its recipe, optimizer, schedule, batch order), so a run
that has finished has nothing left to continue. Training on from it is a new run: its own
recipe (epochs, rate, schedule, data), with the whole model, backbone and heads, starting
at the weights the old run was judged by (those its test scored: the average where it kept
one). Nothing else comes along: not its optimizer state, nor its schedule, nor a fitted
temperature.

The folder and its checkpoint are read before any data is, and the architecture is checked
against a model built from the data's headers, so a mismatch stops before any pixel is read
and no run folder is made. Two things are the new run's own, not the old one's: a head
whose task now has another number of classes (fine-tuning onto new classes) starts fresh,
said in a line, and the loss's class weights (`class_weights`, a buffer of the head) come
from the new recipe and data. A regression head keeps the old run's target mean and std,
the units its weights were learned in.

Only a fresh run reads it: `build(recipe, saved)` for a resume (or eval, or a figure) never
looks at `init_from`, as the run's own last.pt holds everything, whether or not the old run
is still there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.recipe import Recipe, flatten
from cnnlab.runs import CHECKPOINT_FORMAT, RunFolder
from cnnlab.safe_load import torch_load
from cnnlab.tasks import Task

FIELD = "train.init_from"


@dataclass
class Start:
    """A trained run's judged weights, as a new run starts from them."""

    given: str  # train.init_from as the recipe says it
    path: Path  # the checkpoint read
    state: dict[str, torch.Tensor]  # its `model`: the judged weights
    epoch: int | None  # the epoch they are from (None: not recorded)
    classes: dict[str, list[str] | None] = field(default_factory=dict)  # by target
    recipe: dict = field(default_factory=dict)  # the run's recipe as saved ({}: not recorded)

    def describe(self) -> str:
        """`weights from runs/x (epoch 3)`: the line a run starts with."""
        return f"weights from {self.given}" + (
            f" (epoch {self.epoch})" if self.epoch is not None else ""
        )


# ------------------------------------------------------------------------- reading


def read_start(recipe: Recipe) -> Start | None:
    """The weights `train.init_from` names, read and checked (no data is read); None
    without it."""
    given = recipe.train.init_from
    if given is None:
        return None
    if getattr(recipe.model, "weights", None):
        raise CnnlabError(
            f"{FIELD} and model.weights both give starting weights, and the run's hold the "
            "backbone's too; drop model.weights"
        )
    file = checkpoint_file(given)
    try:
        saved = torch_load(file, "cpu")
    except CnnlabError as err:
        raise CnnlabError(f"{FIELD}: {err}") from None
    if not isinstance(saved, dict):
        saved = {}
    state = saved.get("model")
    if saved.get("format") != CHECKPOINT_FORMAT or not _named_tensors(state):
        raise CnnlabError(
            f"{FIELD}: {file} is not a cnnlab checkpoint; give a run folder or its "
            "checkpoints/best.pt (pretrained weights of a timm backbone go in model.weights)"
        )
    epoch = (saved.get("loop") or {}).get("epoch")
    if epoch is None:  # checkpoints/epoch_NNN.pt (train.keep_every) holds only the weights
        number = re.fullmatch(r"epoch_(\d+)", file.stem)
        epoch = int(number[1]) if number else None
    return Start(given, file, state, epoch, saved.get("classes") or {}, saved.get("recipe") or {})


def checkpoint_file(given: str) -> Path:
    """The checkpoint `train.init_from` names: a run folder's best.pt, or the file itself."""
    path = Path(given).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise CnnlabError(
            f"{FIELD}: {given} not found; give a run folder (runs/<name>-<time>) or its "
            "checkpoints/best.pt or last.pt"
        )
    try:
        run = RunFolder.open(path)
        run.check_trained(FIELD)
    except CnnlabError as err:
        raise CnnlabError(str(err) if str(err).startswith(FIELD) else f"{FIELD}: {err}") from None
    return run.best_path


def _named_tensors(state: object) -> bool:
    return isinstance(state, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    )


# ------------------------------------------------------------------------- fitting


def fitted_state(
    model: nn.Module, start: Start, recipe: Recipe, tasks: dict[str, Task]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the state `model` starts from, the lines that say what did not come from the run).
    Every key and shape is checked first; a mismatch is one line naming the key."""
    mine = model.state_dict()
    fresh = heads_with_other_classes(start, tasks)
    before = {n for n, t in (start.recipe.get("tasks") or {}).items() if isinstance(t, dict)}
    added = [n for n in tasks if before and n not in before]  # a head of a task new here
    dropped = sorted(before - set(tasks))  # a head of a task this recipe no longer has

    def kept(key: str) -> bool:  # as built: a fresh head, the new run's class weights
        head = key.split(".")[1] if key.startswith("heads.") else None
        return _own(key) or head in fresh or head in added

    def left(key: str) -> bool:
        return key.startswith("heads.") and key.split(".")[1] in dropped

    theirs = {k: v for k, v in start.state.items() if not kept(k) and not left(k)}
    for key, value in mine.items():
        if kept(key):
            continue
        if key not in theirs:
            raise mismatch(start, recipe, key, f"is in the new model, not in {start.given}'s")
        if theirs[key].shape != value.shape:
            there, here = tuple(theirs[key].shape), tuple(value.shape)
            raise mismatch(start, recipe, key, f"has shape {there} there and {here} here")
    extra = [k for k in theirs if k not in mine]
    if extra:
        raise mismatch(start, recipe, extra[0], f"is in {start.given}'s model, not the new one")
    lines = [
        f"tasks.{name}'s head starts fresh: {start.given} had {old} classes, this run has "
        f"{new}; the backbone and the other heads start from its weights"
        for name, (old, new) in fresh.items()
    ]
    lines += [f"tasks.{name}'s head starts fresh: {start.given} had no such task" for name in added]
    lines += [
        f"{start.given}'s tasks.{name} is not in this recipe: its head is left" for name in dropped
    ]
    return {k: theirs.get(k, v) for k, v in mine.items()}, lines


def _own(key: str) -> bool:
    """A head's loss class weights: the new recipe's and data's, not the old run's."""
    return key.startswith("heads.") and key.endswith(".class_weight")


def heads_with_other_classes(start: Start, tasks: dict[str, Task]) -> dict[str, tuple[int, int]]:
    """Task name -> (the run's class count, this run's), for each task of both whose target
    now has another number of classes."""
    fresh = {}
    for name, task in tasks.items():
        classes = getattr(getattr(task, "info", None), "classes", None)
        before = (start.recipe.get("tasks") or {}).get(name)
        if not classes or not isinstance(before, dict):
            continue
        old = start.classes.get(before.get("target"))
        if old and len(old) != len(classes):
            fresh[name] = (len(old), len(classes))
    return fresh


def mismatch(start: Start, recipe: Recipe, key: str, problem: str) -> CnnlabError:
    """One line: the key, how it differs, and where the recipes differ when they say."""
    section = f"tasks.{key.split('.')[1]}" if key.startswith("heads.") else "model"
    return CnnlabError(
        f"{FIELD} {start.given}: key {key!r} {problem}; this run's model must be built as that "
        f"run's was{differences(start.recipe, recipe, section)}, or drop {FIELD}"
    )


# fields of a model section that choose how it trains, not what it is
NOT_ARCHITECTURE = {"pretrained", "weights", "freeze", "train_stages", "backbone_lr", "unfreeze_at"}
NOT_ARCHITECTURE |= {"cache_features", "dropout", "weight", "loss", "label_smoothing"}
NOT_ARCHITECTURE |= {"class_weights", "standardize"}


def differences(before: dict, recipe: Recipe, section: str) -> str:
    """` (model.base_filters is 8 there, 16 here)`, up to three; `` when the saved recipe
    is missing or the section is alike: then the data (its channels, size or classes)."""
    if not before:
        return " (the same backbone and settings, the same tasks and heads)"
    now = recipe.model_dump(mode="json")
    old, new = _section(before, section), _section(now, section)
    if old is None or new is None:
        return f" ({section} is in one recipe only)"
    keys = [k for k in dict.fromkeys([*old, *new]) if k.split(".")[-1] not in NOT_ARCHITECTURE]
    said = [f"{section}.{k} is {old.get(k)!r} there, {new.get(k)!r} here" for k in keys]
    said = [s for s, k in zip(said, keys, strict=True) if old.get(k) != new.get(k)]
    if not said:
        return " (the recipes' sections are alike: the data differs, its channels, size or classes)"
    return f" ({'; '.join(said[:3])})"


def _section(recipe: dict, dotted: str) -> dict | None:
    node = recipe
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return flatten(node) if isinstance(node, dict) else None
