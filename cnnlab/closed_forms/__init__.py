"""The closed forms earlier seeds derived by hand, one small module per seed, each evaluated at
the sizes of the model `cnnlab count` builds and put beside the measurement term by term.

Each seed described one kind of network (seed 001 its colorizer, seed 002 a plain CNN), so which
formulas apply is read from the built model's backbone, never from the recipe's text; formulas
that do not describe the model say why instead of printing numbers that mean nothing. Kept apart
from `cnnlab.count`, which only measures, so that no formula leaks into what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cnnlab.count import LayerCost, Term


@dataclass
class Forms:
    """One seed's terms for a model, and the parameters they leave out."""

    terms: list[Term]
    outside: list[tuple[str, int]]  # (layer or parameter, its count)
    at: str = "the same sizes"  # the sizes the formulas were evaluated at


def seed_for(model: nn.Module) -> str:
    """The seed whose formulas describe this model: 001 for the colorizer, else 002."""
    from cnnlab.models.colorizer import Colorizer

    return "001" if isinstance(model.backbone, Colorizer) else "002"


def closed_forms(
    seed: str, recipe, model: nn.Module, costs: list[LayerCost], shape: tuple[int, int, int]
) -> Forms:
    """The seed's terms beside the measured `costs`; none where the recipe has no task its
    output layer stands for. CnnlabError (saying why) where they do not describe the model."""
    if seed == "001":
        from cnnlab.closed_forms import seed001

        task = seed001.pixel_task(model)
        return Forms(
            seed001.seed001_terms(costs, model, shape, task),
            seed001.outside(costs, model, task),
            str(seed001.sizes(model, shape, task)),
        )
    from cnnlab.closed_forms import seed002

    task = seed002.first_classifier(recipe)
    if task is None:
        return Forms([], [])
    terms = seed002.seed002_terms(costs, model, shape, task)
    return Forms(terms, [(c.name, c.params) for c in seed002.outside(costs, terms, task)])
