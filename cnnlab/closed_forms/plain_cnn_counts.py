"""Closed-form counts of a plain CNN (the five-block CNN of the iNaturalist report, seed 002,
or any number of blocks), evaluated beside the measured model.

Seed 002 derived by hand the parameters and computations of a CNN of L conv-activation-maxpool
blocks (m_i filters of k×k on an I×I×c input), one dense layer of n neurons and an output layer
of C classes. Each term is evaluated at the built model's sizes and put beside what the model
has; where one disagrees (a conv without bias under batch norm, an input that does not halve
evenly) the layer and the term are named, and the formula is left as seed 002 wrote it.
"""

from __future__ import annotations

from torch import nn

from cnnlab.count import LayerCost, Term
from cnnlab.errors import CnnlabError


def plain_cnn_terms(
    costs: list[LayerCost], model: nn.Module, input_shape: tuple[int, int, int], task: str
) -> list[Term]:
    """Seed 002's per-layer terms with m_i filters of k×k, dense n, C classes, I×I×c input:
    conv i: m_i (k² m_{i-1} + 1) parameters and 2 k² W_{i-1}² m_{i-1} m_i computations with
    W_i = I / 2^i; dense: (D² m_L + 1) n and 2 D² m_L n with D = I / 2^L; output: C (n + 1)
    and 2 n C (seed 002 wrote C = 10)."""
    from cnnlab.models.cnn import CNN

    if not isinstance(model.backbone, CNN):
        raise CnnlabError(
            "they describe the iNaturalist report's plain CNN (conv-activation-pool blocks, one "
            "dense layer); "
            f"this model's backbone is a {type(model.backbone).__name__}"
        )
    if model.backbone.blocks[0][0].stride != (1, 1):
        raise CnnlabError(
            "they describe conv-activation-pool blocks, and this CNN's first block is one "
            "strided convolution: set model.stem=pooled"
        )
    convs = [c for c in costs if c.kind == "Conv2d" and c.name.startswith("backbone.")]
    linears = [c for c in costs if c.kind == "Linear" and c.name.startswith(f"heads.{task}.")]
    if len(linears) != 2 or not convs:
        raise CnnlabError(
            f"the iNaturalist report's formulas describe conv-act-pool blocks and one dense layer "
            "before the "
            f"output; tasks.{task}.head has {len(linears) - 1} dense layers: set its "
            "head.hidden to one size, e.g. [256]"
        )
    modules = dict(model.named_modules())
    c, size, _ = input_shape
    k = modules[convs[0].name].kernel_size[0]
    terms, m_prev = [], c
    for i, conv in enumerate(convs, 1):
        m, width = conv.shape[0], size / 2 ** (i - 1)
        layer = f"conv {i}"
        bias = modules[conv.name].bias is not None
        terms.append(
            Term(layer, "parameters", m * (k * k * m_prev + 1), conv.params,
                 "" if bias else f"the formula counts {m} biases (+1 per filter); this conv has "
                 "none, its BatchNorm holds the shift")
        )  # fmt: skip
        terms.append(
            Term(layer, "computations", 2 * k * k * width**2 * m_prev * m, 2 * conv.macs,
                 _width_reason(width, conv, modules[conv.name]))
        )  # fmt: skip
        m_prev = m
    dense, output = linears
    n, classes, d = dense.shape[0], output.shape[0], size / 2 ** len(convs)
    flat = modules[dense.name].in_features
    d_why = f"the formula's D = I/2^L = {d:g}, but the last map holds {flat // m_prev} pixels"
    terms += [
        Term("dense", "parameters", (d * d * m_prev + 1) * n, dense.params,
             "" if d * d * m_prev == flat else d_why),
        Term("dense", "computations", 2 * d * d * m_prev * n, 2 * dense.macs,
             "" if d * d * m_prev == flat else d_why),
        Term("output", "parameters", classes * (n + 1), output.params),
        Term("output", "computations", 2 * n * classes, 2 * output.macs),
    ]  # fmt: skip
    return terms


def _width_reason(width: float, cost: LayerCost, conv: nn.Conv2d) -> str:
    """Why a conv's computations differ from 2 k² W² m_{i-1} m_i, when they do."""
    real = cost.shape[1]
    if real != width:
        return f"the formula's W = I/2^(i-1) = {width:g}; the layer really sees {real}×{real}"
    return ""


def outside(costs: list[LayerCost], terms: list[Term], task: str) -> list[LayerCost]:
    """Layers with parameters that seed 002's formulas leave out (BatchNorm, other heads)."""
    n_convs = sum(t.what == "parameters" for t in terms) - 2
    convs = [c for c in costs if c.kind == "Conv2d" and c.name.startswith("backbone.")]
    covered = {c.name for c in convs[:n_convs]}
    covered |= {c.name for c in costs if c.kind == "Linear" and c.name.startswith(f"heads.{task}.")}
    return [c for c in costs if c.params and c.name not in covered]


def first_classifier(recipe) -> str | None:
    """The task seed 002's output layer stands for: the first with classes for the whole image
    (a per-pixel task's 1×1 convolutions are no dense output layer)."""
    from cnnlab.tasks import task_class
    from cnnlab.tasks.pixel import PixelClassification

    for name, cfg in recipe.tasks.items():
        cls = task_class(cfg)
        if "accuracy" in cls.metrics and not issubclass(cls, PixelClassification):
            return name
    return None
