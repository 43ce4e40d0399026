"""The closed-form counts that two reproduced reports derived by hand (the "seeds": the five
experiment reports cnnlab reproduces), one small module per network, each evaluated at the
sizes of the model `cnnlab count` builds and put beside the measurement term by term.

Each report described one kind of network (the colorization assignment, seed 001, its
encoder-decoder: `colorizer_counts`; the iNaturalist report, seed 002, a plain CNN of
conv-activation-pool blocks: `plain_cnn_counts`), so which
formulas apply is read from the built model's backbone, never from the recipe's text; formulas
that do not describe the model say why instead of printing numbers that mean nothing. Kept apart
from `cnnlab.count`, which only measures, so that no formula leaks into what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cnnlab.count import LayerCost, Term

# Whose formulas each seed's are, for the lines `cnnlab count` prints.
WHOSE = {
    "001": "the colorization assignment (seed 001)",
    "002": "the iNaturalist report (seed 002)",
}


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
        from cnnlab.closed_forms import colorizer_counts

        task = colorizer_counts.pixel_task(model)
        return Forms(
            colorizer_counts.colorizer_terms(costs, model, shape, task),
            colorizer_counts.outside(costs, model, task),
            str(colorizer_counts.sizes(model, shape, task)),
        )
    from cnnlab.closed_forms import plain_cnn_counts

    task = plain_cnn_counts.first_classifier(recipe)
    if task is None:
        return Forms([], [])
    terms = plain_cnn_counts.plain_cnn_terms(costs, model, shape, task)
    return Forms(terms, [(c.name, c.params) for c in plain_cnn_counts.outside(costs, terms, task)])
