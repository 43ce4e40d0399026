"""What a network costs: per layer its output shape, parameters and multiply-accumulates.

MACs are measured two ways that share nothing: from each module's own shapes (a conv's
output elements × its input channels per group × its kernel area; a linear layer's output
× its inputs) and with torch's FLOP counter (which counts the ops that really ran; a MAC is
2 FLOPs). For a seed-002-shaped CNN the closed forms seed 002 derived by hand are evaluated
at the same sizes and put beside the measurement, term by term: where one disagrees, the
layer and the term are named, and the formula is not bent to agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.errors import CnnlabError

# ----------------------------------------------------------------------- measured


@dataclass
class LayerCost:
    """One leaf module, for one image."""

    name: str  # e.g. backbone.blocks.0.0
    kind: str  # Conv2d, Linear, BatchNorm2d, ...
    shape: tuple[int, ...]  # output shape without the batch dimension
    params: int
    macs: int  # from the module's shapes
    counted_macs: int  # from torch's FLOP counter (FLOPs / 2)


def _shape_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """MACs of one image from the module's own definition (0 for layers without products)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out[0].numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return inp[0].numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out[0].numel() * module.in_features
    return 0


def measure(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerCost]:
    """Every leaf module that runs on one (C, H, W) image, in the order it runs."""
    x = torch.zeros(1, *input_shape)
    leaves = {n: m for n, m in model.named_modules() if n and not list(m.children())}
    seen: dict[str, tuple[tuple[int, ...], int]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen[name] = (tuple(out.shape[1:]), _shape_macs(module, args[0], out))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in leaves.items()]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    flops = counter.get_flop_counts()
    root = type(model).__name__
    return [
        LayerCost(
            name=name,
            kind=type(leaves[name]).__name__,
            shape=shape,
            params=sum(p.numel() for p in leaves[name].parameters(recurse=False)),
            macs=macs,
            counted_macs=sum(flops.get(f"{root}.{name}", {}).values()) // 2,
        )
        for name, (shape, macs) in seen.items()
    ]


# ----------------------------------------------------------- seed 002's closed forms


@dataclass
class Term:
    """One term of seed 002's totals, beside what the model really has."""

    layer: str  # e.g. "conv 3", "dense", "output"
    what: str  # "parameters" | "computations" (2 per multiply-accumulate)
    formula: float
    measured: int
    why: str = ""  # where they differ: the reason, as far as it is known

    @property
    def agrees(self) -> bool:
        return abs(self.formula - self.measured) < 0.5


def seed002_terms(
    costs: list[LayerCost], model: nn.Module, input_shape: tuple[int, int, int], task: str
) -> list[Term]:
    """Seed 002's per-layer terms with m_i filters of k×k, dense n, C classes, I×I×c input:
    conv i: m_i (k² m_{i-1} + 1) parameters and 2 k² W_{i-1}² m_{i-1} m_i computations with
    W_i = I / 2^i; dense: (D² m_L + 1) n and 2 D² m_L n with D = I / 2^L; output: C (n + 1)
    and 2 n C (seed 002 wrote C = 10)."""
    from cnnlab.models.cnn import CNN

    if not isinstance(model.backbone, CNN):
        raise CnnlabError(
            "they describe seed 002's plain CNN (conv-activation-pool blocks, one dense layer); "
            f"this model's backbone is a {type(model.backbone).__name__}"
        )
    convs = [c for c in costs if c.kind == "Conv2d" and c.name.startswith("backbone.")]
    linears = [c for c in costs if c.kind == "Linear" and c.name.startswith(f"heads.{task}.")]
    if len(linears) != 2 or not convs:
        raise CnnlabError(
            f"seed 002's formulas describe conv-act-pool blocks and one dense layer before the "
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


# ------------------------------------------------------------------------- a recipe


def parse_input(text: str) -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise CnnlabError(f"--input {text!r}: give channels x height x width, e.g. 3x224x224")
    return int(parts[0]), int(parts[1]), int(parts[2])


def count_recipe(recipe, input_shape: tuple[int, int, int] | None = None):
    """(the recipe's real model, its input shape, per-layer costs). Without `input_shape`
    the source's image shape is used; class counts always come from the source. Only the
    source's description is read (headers), never its pixels."""
    from cnnlab.data import describe
    from cnnlab.models import create_model
    from cnnlab.train import check_data

    tasks = check_data(recipe)
    shape = input_shape or describe(recipe.data).shape
    model = create_model(recipe.model, shape[0], shape[1:], tasks, channels_last=False)
    return model, shape, measure(model, shape)


def outside(costs: list[LayerCost], terms: list[Term], task: str) -> list[LayerCost]:
    """Layers with parameters that seed 002's formulas leave out (BatchNorm, other heads)."""
    n_convs = sum(t.what == "parameters" for t in terms) - 2
    convs = [c for c in costs if c.kind == "Conv2d" and c.name.startswith("backbone.")]
    covered = {c.name for c in convs[:n_convs]}
    covered |= {c.name for c in costs if c.kind == "Linear" and c.name.startswith(f"heads.{task}.")}
    return [c for c in costs if c.params and c.name not in covered]


def first_classifier(recipe) -> str | None:
    """The task seed 002's output layer stands for: the first with classes."""
    from cnnlab.tasks import task_class

    for name, cfg in recipe.tasks.items():
        if "accuracy" in task_class(cfg).metrics:
            return name
    return None
