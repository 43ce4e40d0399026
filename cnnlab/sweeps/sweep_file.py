"""A sweep file as W&B's sweep-configuration schema defines it, typed: what `cnnlab sweep`
reads before any trial. Its parameter blocks are typed by their form
(cnnlab/sweeps/distributions.py) once nested blocks are flattened to dotted names.

    method: bayes                      # grid | random | bayes
    metric: {name: val.cls.accuracy, goal: maximize, target: 0.93}
    parameters:
      model.activation: {values: [relu, gelu]}
      train.optimizer.lr: {min: 0.0001, max: 0.01, distribution: log_uniform_values}
    early_terminate: {type: hyperband, min_iter: 1, eta: 3}
    run_cap: 40
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from cnnlab.tasks import Goal

Whole = Annotated[StrictInt, Field(ge=1)]
# Keys that only W&B's agent or UI reads: accepted, ignored, and said so.
AGENT_KEYS = ("program", "command", "project", "entity", "name", "description")


class Metric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # a recipe metric (val.cls.accuracy), or a name the name map translates
    goal: Goal | None = None  # W&B's default is minimize; left out, cnnlab follows the name
    target: float | None = None  # once a trial reaches it, no new trial starts


class Hyperband(BaseModel):
    """W&B's early_terminate block. W&B's agent does not run Hyperband's several brackets:
    it checks every run at epochs min_iter * eta^k and stops those outside the best 1/eta of
    the runs that got there; that is asynchronous successive halving in one bracket, which
    is what cnnlab runs. With max_iter and s instead of min_iter, the bands are
    max_iter / eta^s .. max_iter / eta."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["hyperband"]
    min_iter: Whole | None = None  # the first band's epoch
    max_iter: Whole | None = None  # the epoch the bands count back from (with s)
    eta: Annotated[StrictInt, Field(ge=2)] = 3  # keep the best 1/eta at each band
    s: Annotated[StrictInt, Field(ge=0)] = 0  # how many bands below max_iter
    strict: bool = False  # W&B's own stopping rule ignores it too

    @model_validator(mode="after")
    def _has_bands(self):
        if self.min_iter is None and (
            self.max_iter is None or self.s < 1 or self.max_iter < self.eta
        ):
            raise ValueError(
                "give min_iter, or max_iter with s >= 1 and max_iter >= eta (runs stop at "
                "epochs max_iter/eta^s .. max_iter/eta)"
            )
        return self

    def bands(self) -> dict[str, int | None]:
        """What the pruner needs: its first band, eta, and the last band (None: no limit)."""
        if self.min_iter is not None:
            return {"min_resource": self.min_iter, "reduction_factor": self.eta, "last_band": None}
        assert self.max_iter is not None
        first = max(1, int(self.max_iter / self.eta**self.s))
        last = int(self.max_iter / self.eta)
        return {"min_resource": first, "reduction_factor": self.eta, "last_band": last}


class SweepFile(BaseModel):
    """The whole file; `parameters` maps names (or nested blocks) to parameter blocks."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["grid", "random", "bayes"]
    metric: Metric | None = None  # grid and random may leave it out: the recipe's monitor
    parameters: dict[str, Any] = Field(min_length=1)
    early_terminate: Hyperband | None = None
    run_cap: Whole | None = None  # the most trials the sweep runs
    program: Any = None
    command: Any = None
    project: Any = None
    entity: Any = None
    name: Any = None
    description: Any = None

    def agent_keys(self) -> list[str]:
        """The keys given that only W&B's agent reads."""
        return [k for k in AGENT_KEYS if getattr(self, k) is not None]
