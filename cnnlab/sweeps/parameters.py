"""A sweep file's parameters: each block, typed by its form, under the name Optuna and the
recipe know it by (a nested block's names joined by dots)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from cnnlab.errors import CnnlabError
from cnnlab.recipe import describe_error
from cnnlab.sweeps.distributions import FORMS, Form, form_name


@dataclass(frozen=True)
class Param:
    """One swept parameter, named as in the sweep file (a nested block's names joined by
    dots); that is Optuna's name for its variable too. Its form does the arithmetic."""

    name: str
    form: Form

    def suggest(self, trial) -> Any:
        return self.form.suggest(trial, self.name)

    def decode(self, stored: Any) -> Any:
        """The value of a variable Optuna stored (a quantile, a rounded value's source)."""
        return self.form.value(stored)

    def samples(self) -> list[Any]:
        return self.form.checked()

    def grid_values(self) -> list[Any]:
        return self.form.grid(self.name)

    def describe(self) -> dict:
        return {"name": self.name, **self.form.model_dump(mode="json", by_alias=True)}


def parse_param(name: str, block: Any) -> Param:
    """A W&B parameter block -> Param (a `value:` block is a Constant form)."""
    if not isinstance(block, dict):
        raise CnnlabError(
            f"sweep parameter {name!r}: expected a mapping such as {{values: [...]}} "
            f"or {{min: 0, max: 1}}, got {block!r}"
        )
    try:
        kind = form_name(block)
    except CnnlabError as err:
        raise CnnlabError(f"sweep parameter {name!r}: {err}") from None
    if kind not in FORMS:
        raise CnnlabError(
            f"sweep parameter {name!r}: unknown distribution {kind!r}; use one of: "
            f"{', '.join(FORMS)}"
        )
    form = FORMS[kind]
    try:
        return Param(name, form.model_validate({**block, "distribution": kind}))
    except ValidationError as err:
        detail = describe_error(err.errors()[0], form, "the block")
        raise CnnlabError(f"sweep parameter {name!r} ({kind}): {detail}") from None


def flatten_parameters(parameters: dict, source: str, prefix: str = "") -> dict[str, Any]:
    """W&B's nested `parameters` blocks as dotted names: {optimizer: {parameters: {lr: ...}}}
    sweeps `optimizer.lr`, the same recipe field a dotted name reaches."""
    flat: dict[str, Any] = {}
    for key, block in parameters.items():
        name = f"{prefix}{key}"
        if isinstance(block, dict) and "parameters" in block:
            inner = block["parameters"]
            if set(block) != {"parameters"} or not isinstance(inner, dict) or not inner:
                raise CnnlabError(
                    f"sweep file {source}: {name} holds nested `parameters` (a mapping of "
                    "names to blocks) and nothing else"
                )
            flat.update(flatten_parameters(inner, source, f"{name}."))
        else:
            flat[name] = block
    return flat
