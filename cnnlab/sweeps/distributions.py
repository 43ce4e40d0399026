"""W&B's sweep parameter forms, one class each: how it is sampled, what Optuna is asked for,
which values a grid takes, which values are checked against the recipe before a trial runs.

Each form is sampled through one Optuna variable (`space`), turned into the parameter's value
by `value`:
- where Optuna has the distribution itself (a list of values, integers, a uniform or
  log-uniform range), the variable is the value;
- a quantized form samples its continuous form and rounds to a multiple of q (an integer
  when q is one);
- a normal, log-normal or beta form, and categorical values with probabilities, sample their
  quantile u in (0, 1) and take the distribution's inverse CDF at u.
A random sweep's sampler draws each variable uniformly (log-uniformly where the form says), so
the values follow W&B's definitions exactly (inverse transform sampling); TPE (bayes) models
the variable: a bounded quantile even for a normal. A grid takes `values`, the integers of an
int_uniform and the multiples of q of a q_uniform; a continuous range has no grid.
"""

from __future__ import annotations

import json
import math
from statistics import NormalDist
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cnnlab.errors import CnnlabError, counted

QUANTILE = 1e-9  # a quantile variable's open ends: the inverse CDF is infinite at 0 and 1
CHECKED = 1e-3  # the quantiles whose values are checked against the recipe (99.8 % of draws)
GRID_LIMIT = 1000

Number = int | float
Positive = Annotated[float, Field(gt=0)]
Step = Annotated[int, Field(gt=0)] | Positive  # q: an integer q gives integers


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def encode(value: Any) -> Any:
    """Optuna stores scalars only: a list value such as [128] is kept as tagged JSON."""
    return value if _scalar(value) else "json:" + json.dumps(value)


def decode(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    return value


class Form(BaseModel):
    """One W&B parameter form (its `distribution`); subclasses own their arithmetic."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    continuous: ClassVar[bool] = True  # has no grid

    def space(self):
        """The Optuna distribution of the one variable this form is sampled through."""
        raise NotImplementedError

    def value(self, stored: Any) -> Any:
        """The parameter's value from the variable Optuna sampled (or stored)."""
        return stored

    def checked(self) -> list[Any]:
        """Values to validate against the recipe: the choices, or the range's ends."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        space = self.space()
        if isinstance(space, CategoricalDistribution):
            return [self.value(c) for c in space.choices]
        if isinstance(space, FloatDistribution) and (space.low, space.high) == (
            QUANTILE,
            1 - QUANTILE,
        ):
            return [self.value(CHECKED), self.value(1 - CHECKED)]
        return [self.value(space.low), self.value(space.high)]

    def grid(self, name: str) -> list[Any]:
        raise CnnlabError(
            f"sweep parameter {name!r}: method grid needs a list of `values` (or int_uniform, "
            "q_uniform); a continuous distribution has no grid, as in W&B: use random or bayes"
        )

    def suggest(self, trial, name: str) -> Any:
        """Ask an Optuna trial for this parameter: the value."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        space = self.space()
        if isinstance(space, CategoricalDistribution):
            stored = trial.suggest_categorical(name, space.choices)
        elif isinstance(space, IntDistribution):
            stored = trial.suggest_int(name, space.low, space.high, step=space.step)
        else:
            stored = trial.suggest_float(
                name, space.low, space.high, step=space.step, log=space.log
            )
        return self.value(stored)


def _quantile_space():
    from optuna.distributions import FloatDistribution

    return FloatDistribution(QUANTILE, 1 - QUANTILE)


def _float_space(low: float, high: float, log: bool = False):
    from optuna.distributions import FloatDistribution

    return FloatDistribution(low, high, log=log)


def _quantize(x: float, q: Number) -> Number:
    rounded = round(x / q) * q
    return int(rounded) if isinstance(q, int) else rounded


class _Ranged(Form):
    min: Number
    max: Number

    @model_validator(mode="after")
    def _ordered(self):
        if not self.min < self.max:
            raise ValueError(f"min {self.min} must be below max {self.max}")
        return self


class _PositiveRange(_Ranged):
    min: Positive


# ------------------------------------------------------------------------ discrete


class Constant(Form):
    distribution: Literal["constant"] = "constant"
    value_: Any = Field(alias="value")

    continuous: ClassVar[bool] = False

    def space(self):
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution([encode(self.value_)])

    def value(self, stored: Any) -> Any:
        return decode(stored)

    def grid(self, name: str) -> list[Any]:
        return [encode(self.value_)]


class Categorical(Form):
    distribution: Literal["categorical"] = "categorical"
    values: list[Any] = Field(min_length=1)

    continuous: ClassVar[bool] = False

    def space(self):
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution([encode(v) for v in self.values])

    def value(self, stored: Any) -> Any:
        return decode(stored)

    def grid(self, name: str) -> list[Any]:
        return [encode(v) for v in self.values]


class WeightedCategorical(Form):
    """`values` with `probabilities`: the first value whose cumulative probability passes u."""

    distribution: Literal["categorical_w_probabilities"] = "categorical_w_probabilities"
    values: list[Any] = Field(min_length=1)
    probabilities: list[Annotated[float, Field(ge=0)]]

    continuous: ClassVar[bool] = False

    @model_validator(mode="after")
    def _one_per_value(self):
        if len(self.probabilities) != len(self.values):
            raise ValueError(
                f"{counted(len(self.probabilities), 'probability', 'probabilities')} for "
                f"{counted(len(self.values), 'value')}; "
                "give one each"
            )
        if abs(sum(self.probabilities) - 1.0) > 1e-6:
            raise ValueError(
                f"probabilities add up to {sum(self.probabilities):g}; make them add up to 1"
            )
        return self

    def space(self):
        return _quantile_space()

    def value(self, stored: float) -> Any:
        total = 0.0
        for value, p in zip(self.values, self.probabilities, strict=True):
            total += p
            if stored < total:
                return value
        return self.values[-1]

    def checked(self) -> list[Any]:
        return list(self.values)

    def grid(self, name: str) -> list[Any]:
        return [encode(v) for v in self.values]


class IntUniform(_Ranged):
    distribution: Literal["int_uniform"] = "int_uniform"
    min: int
    max: int

    continuous: ClassVar[bool] = False

    def space(self):
        from optuna.distributions import IntDistribution

        return IntDistribution(self.min, self.max)

    def grid(self, name: str) -> list[Any]:
        if self.max - self.min >= GRID_LIMIT:
            return super().grid(name)
        return list(range(self.min, self.max + 1))


# ---------------------------------------------------------------------- continuous


class Uniform(_Ranged):
    distribution: Literal["uniform"] = "uniform"

    def space(self):
        return _float_space(self.min, self.max)


class QUniform(_Ranged):
    distribution: Literal["q_uniform"] = "q_uniform"
    q: Step = 1

    continuous: ClassVar[bool] = False

    def space(self):
        return _float_space(self.min, self.max)

    def value(self, stored: float) -> Number:
        return _quantize(stored, self.q)

    def grid(self, name: str) -> list[Any]:
        first, last = math.ceil(self.min / self.q - 0.5), math.floor(self.max / self.q + 0.5)
        if last - first >= GRID_LIMIT:
            return super().grid(name)
        # stored values inside the range whose quantization is each multiple of q
        return [min(max(k * self.q, self.min), self.max) for k in range(first, last + 1)]


class LogUniform(_Ranged):
    """W&B's older form: min and max are natural logarithms of the range's ends."""

    distribution: Literal["log_uniform"] = "log_uniform"

    def space(self):
        return _float_space(math.exp(self.min), math.exp(self.max), log=True)


class LogUniformValues(_PositiveRange):
    distribution: Literal["log_uniform_values"] = "log_uniform_values"

    def space(self):
        return _float_space(self.min, self.max, log=True)


class QLogUniform(LogUniform):
    distribution: Literal["q_log_uniform"] = "q_log_uniform"  # type: ignore[assignment]
    q: Step = 1

    def value(self, stored: float) -> Number:
        return _quantize(stored, self.q)


class QLogUniformValues(LogUniformValues):
    distribution: Literal["q_log_uniform_values"] = "q_log_uniform_values"  # type: ignore[assignment]
    q: Step = 1

    def value(self, stored: float) -> Number:
        return _quantize(stored, self.q)


class InvLogUniform(_Ranged):
    """X with log(1/X) uniform between min and max: X from exp(-max) to exp(-min)."""

    distribution: Literal["inv_log_uniform"] = "inv_log_uniform"

    def space(self):
        return _float_space(math.exp(-self.max), math.exp(-self.min), log=True)


class InvLogUniformValues(_PositiveRange):
    """X with log(1/X) uniform between log(1/max) and log(1/min): log X is uniform too."""

    distribution: Literal["inv_log_uniform_values"] = "inv_log_uniform_values"

    def space(self):
        return _float_space(self.min, self.max, log=True)


class Normal(Form):
    distribution: Literal["normal"] = "normal"
    mu: float = 0.0
    sigma: Annotated[float, Field(ge=0)] = 1.0

    def space(self):
        return _quantile_space()

    def value(self, stored: float) -> float:
        return NormalDist(self.mu, self.sigma).inv_cdf(stored) if self.sigma > 0 else self.mu


class QNormal(Normal):
    distribution: Literal["q_normal"] = "q_normal"  # type: ignore[assignment]
    q: Step = 1

    def value(self, stored: float) -> Number:
        return _quantize(super().value(stored), self.q)


class LogNormal(Normal):
    distribution: Literal["log_normal"] = "log_normal"  # type: ignore[assignment]

    def value(self, stored: float) -> float:
        return math.exp(super().value(stored))


class QLogNormal(LogNormal):
    distribution: Literal["q_log_normal"] = "q_log_normal"  # type: ignore[assignment]
    q: Step = 1

    def value(self, stored: float) -> Number:
        return _quantize(super().value(stored), self.q)


class Beta(Form):
    distribution: Literal["beta"] = "beta"
    a: Positive = 1.0
    b: Positive = 1.0

    def space(self):
        return _quantile_space()

    def value(self, stored: float) -> float:
        from scipy.special import betaincinv

        return float(betaincinv(self.a, self.b, stored))


class QBeta(Beta):
    distribution: Literal["q_beta"] = "q_beta"  # type: ignore[assignment]
    q: Step = 1

    def value(self, stored: float) -> Number:
        return _quantize(super().value(stored), self.q)


FORMS: dict[str, type[Form]] = {
    cls.model_fields["distribution"].default: cls
    for cls in (
        Constant, Categorical, WeightedCategorical, IntUniform, Uniform, QUniform, LogUniform,
        LogUniformValues, QLogUniform, QLogUniformValues, InvLogUniform, InvLogUniformValues,
        Normal, QNormal, LogNormal, QLogNormal, Beta, QBeta,
    )
}  # fmt: skip


def form_name(block: dict) -> str:
    """The form a parameter block names, or the one W&B infers when `distribution` is left out:
    `value` a constant, `values` categorical (with `probabilities`: weighted), integer `min`
    and `max` int_uniform, other numbers uniform."""
    given = block.get("distribution")
    if given == "categorical" and "probabilities" in block:
        return "categorical_w_probabilities"
    if given is not None:
        return str(given)
    if "value" in block:
        return "constant"
    if "values" in block:
        return "categorical_w_probabilities" if "probabilities" in block else "categorical"
    if "min" in block and "max" in block:
        whole = all(type(block[k]) is int for k in ("min", "max"))
        return "int_uniform" if whole else "uniform"
    raise CnnlabError(
        f"no form in {sorted(block)}: give `values`, `value`, `min` and `max`, a `distribution`, "
        "or nested `parameters`"
    )
