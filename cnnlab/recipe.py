"""The recipe: one typed document assembled from every component's own section.

Tasks define their sections in `cnnlab/tasks/`, sources theirs in `cnnlab/data/`, the CNN in
`cnnlab/models/cnn.py`, all on the base in `cnnlab/config.py`; this module puts them together
with the train and log sections, and sits above them all. A recipe is YAML validated before
anything runs. Unknown keys are errors (a typo must stop the run, not be ignored), and every
error is reported as one line naming the key, the value and what is allowed.

The `data`, `model` and `tasks` sections are unions over the registries; when a user
registers a component (cnnlab/components.py), `rebuild_schema` rebuilds them, so its
section is checked, and its errors read, as a built-in one's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, get_args

import yaml
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from torch import nn

from cnnlab.config import Section
from cnnlab.data import DEFAULT_SOURCE, SOURCES, DataConfig, data_config, default_data
from cnnlab.errors import CnnlabError, did_you_mean
from cnnlab.models import BACKBONES, ModelConfig, model_config
from cnnlab.models.cnn import CNNConfig
from cnnlab.registrations import missing_hint, origin_in, recorded_components, register_hint
from cnnlab.tasks import TASKS, TaskConfig, metric_goal, metric_parts, task_class, task_config
from cnnlab.tasks.base import TaskSection

# List items are checked one by one: a size of 0 or -5 must stop here, not inside torch.
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]  # Adam's running-average decay rates


# -------------------------------------------------------------------------- train


# The optimizers that read each optional field; any other refuses it, so a value that would
# be ignored never looks as if it were used.
OPTIMIZER_FIELDS: dict[str, tuple[str, ...]] = {
    "momentum": ("sgd",),
    "nesterov": ("sgd",),
    "betas": ("adam", "adamw"),
    "eps": ("adam", "adamw"),
}


class OptimizerConfig(Section):
    """`train.optimizer`: which torch optimizer and its settings; each optional field only for
    the optimizers that read it."""

    name: Literal["sgd", "adam", "adamw"] = "adamw"  # torch.optim's optimizer of that name
    lr: float = Field(1e-3, gt=0.0)  # learning rate (the peak rate under onecycle)
    weight_decay: float = Field(0.0, ge=0.0)  # L2 penalty (adamw: decoupled decay)
    # null = the optimizer's default (cnnlab/optim.py). Unset fields stay null in the saved
    # recipe.yaml, so it validates again on --resume and under a sweep that changes `name`.
    momentum: float | None = Field(None, ge=0.0, lt=1.0)  # sgd only; null = 0.9
    nesterov: bool | None = None  # sgd only, needs momentum > 0; null = false
    betas: tuple[Beta, Beta] | None = None  # adam / adamw only; null = (0.9, 0.999)
    # adam / adamw only; null = 1e-8. A larger eps shrinks the steps of weights whose
    # gradients are smaller than it, towards SGD's lr × gradient, and leaves the others be.
    eps: float | None = Field(None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _checks(self) -> OptimizerConfig:
        check_fields_fit_optimizer(self)
        check_nesterov_has_momentum(self)
        return self


def check_fields_fit_optimizer(cfg: OptimizerConfig) -> None:
    """A field set for an optimizer that does not read it (momentum for adam) is an error."""
    for field, readers in OPTIMIZER_FIELDS.items():
        value = getattr(cfg, field)
        if value is not None and cfg.name not in readers:
            raise ValueError(
                f"{field} = {value!r} applies to {' / '.join(readers)} only, not {cfg.name}; "
                f"drop {field} or choose name: {' | '.join(readers)}"
            )


def check_nesterov_has_momentum(cfg: OptimizerConfig) -> None:
    """Nesterov's look-ahead is a momentum step: with momentum 0 torch refuses it mid-setup."""
    if cfg.nesterov and cfg.momentum == 0:
        raise ValueError(
            "nesterov: true needs momentum > 0, got momentum: 0; "
            "set momentum (e.g. 0.9, or null for the default) or nesterov: false"
        )


class SchedulerConfig(Section):
    """`train.scheduler`: how the learning rate changes over the epochs."""

    # none = constant rate; step / multistep: lr *= gamma at intervals / milestones; onecycle:
    # warm up to lr then anneal (per step); cosine: decay to 0 over the epochs (per step)
    name: Literal["none", "step", "multistep", "onecycle", "cosine"] = "none"
    step_size: int = Field(10, ge=1)  # step: epochs between decays
    # multistep: the epochs at which lr *= gamma
    milestones: list[PositiveInt] = Field(default_factory=lambda: [30, 60])
    gamma: float = Field(0.1, gt=0.0, le=1.0)  # step / multistep decay factor
    pct_start: float = Field(0.25, gt=0.0, lt=1.0)  # onecycle: fraction of steps warming up
    warmup_epochs: float = Field(0.0, ge=0.0)  # cosine: linear warm-up before the decay


class EarlyStoppingConfig(Section):
    """`train.early_stopping`: stop when a validation metric has not improved for a while."""

    patience: int | None = Field(None, ge=1)  # epochs without improvement; None = off
    metric: str | None = None  # validation metric to watch; None = train.monitor
    min_delta: float = Field(0.0, ge=0.0)  # a change smaller than this is no improvement


class TrainConfig(Section):
    """`train`: the loop, its optimizer and schedule, the device and precision, what is kept
    and what runs after training."""

    epochs: int = Field(10, ge=1)  # passes over the training split
    batch_size: int = Field(64, ge=1)  # images per step (the global batch under torchrun)
    # images per forward pass in validation and test; auto: up to 1,000, fewer where the
    # model's maps are large (about 1 GiB a pass: 55 images of seed 002's network at 224 px)
    eval_batch_size: PositiveInt | Literal["auto"] = "auto"
    # a trained run (its folder, or its checkpoints/best.pt or last.pt) whose judged weights
    # (those its test scored: the average with ema_decay) start the whole model, backbone
    # and heads; the run then trains by this recipe (epochs, rate, schedule, data). Its
    # model must be built the same way; a head whose task has another number of classes
    # starts fresh. A resume continues from its own last.pt. null = fresh weights
    init_from: str | None = None
    optimizer: OptimizerConfig = OptimizerConfig()  # which optimizer, its rate and settings
    scheduler: SchedulerConfig = SchedulerConfig()  # how the learning rate changes over training
    grad_clip: float | None = Field(None, gt=0.0)  # max global grad norm; None = off
    # keep an exponential moving average of the weights (e.g. 0.999: about the last 1,000
    # steps); validation, the best checkpoint and the test use it. None = off
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    # test-time views: the test (and `cnnlab eval`) averages the model over every
    # combination of these transforms, each answer mapped back through the source's label
    # maps (a GSN flip swaps triangles; translate: one pixel each way); validation stays
    # single-view. [] = off
    tta: list[Literal["hflip", "vflip", "rot90", "translate"]] = Field(default_factory=list)
    monitor: str = "val.loss"  # metric that picks the best checkpoint (goal inferred)
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()  # stop when a metric stalls
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # bf16 / fp16 = autocast, weights stay fp32; fp16 (CUDA only) adds loss scaling. auto =
    # on a CPU fp32 where it has no bf16 instructions, else the faster of fp32 and bf16
    # (timed once, cached); on a GPU bf16 where it is native (compute capability 8.0+),
    # fp16 on 7.x, fp32 below
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True  # NHWC memory layout: faster convolutions on most hardware
    # inductor-compiled CPU kernels for Mish and 2x2 max-pool (a bf16 step at 224 px 2.1x
    # faster) at about 20 s of compiling per precision. auto: on for runs of at least
    # FUSED_MIN_STEPS (200) training steps, where the compile pays for itself
    fused_kernels: bool | Literal["auto"] = "auto"
    # on a GPU, the same bits in every process: cuDNN's deterministic algorithms instead of
    # autotuning, so a resumed run equals the uninterrupted one exactly (some speed lost).
    # The CPU is deterministic already
    deterministic: bool = False
    threads: int | None = Field(None, ge=1)  # CPU threads; None = all cores
    # under torchrun on GPUs: BatchNorm statistics over the global batch, not each rank's
    sync_bn: bool = False
    checkpoint_minutes: float = Field(5.0, gt=0.0)  # mid-epoch checkpoint interval
    # also keep the weights of every N-th epoch (checkpoints/epoch_NNN.pt): the training
    # path `cnnlab landscape --trajectory` draws. None = only last.pt and best.pt
    keep_every: int | None = Field(None, ge=1)
    # what a run prints: the precision, the epoch bar (a line per epoch where the output is
    # not a terminal), the test table, the report's bar; false: quiet, as a sweep's trials
    progress: bool = True
    report: bool = True  # write report.html + figures/ after the test evaluation
    test_at_end: bool = True  # evaluate the best checkpoint on test; sweeps turn it off
    # after training, fit a temperature for each task with probabilities (a classification)
    # and an interval for each regression on the validation set (as `cnnlab calibrate RUN`):
    # probabilities that mean what they say, and a range for each predicted number
    calibrate: bool = False
    # with calibrate: a two-class task answers its class from the probability that finds this
    # share of the class's validation images, not above one half ({malignant: 0.95}; where
    # two tasks have the class, {diag.malignant: 0.95}), as `cnnlab calibrate RUN --recall`
    recall: dict[str, float] = Field(default_factory=dict)

    @field_validator("init_from", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        """A `Path` from Python (`run.path`) is written as text, as YAML would give it."""
        return str(value) if isinstance(value, os.PathLike) else value

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _none_is_off(cls, value: Any) -> Any:
        """`early_stopping: null` turns it off, as `tasks.<name>: null` drops a task."""
        return {} if value is None else value


# --------------------------------------------------------------------------- log


class LogConfig(Section):
    """`log`: dashboards that also receive each epoch's metrics."""

    wandb: bool = False  # also log to Weights & Biases (WANDB_MODE=offline works offline)
    tensorboard: bool = False  # TensorBoard event files in <run>/tensorboard
    mlflow: bool = False  # an MLflow run at $MLFLOW_TRACKING_URI (e.g. sqlite:///mlflow.db)
    project: str | None = None  # W&B project / MLflow experiment; None = the recipe's name


# ------------------------------------------------------------------------- recipe


class Recipe(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.\-]+$")  # run folder prefix
    seed: int = 0  # seeds the split, initial weights, batch order and augmentation
    output_dir: str = "runs"  # where run folders are made: <output_dir>/<name>-<time>
    data: DataConfig = default_data()  # the section of the source `data.source` names
    model: ModelConfig = CNNConfig()  # `backbone` picks the section; cnnlab backbones
    tasks: dict[str, TaskConfig | None]  # name -> task; loss = Σ weight · task loss; null drops one
    train: TrainConfig = TrainConfig()  # how the model is trained and evaluated
    log: LogConfig = LogConfig()  # optional dashboards; metrics.jsonl is always written

    @model_validator(mode="after")
    def _checks(self) -> Recipe:
        # `--set tasks.ink=null` removes a task: a single-task run is the same recipe.
        self.tasks = {k: v for k, v in self.tasks.items() if v is not None}
        if not self.tasks:
            raise ValueError("a recipe needs at least one task")
        for key in self.tasks:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key):
                raise ValueError(f"task name {key!r}: use letters, digits and _")
            if hasattr(nn.ModuleDict, key):  # each task's head is model.heads[name]
                raise ValueError(
                    f"task name {key!r} is taken by PyTorch's ModuleDict, which holds the "
                    f"heads; name the task otherwise (e.g. {key}_)"
                )
        check_metric_name(self, self.train.monitor)
        if self.train.early_stopping.metric:
            check_metric_name(self, self.train.early_stopping.metric)
        check_unfreeze_at(self)
        if self.train.recall and not self.train.calibrate:
            raise ValueError(
                "train.recall is fitted by the calibration after training: set "
                "train.calibrate: true too (or fit it later: cnnlab calibrate RUN --recall)"
            )
        return self


def check_unfreeze_at(recipe: Recipe) -> None:
    """A backbone's `unfreeze_at` (timm's) falls within the run: a later epoch never comes,
    and the run would train frozen throughout without a word."""
    at, epochs = getattr(recipe.model, "unfreeze_at", None), recipe.train.epochs
    if at is None or at <= epochs:
        return
    fix = {1: "raise train.epochs", 2: "give 2"}.get(epochs, f"give an epoch from 2 to {epochs}")
    raise ValueError(
        f"model.unfreeze_at {at} is after the last epoch (train.epochs {epochs}), so the "
        f"backbone would never train; {fix}, or set model.unfreeze_at=null"
    )


# Models whose fields embed the Recipe or its unions, rebuilt with it (none outside yet: the
# sweep files validate through `validate`).
SCHEMA_DEPENDENTS: list[type[BaseModel]] = []


def rebuild_schema() -> None:
    """Rebuild the recipe from the registries as they are now: the `data`, `model` and
    `tasks` unions gain (or lose) registered components. Pydantic compiles a model's
    validator once; replacing the three fields and forcing a rebuild recompiles it, so the
    class every module imports validates the new sections with the usual one-line errors."""
    fields = Recipe.model_fields
    fields["data"] = FieldInfo.from_annotated_attribute(data_config(), default_data())
    fields["model"] = FieldInfo.from_annotated_attribute(model_config(), CNNConfig())
    fields["tasks"] = FieldInfo.from_annotation(dict[str, Optional[task_config()]])  # noqa: UP045
    Recipe.model_rebuild(force=True)
    for model in SCHEMA_DEPENDENTS:
        model.model_rebuild(force=True)


def metric_names(recipe: Recipe, split: str = "val") -> list[str]:
    """Every metric a run reports for one split, e.g. val.loss, val.cls.accuracy."""
    names = [f"{split}.loss"]
    for key, task in recipe.tasks.items():
        names += [f"{split}.{key}.{m}" for m in task_class(task).metrics]
    return names


def per_class_metric(recipe: Recipe, name: str) -> tuple[str, str, str] | None:
    """(task, metric, class or component) of a validation metric given per class or
    component (`Task.per_class`), `val.diag.recall_of_nodule` -> ("diag", "recall_of",
    "nodule"); None for any other name. Whether the class exists needs the data's
    description: `build.check_metric_classes`."""
    split, key, metric = metric_parts(name)
    task = recipe.tasks.get(key)
    if split != "val" or task is None:
        return None
    for m in sorted(task_class(task).per_class, key=len, reverse=True):  # recall_of, then recall
        if metric.startswith(f"{m}_") and len(metric) > len(m) + 1:
            return key, m, metric[len(m) + 1 :]
    return None


def unreported(recipe: Recipe, name: str) -> str | None:
    """Why the validation metric `name` is not one a run of `recipe` reports ('is not
    reported (did you mean ...?); choose one of: ...'), or None when it is."""
    valid = metric_names(recipe, "val")
    if name in valid or per_class_metric(recipe, name):
        return None
    each = [
        f"val.{key}.{m}_<name>"
        for key, task in recipe.tasks.items()
        for m in sorted(task_class(task).per_class)
    ]
    each_said = f"; or one class's or component's, where the target has them: {', '.join(each)}"
    _, key, metric = metric_parts(name)
    task = recipe.tasks.get(key)
    own = (  # one class's metric asked of a task type that gives none
        f"; tasks.{key} ({task.type}) gives no metric per class: a task type of one's own "
        "adds one (docs: Adding a component, one more metric on a built-in task type)"
        if task is not None and "_" in metric and not task_class(task).per_class
        else ""
    )
    said = f"is not reported{did_you_mean(name, valid)}; choose one of: {', '.join(valid)}"
    return said + (each_said if each else "") + own


def check_metric_name(recipe: Recipe, name: str) -> None:
    problem = unreported(recipe, name)
    if problem:
        raise ValueError(f"metric {name!r} {problem}")


def best_row(rows: list[dict], metric: str) -> dict | None:
    """The metrics row whose `metric` is best (the epoch best.pt holds when it is the monitor),
    a tie broken as training breaks it (`better_epoch`)."""
    best = None
    for row in rows:
        seen = (row.get(metric, float("nan")), row.get("val.loss"))
        if best is None or better_epoch(metric, seen, (best.get(metric), best.get("val.loss"))):
            best = row
    return best


def better_epoch(
    metric: str, epoch: tuple[float, float | None], best: tuple[float, float | None]
) -> bool:
    """Whether an epoch's (metric, val.loss) beats the best so far: a better metric, or the
    same with a lower validation loss. Accuracy on a small validation set ties often (100 %
    from an early epoch on), and the first of equals then kept an epoch whose other task
    was far worse."""
    goal = metric_goal(metric)
    if goal.better(epoch[0], best[0]):
        return True
    same = epoch[0] == best[0]
    return same and epoch[1] is not None and best[1] is not None and epoch[1] < best[1]


def flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"optimizer": {"lr": 1}}} -> {"train.optimizer.lr": 1}."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


# ------------------------------------------------------------- loading + overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value parsed as YAML so 5, 1e-3, true, [1,2] work)."""
    if "=" not in text:
        raise CnnlabError(f"--set {text!r}: expected key.path=value, e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise CnnlabError(f"--set {text!r}: empty key; expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def set_path(raw: dict, path: list[str], value: Any, source: str) -> None:
    """Set a dotted key in a raw recipe dict; validation catches unknown keys afterwards."""
    tasks = raw.get("tasks")
    if path[0] == "tasks" and len(path) == 2 and value is None and path[1] not in (tasks or {}):
        names = list(tasks or {})  # `tasks.clz=null` dropped nothing, and said nothing
        raise CnnlabError(
            f"{source}: the recipe has no task {path[1]!r} to drop (its tasks: "
            f"{', '.join(names)}){did_you_mean(path[1], names, cutoff=0.6)}"
        )
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise CnnlabError(f"{source}: {part!r} holds a value, not a section")
        node = child
    node[path[-1]] = value


def override_sources(overrides: Any) -> dict[str, str]:
    """Each key an override sets, with how its user wrote it (`--set 'train.epoch=3'`,
    `overrides['train.epoch']` from a dict): a problem with that key is said as theirs,
    not the recipe file's (`validate`'s `sets`)."""
    if isinstance(overrides, Mapping):
        return {str(k): f"overrides[{k!r}]" for k in overrides}
    texts = [overrides] if isinstance(overrides, str) else list(overrides or [])
    return {".".join(parse_override(t)[0]): f"--set {t!r}" for t in texts}


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `--set key.path=value` overrides to the raw recipe dict."""
    for text in overrides:
        path, value = parse_override(text)
        set_path(raw, path, value, f"--set {text!r}")
    return raw


def read_text(path: Path, what: str) -> str:
    """The file as UTF-8 text. A binary or differently encoded file (a PNG passed by mistake,
    a UTF-16 export) is one error line here instead of a UnicodeDecodeError traceback."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CnnlabError(f"{what} {path} cannot be read ({err.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CnnlabError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
            f"{err.start}); give a YAML file saved as UTF-8"
        ) from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: where it stopped, then why."""
    if isinstance(err, yaml.reader.ReaderError):  # a control character: binary content
        return f"at position {err.position}: character #x{err.character:04x} is not text"
    mark = getattr(err, "problem_mark", None)
    where = f"at line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    context = getattr(err, "context", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    said = where + (f"{context}, {problem}" if context else problem)
    if "'\\t'" in str(problem):  # an editor's tab: YAML indents with spaces only
        said += "; YAML indents with spaces, not tabs: replace the tab with spaces"
    if mark and "block" in f"{context} {problem}":  # PyYAML's words for a misindented key
        said += (
            f"; check the indentation of line {mark.line + 1} and the lines above it: the keys "
            "of one section must start in the same column"
        )
    return said


def load_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file; unreadable bytes and syntax errors end as one CnnlabError line."""
    try:
        return yaml.safe_load(read_text(path, what))
    except yaml.YAMLError as err:
        raise CnnlabError(f"{what} {path}: not valid YAML {yaml_problem(err)}") from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"recipe {path} not found; `cnnlab recipes` lists the shipped ones")
    raw = load_yaml(path, "recipe")
    if not isinstance(raw, dict):
        raise CnnlabError(
            f"recipe {path}: expected a mapping of sections (data, model, tasks, train)"
        )
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; any problem becomes one CnnlabError line."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate(raw, source=str(path), sets=override_sources(overrides))


def upgrade_saved(raw: dict) -> dict:
    """A recipe saved by an older cnnlab holds fields that were defaults of a shared schema,
    not choices: momentum, nesterov and betas whatever the optimizer; label_smoothing and
    standardize whatever the task type. Drop the ones the chosen kind does not have, so
    older run and sweep folders still load."""
    opt = (raw.get("train") or {}).get("optimizer")
    shared = ("momentum", "nesterov", "betas")  # the fields of the old shared schema
    if isinstance(opt, dict) and all(opt.get(k) is not None for k in shared):
        for field in shared:
            if opt.get("name", "adamw") not in OPTIMIZER_FIELDS[field]:
                opt[field] = None
    for task in (raw.get("tasks") or {}).values():
        kind = TASKS.get(task.get("type")) if isinstance(task, dict) else None
        if kind is not None and {"label_smoothing", "standardize"} <= task.keys():
            for field in set(task) - set(kind.config.model_fields):
                del task[field]
    return raw


def load_saved_recipe(path: str | Path) -> Recipe:
    """A recipe.yaml that cnnlab wrote into a run or sweep folder, from any version."""
    raw = upgrade_saved(read_yaml(path))
    folder = Path(path).parent
    check_registered(raw, f"run {folder}", recorded_components(folder / "env.json"))
    return validate(raw, source=str(path))


def check_registered(raw: dict, used_by: str, components: list[dict]) -> None:
    """A saved recipe naming a component this process has not registered (the run or sweep
    imported the module that registers it; this process did not): one line naming the
    component and what to import, as `components` recorded it (a run's env.json, a sweep's
    sweep.json), instead of an unknown-tag error."""
    model, data = raw.get("model") or {}, raw.get("data") or {}
    tasks = [t for t in (raw.get("tasks") or {}).values() if isinstance(t, dict)]
    used = [
        ("backbone", model.get("backbone", "cnn") if isinstance(model, dict) else None),
        ("source", data.get("source", DEFAULT_SOURCE) if isinstance(data, dict) else None),
        *(("task", t.get("type")) for t in tasks),
    ]
    registries = {"backbone": BACKBONES, "source": SOURCES, "task": TASKS}
    for kind, name in used:
        if isinstance(name, str) and name not in registries[kind]:
            origin = origin_in(components, kind, name)
            raise CnnlabError(
                f"{used_by} used {kind} {name!r}, which is not registered in this "
                f"process; {missing_hint(origin)}"
            )


def validate(raw: dict, source: str = "recipe", sets: dict[str, str] | None = None) -> Recipe:
    """The typed recipe; every problem a line of one CnnlabError. `sets`: each key an
    override set, with how the user gave it (`--set 'train.epoch=3'`): its problem is
    said as theirs, not the file's."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        # `source` names the recipe: an error of the whole of it (a check across sections)
        # needs no other key ("recipe: recipe: ..." from a dict); every problem a line
        said = [f"{describe_error(e, whole='')}{_misspelt_task(e, raw)}" for e in err.errors()]
        lines = dict.fromkeys(f"{_given_by(line, source, sets or {})}: {line}" for line in said)
        first, *also = lines
        raise CnnlabError(first, also) from None


def _given_by(line: str, source: str, sets: dict[str, str]) -> str:
    """Who gave the key a problem line is about: an override (`--set 'train.epoch=3'`,
    blamed on the file before), else the recipe's file."""
    for key, label in sets.items():
        if line.startswith((f"unknown key '{key}'", f"{key} ", f"{key}:")):
            return label
    return source


def _misspelt_task(err: dict, raw: dict) -> str:
    """A task with no type whose name is close to one of the recipe's tasks: most likely
    a misspelt name in an override (`--set tasks.clz.weight=2` makes a new task `clz`),
    which "tasks.clz.type is missing" alone reads as a request to add a type."""
    loc, tasks = err["loc"], raw.get("tasks")
    if err["type"] != "union_tag_not_found" or loc[:1] != ("tasks",) or len(loc) != 2:
        return ""
    typed = [n for n, t in (tasks or {}).items() if isinstance(t, dict) and t.get("type")]
    close = did_you_mean(str(loc[1]), typed, cutoff=0.6)
    if not close:
        return ""
    return f"; or is {loc[1]!r} a misspelt task? The recipe's tasks: {', '.join(typed)}{close}"


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------- error messages

# The keys that pick a tagged union's member: tasks.<name>.type, model.backbone, data.source.
# Pydantic puts the chosen member's tag into an error's location.
TAG_FIELDS = ("type", "backbone", "source")
TAG_KINDS = {"type": "task", "backbone": "backbone", "source": "source"}  # for the hint


def describe_error(err: dict, root: type[BaseModel] | None = None, whole: str = "recipe") -> str:
    """One line for one pydantic error: key path, offending value, what is allowed. `root`:
    the model validated (default the recipe; a sweep's parameter form), `whole` its name
    when the error is about all of it."""
    root = root or Recipe
    key, sections = _walk(err["loc"], root, whole)
    if err["type"] == "extra_forbidden":
        here = _walk(err["loc"][:-1], root, whole)[1]
        valid = _field_names(here)
        section = key.rsplit(".", 1)[0] + "." if "." in key else ""
        near = did_you_mean(str(err["loc"][-1]), valid, lambda name: section + name)
        hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
        if not near and len(err["loc"]) == 1:  # a section's key written at the top
            near = _section_of(str(err["loc"][0]))
        return f"unknown key {key!r}{near}{hint}{_other_task_types(str(err['loc'][-1]), here)}"
    if err["type"] == "missing":
        if isinstance(err["loc"][-1], int):  # a tuple given too few items
            return f"{key} is missing: the list is too short"
        return f"missing key {key!r}"
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):  # tasks.x.type, data.source
        return _tag_problem(key, err, sections)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error" and msg.startswith(f"{key}."):
        return msg  # a section's own check that names the full key (data.augment.translate)
    if "input" in err and err["type"] != "value_error":
        given, choices = (
            err["input"],
            re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", "")),
        )
        close = (
            did_you_mean(given, choices)
            if err["type"] == "literal_error" and isinstance(given, str)
            else ""
        )
        return f"{key} = {given!r}{close}: {msg}"
    return f"{key}: {msg}" if key else msg


def _tag_problem(key: str, err: dict, sections: list[type[BaseModel]]) -> str:
    """An unknown or missing tag of a tagged union: `tasks.x.type`, `model.backbone`, ..."""
    name = next((n for n in TAG_FIELDS if any(n in c.model_fields for c in sections)), "type")
    names = [t for t in (_tag(c) for c in sections) if t]
    tags = ", ".join(names)
    given = err.get("input") if isinstance(err.get("input"), dict) else {}
    hint = register_hint(TAG_KINDS[name])
    if given.get(name) is None:
        return f"{key}.{name} is missing: choose one of: {tags}"
    close = did_you_mean(str(given[name]), names)
    if name == "source":
        return f"{key}.source {given[name]!r} is unknown{close}; choose one of: {tags}; {hint}"
    return f"{key}.{name} = {given[name]!r}{close}: choose one of: {tags}; {hint}"


def _walk(loc: tuple, root: type[BaseModel], whole: str) -> tuple[str, list[type[BaseModel]]]:
    """The key path as a user writes it (`model.filters[0]`, `tasks.cls.head`) and the
    section class(es) it ends in. Pydantic puts a tagged union's tag into the location
    (`tasks.cls.classification.head`, `data.fashion_mnist.root`): it is left out of the key
    and picks the member, even where the union has a single member."""
    key, sections, union = "", [root], False
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
            continue
        if str(part).startswith("function-"):
            continue
        tagged = [c for c in sections if _tag(c) == part]
        if union and tagged:
            sections, union = tagged, False
            continue
        key += f".{part}" if key else str(part)
        fields = {name: f for c in sections for name, f in c.model_fields.items()}
        if part in fields:
            sections = _sections_in(fields[part].annotation)
            union = _is_tagged(fields[part].annotation) or _is_tagged(fields[part])
        # else: a dict key (a task's name) or an unknown key: the sections stay
    return key or whole, sections


def _is_tagged(annotation: Any) -> bool:
    """Whether a field (or an annotation inside one) is a tagged union."""
    if isinstance(annotation, Discriminator):
        return True
    if isinstance(annotation, FieldInfo):
        return annotation.discriminator is not None or any(map(_is_tagged, annotation.metadata))
    return any(map(_is_tagged, get_args(annotation)))


def _sections_in(annotation: Any) -> list[type[BaseModel]]:
    """Every Section class inside an annotation such as `dict[str, TaskConfig | None]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [c for arg in get_args(annotation) for c in _sections_in(arg)]


def _tag(section: type[BaseModel]) -> str | None:
    """The name a member of a tagged union answers to: its tag key's default."""
    for name in TAG_FIELDS:
        field = section.model_fields.get(name)
        if field is not None and isinstance(field.default, str):
            return field.default
    return None


def _other_task_types(name: str, sections: list[type[BaseModel]]) -> str:
    """Where a task's unknown key is another task type's own (a classification's `bounds`),
    which types have it: the key is right, the type is not the one it belongs to."""
    if not any(issubclass(c, TaskSection) for c in sections):
        return ""
    types = [t for t, task in TASKS.items() if name in task.config.model_fields]
    return f"; {name} is a key of {' and '.join(types)} tasks" if types else ""


def field_home(name: str) -> str | None:
    """The section a bare field name belongs in (`train_subset`: data, `lr`:
    train.optimizer), for a key written where it is not (at the top level, as a command
    line flag); None when no section has it."""
    homes = {
        "train": [TrainConfig],
        "train.optimizer": [OptimizerConfig],
        "data": [entry.config for entry in SOURCES.values()],
        "model": [entry.config for entry in BACKBONES.values()],
        "log": [LogConfig],
    }
    found = (s for s, configs in homes.items() if any(name in c.model_fields for c in configs))
    return next(found, None)


def _section_of(name: str) -> str:
    """' (did you mean 'data.train_subset'? indent it under data:)' for a top-level key that
    belongs in a section: a line indented too little read as the recipe's own key."""
    home = field_home(name)
    return f" (did you mean '{home}.{name}'? indent it under {home}:)" if home else ""


def _field_names(sections: list[type[BaseModel]]) -> list[str]:
    return list(dict.fromkeys(name for c in sections for name in c.model_fields))
