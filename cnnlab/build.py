"""One build path: a recipe, and optionally a saved checkpoint, into what a run needs.

Training, evaluation, the figures, the loss landscape, counting and the benchmarks all get
their tasks, data splits, model and precision from here, so a model is rebuilt from a run
folder exactly as it trained, and nothing that only looks at a model (eval, a figure)
builds an optimizer. Every check a recipe can fail happens while building, before a run
folder exists.

    check_data(recipe)          tasks, checked against the source's headers (no pixel)
    model_for_shapes(recipe)    the model from declared shapes: `cnnlab count`, no data needed
    build(recipe, saved)        tasks + splits + model (+ weights) + precision + test views

A fresh run whose recipe names `train.init_from` starts from that run's weights
(cnnlab/init_from.py); one built with `saved` (a resume, eval) never reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch

from cnnlab import distributed
from cnnlab.allocator import keep_freed_memory
from cnnlab.data import DataInfo, DataSection, describe, get_source
from cnnlab.data.batches import Splits, prepare_splits
from cnnlab.data.lines import quietly
from cnnlab.data.split import folds_refused
from cnnlab.distributed import Ranks
from cnnlab.errors import CnnlabError, did_you_mean, listed
from cnnlab.init_from import Start, fitted_state, read_start
from cnnlab.models import MultiTaskModel, create_model, for_checkpoint, owns_input
from cnnlab.models.compiled import compiled_kernels
from cnnlab.models.weights import check_weight_file
from cnnlab.precision import HALF, Choice, choose, probe_size
from cnnlab.recipe import Recipe, per_class_metric
from cnnlab.tasks import TargetSpec, Task, create_tasks, total_loss
from cnnlab.tasks.intervals import Interval
from cnnlab.tasks.thresholds import saved as saved_threshold
from cnnlab.tta import ViewAverage, run_views

Recall = float | Mapping[str, float]  # one share for every two-class task, or by class name

# --------------------------------------------------------------------------- device


def resolve_device(name: str) -> torch.device:
    """`train.device` as a torch device; `auto` takes a CUDA GPU, else Apple's MPS, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CnnlabError(
            f"train.device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnlabError(
            "train.device is cuda but no CUDA GPU is visible; use train.device=auto or cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()  # else the first tensor moved fails: invalid ordinal
        raise CnnlabError(
            f"train.device is {name} but {count} CUDA GPU{'s are' if count > 1 else ' is'} "
            f"visible (cuda:0 to cuda:{count - 1}); use train.device=cuda or one of those"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CnnlabError(
            "train.device is mps but MPS is not available; use train.device=auto or cpu"
        )
    return device


# ---------------------------------------------------------------------------- tasks


def target_spec(
    data: DataSection, classes: dict, components: dict[str, list[str]], target: str
) -> TargetSpec:
    """A target as the tasks see it: its classes or components from the source's description
    (or a checkpoint), and how the source reads a vector of it as a class (its config's
    `to_class`)."""
    return TargetSpec(
        classes=classes.get(target),
        components=components.get(target),
        to_class=type(data).to_class.get(target),
        per_pixel=data.per_pixel(target),
    )


def tasks_for(recipe: Recipe, info: DataInfo) -> dict[str, Task]:
    """The recipe's tasks checked against a description of the data: every target exists,
    and each task type accepts it (a classification needs a categorical target)."""
    if recipe.data.folds and info.validation == "given":
        raise folds_refused(info.source)
    tasks = create_tasks(recipe.tasks)
    for name, task in tasks.items():
        if task.target not in info.targets:
            raise CnnlabError(
                f"tasks.{name}.target {task.target!r} is not provided by {info.source}"
                f"{did_you_mean(task.target, info.targets)}; choose one of: "
                f"{', '.join(info.targets)}"
            )
        task.fit(target_spec(recipe.data, info.targets, info.components, task.target))
    check_metric_classes(recipe, tasks, recipe.train.monitor, "train.monitor")
    if recipe.train.early_stopping.metric:
        check_metric_classes(
            recipe, tasks, recipe.train.early_stopping.metric, "train.early_stopping.metric"
        )
    if recipe.train.recall:  # fitted after training: a wrong class said before it
        thresholds_asked(tasks, recipe.train.recall, "train.recall")
    return tasks


def check_metric_classes(recipe: Recipe, tasks: dict[str, Task], name: str, field: str) -> None:
    """A per-class metric (`val.diag.recall_of_nodule`) names a class or component its task
    has: the recipe alone cannot say, and an epoch without the value would have no best."""
    parts = per_class_metric(recipe, name)
    if parts is None:
        return
    key, metric, each = parts
    names = tasks[key].each
    if each in names:
        return
    if not names:
        raise CnnlabError(
            f"{field} {name!r}: tasks.{key}'s target has no classes or components, so its "
            f"{metric} is one number: val.{key}.{metric}"
        )
    raise CnnlabError(
        f"{field} {name!r}: tasks.{key} has no class or component {each!r}"
        f"{did_you_mean(each, names)}; its {metric} is reported for each of: "
        f"{listed(names, ', ')}"
    )


def thresholds_asked(
    tasks: dict[str, Task], recall: Recall | None, field: str = "calibrate --recall"
) -> dict[str, tuple[int, float]]:
    """Task name -> (the class to find, the share of its images) for each threshold asked:
    `recall` a share for every classification of two classes (its second class), or shares
    by class name (`malignant`, or `diag.malignant` where two tasks have the class). None:
    those the tasks have already (a calibration fitted again keeps its thresholds)."""
    if recall is None:
        fitted = {n: t.threshold for n, t in tasks.items() if t.threshold is not None}
        return {n: (t.positive, t.recall) for n, t in fitted.items()}
    two = {n: t.info.classes or [] for n, t in tasks.items() if t.thresholds}
    two = {n: classes for n, classes in two.items() if len(classes) == 2}
    if not two:
        raise CnnlabError(
            f"{field}: no task classifies each image into two classes; a threshold decides "
            "between two (a yes/no target: found or not), where more classes answer the "
            "likeliest"
        )
    named = {"": recall} if not isinstance(recall, Mapping) else dict(recall)
    asked = {}
    for key, share in named.items():
        if not 0 < share < 1:
            raise CnnlabError(
                f"{field} {key + '=' if key else ''}{share}: give the share of the "
                "class's images to find, between 0 and 1, e.g. 0.95"
            )
        if not key:  # every two-class task's second class
            asked |= {name: (1, share) for name in two}
            continue
        # a class named so (`v1.0` too), else `task.class` (a task's name has no dot)
        where = [(t, key) for t, classes in two.items() if key in classes]
        task, _, name = key.partition(".")
        if not where and name in two.get(task, []):
            where = [(task, name)]
        if len(where) != 1:
            raise _unmatched(key, two, [t for t, _ in where], field)
        task, name = where[0]
        asked[task] = (two[task].index(name), share)
    return asked


def _unmatched(key: str, two: dict[str, list[str]], where: list[str], field: str) -> CnnlabError:
    """A recall's class that no two-class task has, or that two have."""
    if where:
        said = " and ".join(f"tasks.{t}" for t in where)
        return CnnlabError(
            f"{field} {key}: {said} have class {key!r}; name the task too, e.g. {where[0]}.{key}"
        )
    known = [f"{t}.{c}" for t, classes in two.items() for c in classes]
    return CnnlabError(
        f"{field} {key}: no classification of two classes has class {key!r}"
        f"{did_you_mean(key, known + [k.split('.', 1)[1] for k in known])}; the classes of "
        f"those it can be given for: {', '.join(known)}"
    )


def check_data(recipe: Recipe) -> dict[str, Task]:
    """The recipe's tasks, checked against what its source provides from headers only (no
    pixel is read). Fitted with their classes; statistics need the pixels."""
    return tasks_for(recipe, describe(recipe.data))


def saved_tasks(recipe: Recipe, saved: dict) -> dict[str, Task]:
    """The tasks of a trained run, told their classes by its checkpoint: no data is read (a
    regression head's statistics come with the weights)."""
    tasks = create_tasks(recipe.tasks)
    components = saved.get("components", {})  # absent in older checkpoints
    for task in tasks.values():
        task.fit(target_spec(recipe.data, saved["classes"], components, task.target))
    return with_calibration(tasks, saved)


def with_calibration(tasks: dict[str, Task], saved: dict | None) -> dict[str, Task]:
    """The tasks as calibrated for the checkpoint's weights (`cnnlab calibrate`): at their
    fitted temperatures, so every prediction, metric and export gives the calibrated
    probabilities, a regression with its fitted interval, which predict gives, and a
    two-class task answering at its fitted threshold."""
    for name, value in ((saved or {}).get("temperature") or {}).items():
        if name in tasks:
            tasks[name].temperature = float(value)
    for name, fitted in ((saved or {}).get("interval") or {}).items():
        if name in tasks:
            tasks[name].interval = Interval(fitted["coverage"], list(fitted["halfwidth"]))
    for name, fitted in ((saved or {}).get("threshold") or {}).items():
        if name in tasks:
            tasks[name].threshold = saved_threshold(fitted)
    return tasks


def fit_to_pixels(recipe: Recipe, tasks: dict[str, Task], splits: Splits) -> None:
    """Tell the tasks what only the loaded data knows: a regression's statistics, the
    classes a source found while loading (a colorizer's palette)."""
    for task in tasks.values():
        values = lambda t=task.target: splits.values("train", t)  # noqa: E731
        spec = target_spec(recipe.data, splits.classes, splits.components, task.target)
        task.fit(spec, values)


# ---------------------------------------------------------------------------- model


def build_model(
    recipe: Recipe,
    tasks: dict[str, Task],
    shape: tuple[int, int, int],
    from_checkpoint: bool = False,
    channels_last: bool | None = None,
) -> MultiTaskModel:
    """The recipe's backbone with one head per task for (C, H, W) images. A model whose
    weights come from a checkpoint next fetches nothing pretrained (works offline)."""
    cfg = for_checkpoint(recipe.model) if from_checkpoint else recipe.model
    last = recipe.train.channels_last if channels_last is None else channels_last
    return create_model(cfg, shape[0], shape[1:], tasks, last)


def declared_info(recipe: Recipe) -> DataInfo:
    """What the source says without its files where it declares its shapes (CIFAR-10 is
    always 3x32x32 in ten classes), else its description from the files' headers."""
    source = get_source(recipe.data.source)
    if source.declares is not None and recipe.data.colorize is None:
        return source.declares(recipe.data)
    return describe(recipe.data)


def model_for_shapes(
    recipe: Recipe, shape: tuple[int, int, int] | None = None
) -> tuple[MultiTaskModel, tuple[int, int, int]]:
    """The recipe's model for one image shape (default: the source's), without loading any
    data: what `cnnlab count` measures. NCHW, as counting hooks see it."""
    info = declared_info(recipe)
    model = build_model(recipe, tasks_for(recipe, info), shape or info.shape, channels_last=False)
    return model, shape or info.shape


# ---------------------------------------------------------------------------- built


@dataclass
class Built:
    """What a run needs, from one recipe (and checkpoint): the loop trains it, eval and the
    figures look at it."""

    recipe: Recipe
    tasks: dict[str, Task]
    splits: Splits
    model: MultiTaskModel
    device: torch.device
    precision: Choice
    views: ViewAverage | None  # the recipe's test-time views
    ranks: Ranks = field(default_factory=Ranks)
    fused: bool = True  # train and test with the compiled CPU kernels (train.fused_kernels)
    eval_batch_size: int = 1000  # images per forward pass in validation and test, resolved
    start: Start | None = None  # the run whose weights a fresh run started from (init_from)
    started: list[str] = field(default_factory=list)  # what of them it did not take, in lines

    @property
    def needed(self) -> set[str]:
        """The targets the tasks read."""
        return {t.target for t in self.recipe.tasks.values()}


Weights = Literal["train", "judged"]


def build(
    recipe: Recipe,
    saved: dict | None = None,
    *,
    device: torch.device | str | None = None,
    ranks: Ranks | None = None,
    weights: Weights = "train",
    splits: Splits | None = None,
) -> Built:
    """Tasks, splits, model and precision for `recipe`.

    `saved`: a checkpoint the run continues from or is judged by. Its classes (a colorizing
    run's palette) are kept, not refitted; its precision is kept (predictions in another
    would not match the reported metrics); its weights are loaded: the ones training goes
    on from (`weights="train"`), or those the run is judged by (`"judged"`: the average when
    one was kept). `device`: default the recipe's. `ranks`: this process's place under
    torchrun (rank 0 times the precision for all). `splits`: data another build of the same
    data section has loaded (a sweep's runs share it)."""
    keep_freed_memory()  # also when built from Python, not the command line
    info = describe(recipe.data)
    tasks = tasks_for(recipe, info)  # a wrong target stops before any pixel is read
    if saved is None and getattr(recipe.model, "weights", None):  # read when the model is
        check_weight_file(recipe.model.weights)  # a run's checkpoint stops here, before data
    start = read_start(recipe) if saved is None else None  # a resume has its own weights
    if start is not None:  # the architecture, on a model of the headers' shapes: no pixel
        fitted_state(build_model(recipe, tasks, info.shape, True, False), start, recipe, tasks)
    if recipe.train.calibrate and not any(t.probabilistic or t.intervals for t in tasks.values()):
        raise CnnlabError(
            "train.calibrate: the recipe has no task with probabilities (a classification) "
            "for a temperature, nor a regression for an interval; set train.calibrate=false"
        )
    if recipe.train.threads and weights == "train":  # not when a run is read back: a sweep
        torch.set_num_threads(recipe.train.threads)  # trial's 1 thread would stay in a notebook
    device = torch.device(device) if device is not None else resolve_device(recipe.train.device)
    ranks = ranks or Ranks()
    torch.manual_seed(recipe.seed)
    if splits is None:  # a trained run's data read again says nothing of how (data/lines.py)
        with quietly() if weights == "judged" else nullcontext():
            splits = prepare_splits(
                recipe.data,
                recipe.seed,
                {t.target for t in recipe.tasks.values()},
                device,
                recipe.train.channels_last,
                saved.get("classes") if saved else None,
                normalize=not owns_input(recipe.model),
                saved_normalize=saved.get("normalize") if saved else None,
            )
    fit_to_pixels(recipe, tasks, splits)
    with_calibration(tasks, saved)
    shape = (splits.in_channels, *splits.image_size)
    loaded = saved is not None or start is not None  # nothing pretrained is fetched
    model = build_model(recipe, tasks, shape, from_checkpoint=loaded).to(device)
    started: list[str] = []
    if saved is not None:  # before precision is timed and a frozen backbone's features cached
        key = "train_model" if weights == "train" and "train_model" in saved else "model"
        model.load_state_dict(saved[key])
    elif start is not None:
        state, started = fitted_state(model, start, recipe, tasks)
        model.load_state_dict(state)
    views = run_views(recipe.train.tta, tasks, recipe.data, splits)
    fused = fused_kernels(recipe, splits)
    eval_size = eval_batch_size(recipe, model, shape, device)
    if saved is not None:
        precision = Choice(saved_precision(saved, recipe), "saved")
    else:  # timed with the kernels training will use: the unused ones are never compiled
        with compiled_kernels(fused):
            precision = choose_precision(recipe, tasks, splits, model, device, ranks)
    built = Built(recipe, tasks, splits, model, device, precision, views, ranks, fused, eval_size)
    built.start, built.started = start, started
    return built


# `train.eval_batch_size: auto`: at most EVAL_IMAGES images a forward pass, and no more than
# keep its largest maps within EVAL_BYTES. A fixed 1,000 put seed 002's network at 224 px
# (32 maps of 224 x 224 in its first block, in fp32 about 19.5 MB an image at the pass's
# peak, three times its largest map) at 19.5 GB a validation batch; at 1 GiB it takes 55
# images, and the demo (28 px) still 1,000. Fixed figures, not the free memory: the same
# recipe always cuts its batches alike, so the figures' passes round as the test's did.
EVAL_IMAGES = 1000
EVAL_BYTES = 1 << 30
PEAK_PER_MAP = 3  # a layer's input, its output and one temporary of that size at once


def eval_batch_size(
    recipe: Recipe, model: MultiTaskModel, shape: tuple[int, int, int], device: torch.device
) -> int:
    """`train.eval_batch_size` as a number: as given, or sized for `auto` from the largest
    map one image makes in this model (one forward pass of a blank image, in fp32)."""
    if recipe.train.eval_batch_size != "auto":
        return recipe.train.eval_batch_size
    return images_per_pass(model, torch.zeros(1, *shape, device=device))


def images_per_pass(model: torch.nn.Module, one: torch.Tensor, most: int = EVAL_IMAGES) -> int:
    """How many images like `one` (a batch of one) a forward pass without gradients takes
    within EVAL_BYTES, at most `most`."""
    return _fitting(PEAK_PER_MAP * 4 * map_sizes(model, one)[0], most)


def images_per_backward(model: torch.nn.Module, one: torch.Tensor, most: int) -> int:
    """How many images like `one` a forward and backward pass takes within EVAL_BYTES: the
    backward keeps every layer's output, and makes a gradient of each as large."""
    return _fitting(2 * 4 * map_sizes(model, one)[1], most)


def _fitting(bytes_per_image: int, most: int) -> int:
    """Images within EVAL_BYTES: at least 1, at most `most`."""
    return max(1, min(most, EVAL_BYTES // bytes_per_image))


def map_sizes(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(the most values any one module's output holds, the values the outputs of all its
    leaf modules hold together), for input x."""
    largest, leaves = [x.numel()], [0]

    def record(module: torch.nn.Module, inputs, output) -> None:
        pending, size = [output], 0
        while pending:
            item = pending.pop()
            if isinstance(item, torch.Tensor):
                largest.append(item.numel())
                size += item.numel()
            elif isinstance(item, list | tuple):
                pending.extend(item)
            elif isinstance(item, dict):
                pending.extend(item.values())
        if next(module.children(), None) is None:
            leaves.append(size)

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    was_training = model.training
    try:
        with torch.inference_mode(), compiled_kernels(False):
            model.eval()(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return max(largest), sum(leaves)


# Training steps from which `train.fused_kernels: auto` compiles. Seed 002's network at
# 224 px, batch 64, on a 2-core EPYC: compiling took 20 s per precision, and the kernels
# saved 0.50 s of a 0.95 s bf16 step against aten's Mish (0.39 of 1.27 in fp32), so they won
# after about 50 steps. Against the chunked Mish they save less: without bf16 (fp32, AVX2),
# epochs of 10 steps took 9.1 s compiled against 12.2 s, after 18.7 s of compiling, so
# compiling paid from about 60 steps. 200 leaves room for hosts where compiling is slower or
# the layers matter less.
FUSED_MIN_STEPS = 200


def fused_kernels(recipe: Recipe, splits: Splits) -> bool:
    """Whether the run trains with the compiled CPU kernels (cnnlab/models/compiled.py)."""
    if recipe.train.fused_kernels != "auto":
        return recipe.train.fused_kernels
    return splits.steps_per_epoch(recipe.train.batch_size) * recipe.train.epochs >= FUSED_MIN_STEPS


def saved_precision(saved: dict, recipe: Recipe) -> str:
    """The precision a checkpoint trained in (older ones: the recipe's, where definite)."""
    value = saved.get("precision", recipe.train.precision)
    return value if value in ("fp32", *HALF) else "fp32"


def choose_precision(
    recipe: Recipe,
    tasks: dict[str, Task],
    splits: Splits,
    model: MultiTaskModel,
    device: torch.device,
    ranks: Ranks,
) -> Choice:
    """`auto` times the run's own model on its first training batch (PROBE_PIXELS of it)
    in each precision.
    Under torchrun rank 0 times it and every rank takes its choice."""

    def timed() -> Choice:
        needed = {t.target for t in recipe.tasks.values()}
        pixels = math.prod(splits.train.images.shape[2:])
        batch_size = probe_size(min(recipe.train.batch_size, len(splits.train)), pixels)
        x, targets = next(splits.eval_batches("train", batch_size, needed))

        def loss_of(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return total_loss(tasks, model, outputs, targets)[0]

        return choose(recipe.train.precision, device, model, x, loss_of)

    if not ranks.active:
        return timed()
    mine = timed() if ranks.main else None
    chosen = distributed.from_main(mine and mine.precision, ranks, device)
    return mine or Choice(chosen, "rank 0")  # rank 0 reports it
