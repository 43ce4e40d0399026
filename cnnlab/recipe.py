"""The recipe: one typed schema per section, every default in one place.

A recipe is YAML validated against these classes before anything runs. Unknown keys are
errors (a typo must stop the run, not be ignored), and every error is reported as one line
naming the key, the value and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    model_validator,
)

from cnnlab.errors import CnnlabError

Activation = Literal["relu", "gelu", "silu", "mish", "leaky_relu"]
# List items are checked one by one: a size of 0 or -5 must stop here, not inside torch.
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]  # Adam's running-average decay rates


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- data


class AugmentConfig(Section):
    hflip: bool = True  # random horizontal flip, p = 0.5 per image
    translate: int = Field(2, ge=0, le=16)  # max shift in pixels (pad-and-crop); 0 = off


class DataConfig(Section):
    source: str = "fashion_mnist"  # a name from `cnnlab datasets`
    root: str | None = None  # the one folder read when given; None: $CNNLAB_DATA, else search
    val_fraction: float = Field(0.1, gt=0.0, lt=0.9)  # stratified, carved from the training set
    train_subset: int | None = Field(None, ge=10)  # keep a stratified subset of training images
    test_subset: int | None = Field(None, ge=10)  # keep the first N test images (quick checks)
    augment: AugmentConfig = AugmentConfig()


# -------------------------------------------------------------------------- model


class CNNConfig(Section):
    backbone: Literal["cnn"] = "cnn"
    blocks: int = Field(3, ge=1, le=8)  # Conv-(BN)-Act-Pool blocks
    filters: list[PositiveInt] | None = None  # per block; overrides base_filters + filter_org
    base_filters: int = Field(32, ge=1)  # filters of the first block
    filter_org: Literal["same", "double", "half"] = "double"  # how filters change per block
    kernel_size: int = Field(3, ge=1, le=11)
    convs_per_block: int = Field(1, ge=1, le=4)
    activation: Activation = "relu"
    batch_norm: bool = True
    pool: int = Field(2, ge=1, le=4)  # max-pool kernel and stride; 1 = no pooling
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # channel dropout after each block
    global_pool: bool = False  # average-pool features to 1x1 before the heads; else flatten
    init: Literal["default", "kaiming"] = "kaiming"

    @model_validator(mode="after")
    def _filters_match_blocks(self) -> CNNConfig:
        if self.filters is not None and len(self.filters) != self.blocks:
            raise ValueError(
                f"filters has {len(self.filters)} entries but blocks = {self.blocks}; "
                "give one entry per block or drop filters and use base_filters + filter_org"
            )
        return self

    def block_filters(self) -> list[int]:
        """Filters per block, from the explicit list or from base + organisation."""
        if self.filters is not None:
            return list(self.filters)
        factor = {"same": 1.0, "double": 2.0, "half": 0.5}[self.filter_org]
        return [max(1, round(self.base_filters * factor**i)) for i in range(self.blocks)]


# -------------------------------------------------------------------------- tasks


class HeadConfig(Section):
    hidden: list[PositiveInt] = [128]  # hidden layer sizes of the MLP head; [] = linear head
    dropout: float = Field(0.3, ge=0.0, lt=1.0)  # before every linear layer of the head
    activation: Activation = "relu"


CLASSIFICATION_METRICS = ("loss", "accuracy", "precision", "recall", "f1")
REGRESSION_METRICS = ("loss", "mae", "rmse")


class TaskConfig(Section):
    type: Literal["classification", "regression"]
    target: str  # a target the dataset provides (fashion_mnist: label, ink)
    loss: Literal["cross_entropy", "mse", "smooth_l1"] | None = None  # None = by type
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # classification only
    weight: float = Field(1.0, ge=0.0)  # lambda: the task's weight in the summed loss
    standardize: bool = True  # regression: learn (y - mean) / std, report in y's units
    head: HeadConfig = HeadConfig()

    @model_validator(mode="after")
    def _loss_fits_type(self) -> TaskConfig:
        if self.loss is None:
            self.loss = "cross_entropy" if self.type == "classification" else "mse"
        if self.type == "classification" and self.loss != "cross_entropy":
            raise ValueError(
                f"loss {self.loss!r} does not fit a classification task; use cross_entropy"
            )
        if self.type == "regression" and self.loss == "cross_entropy":
            raise ValueError(
                "loss 'cross_entropy' does not fit a regression task; use mse or smooth_l1"
            )
        if self.type == "regression" and self.label_smoothing:
            raise ValueError("label_smoothing applies to classification tasks only")
        return self

    def metric_names(self) -> tuple[str, ...]:
        return CLASSIFICATION_METRICS if self.type == "classification" else REGRESSION_METRICS


# -------------------------------------------------------------------------- train


# The optimizers that read each optional field; any other refuses it, so a value that would
# be ignored never looks as if it were used.
OPTIMIZER_FIELDS: dict[str, tuple[str, ...]] = {
    "momentum": ("sgd",),
    "nesterov": ("sgd",),
    "betas": ("adam", "adamw"),
}


class OptimizerConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    # null = the optimizer's default (cnnlab/optim.py). Unset fields stay null in the saved
    # recipe.yaml, so it validates again on --resume and under a sweep that changes `name`.
    momentum: float | None = Field(None, ge=0.0, lt=1.0)  # sgd only; null = 0.9
    nesterov: bool | None = None  # sgd only, needs momentum > 0; null = false
    betas: tuple[Beta, Beta] | None = None  # adam / adamw only; null = (0.9, 0.999)

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
    name: Literal["none", "step", "multistep", "onecycle", "cosine"] = "none"
    step_size: int = Field(10, ge=1)  # step: epochs between decays
    milestones: list[PositiveInt] = [30, 60]  # multistep: epochs at which lr *= gamma
    gamma: float = Field(0.1, gt=0.0, le=1.0)  # step / multistep decay factor
    pct_start: float = Field(0.25, gt=0.0, lt=1.0)  # onecycle: fraction of steps warming up
    warmup_epochs: float = Field(0.0, ge=0.0)  # cosine: linear warm-up before the decay


class EarlyStoppingConfig(Section):
    patience: int | None = Field(None, ge=1)  # epochs without improvement; None = off
    metric: str | None = None  # validation metric to watch; None = train.monitor
    min_delta: float = Field(0.0, ge=0.0)


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    grad_clip: float | None = Field(None, gt=0.0)  # max global grad norm; None = off
    monitor: str = "val.loss"  # metric that picks the best checkpoint (goal inferred)
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # bf16 = autocast, weights stay fp32; auto = the faster here (timed once, cached)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True
    threads: int | None = Field(None, ge=1)  # CPU threads; None = all cores
    checkpoint_minutes: float = Field(5.0, gt=0.0)  # mid-epoch checkpoint interval
    progress: bool = True  # live progress bar on the terminal
    report: bool = True  # write report.html + figures/ after the test evaluation
    test_at_end: bool = True  # evaluate the best checkpoint on test; sweeps turn it off


# --------------------------------------------------------------------------- log


class LogConfig(Section):
    wandb: bool = False  # also log to Weights & Biases (WANDB_MODE=offline works offline)
    tensorboard: bool = False  # TensorBoard event files in <run>/tensorboard
    mlflow: bool = False  # an MLflow run at $MLFLOW_TRACKING_URI (e.g. sqlite:///mlflow.db)
    project: str | None = None  # W&B project / MLflow experiment; None = the recipe's name


# ------------------------------------------------------------------------- recipe


class Recipe(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.\-]+$")  # run folder prefix
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = DataConfig()
    model: CNNConfig = CNNConfig()
    tasks: dict[str, TaskConfig | None]
    train: TrainConfig = TrainConfig()
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
        check_metric_name(self, self.train.monitor)
        if self.train.early_stopping.metric:
            check_metric_name(self, self.train.early_stopping.metric)
        return self


def metric_names(recipe: Recipe, split: str = "val") -> list[str]:
    """Every metric a run reports for one split, e.g. val.loss, val.cls.accuracy."""
    names = [f"{split}.loss"]
    for key, task in recipe.tasks.items():
        names += [f"{split}.{key}.{m}" for m in task.metric_names()]
    return names


def check_metric_name(recipe: Recipe, name: str) -> None:
    valid = metric_names(recipe, "val")
    if name not in valid:
        raise ValueError(f"metric {name!r} is not reported; choose one of: {', '.join(valid)}")


def metric_goal(name: str) -> Literal["max", "min"]:
    """Whether a metric improves upwards (accuracy, f1, ...) or downwards (loss, rmse)."""
    return "max" if name.rsplit(".", 1)[-1] in {"accuracy", "precision", "recall", "f1"} else "min"


def best_row(rows: list[dict], metric: str) -> dict | None:
    """The metrics row whose `metric` is best (the epoch best.pt holds when it is the monitor)."""
    if not rows:
        return None
    pick = max if metric_goal(metric) == "max" else min
    return pick(rows, key=lambda r: r.get(metric, float("nan")))


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
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise CnnlabError(f"{source}: {part!r} holds a value, not a section")
        node = child
    node[path[-1]] = value


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
    return where + (f"{context}, {problem}" if context else problem)


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
    return validate(raw, source=str(path))


def upgrade_saved(raw: dict) -> dict:
    """A recipe saved by cnnlab before optimizer fields became optional holds momentum,
    nesterov and betas whatever the optimizer. They were defaults, not choices: null the
    ones the optimizer does not read, so older run and sweep folders still load."""
    opt = (raw.get("train") or {}).get("optimizer")
    if isinstance(opt, dict) and all(opt.get(k) is not None for k in OPTIMIZER_FIELDS):
        for field, readers in OPTIMIZER_FIELDS.items():
            if opt.get("name", "adamw") not in readers:
                opt[field] = None
    return raw


def load_saved_recipe(path: str | Path) -> Recipe:
    """A recipe.yaml that cnnlab wrote into a run or sweep folder, from any version."""
    return validate(upgrade_saved(read_yaml(path)), source=str(path))


def validate(raw: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise CnnlabError(f"{source}: {describe_error(err.errors()[0])}") from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------- error messages


def describe_error(err: dict) -> str:
    """One line for one pydantic error: key path, offending value, what is allowed."""
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
    key = _key_path(err["loc"])
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(loc[:-1])
        hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
        return f"unknown key {key!r}{hint}"
    if err["type"] == "missing":
        if isinstance(err["loc"][-1], int):  # a tuple given too few items
            return f"{key} is missing: the list is too short"
        return f"missing key {key!r}"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] != "value_error":
        return f"{key} = {err['input']!r}: {msg}"
    return f"{key}: {msg}"


def _key_path(loc: tuple) -> str:
    """`model.filters[0]`: list and tuple positions (ints in pydantic's loc) as indices."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif not str(part).startswith("function-"):
            key += f".{part}" if key else str(part)
    return key or "recipe"


def _valid_keys(loc: list[str]) -> list[str]:
    """Field names of the section at `loc`, walking the schema (dict keys are skipped)."""
    cls: Any = Recipe
    for part in loc:
        fields = getattr(cls, "model_fields", None)
        if fields is None:
            return []
        if part not in fields:
            continue  # a dict key such as a task name
        cls = _section_class(fields[part].annotation)
    return list(getattr(cls, "model_fields", {}))


def _section_class(annotation: Any) -> Any:
    """The Section subclass inside an annotation such as `dict[str, TaskConfig | None]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_class(arg)
        if found is not None:
            return found
    return None
