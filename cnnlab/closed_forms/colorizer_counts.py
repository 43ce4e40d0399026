"""Closed-form counts of the colorizer, derived by hand in the colorization assignment (seed
001, one of the reproduced reports), evaluated beside the measured model.

Seed 001 counted by hand, for its encoder-decoder (`cnnlab/models/colorizer.py`: three k×k
conv-BN-ReLU-maxpool blocks of NF, 2NF, 4NF filters, three 2×2 stride-2 transposed convs
4NF → 2NF → NF → NC, and a 1×1 classifier NC → NC, on an H×W image of NIC channels), each
layer's weights, its outputs (activation elements per image; an encoder block's counted after
its pooling) and its connections (multiply-accumulates), ignoring biases and BatchNorm.

Each term is evaluated, as seed 001 wrote it, at the sizes the built model really has (read
from its modules, not from the recipe), and put beside what the model has. Where they differ
the layer and the term are named with the reason, and the formula is not bent to agree. One
difference is known: seed 001 gives a transposed conv's connections as its weights × its
OUTPUT area, but each weight meets each INPUT pixel once, so its three deconv terms (and its
connection total) count 4× what the network computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from torch import nn

from cnnlab.count import LayerCost, Term
from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Sizes:
    """The symbols of seed 001's formulas, as the built model has them."""

    nic: int  # input channels
    nf: int  # the first conv's filters
    k: int  # the encoder's kernel side
    nc: int  # colour classes: the classifier's outputs
    h: int
    w: int

    def channels(self, symbol: str) -> int:
        return {"NIC": self.nic, "NF": self.nf, "2NF": 2 * self.nf, "4NF": 4 * self.nf,
                "NC": self.nc}[symbol]  # fmt: skip

    def __str__(self) -> str:
        return f"NIC {self.nic}, NF {self.nf}, k {self.k}, NC {self.nc}, H×W {self.h}×{self.w}"


Formula = tuple[str, Callable[[Sizes], float]]  # as seed 001 wrote it, and its value


class Form(NamedTuple):
    """One layer as seed 001 describes it. Spatial sizes are halvings of H and W: j means
    H/2^j × W/2^j, an area of HW/4^j."""

    layer: str
    ch_in: str  # the symbol of its input channels
    ch_out: str
    kernel: str  # "k" or the side
    j_in: int  # its input
    j_out: int  # its own output (a conv's before the pooling)
    j_counted: int  # the output seed 001 counts (an encoder block's after the pooling)
    weights: Formula
    outputs: Formula
    macs: Formula  # seed 001: weights × the layer's OUTPUT area (j_out)


FORMS = [
    Form("conv 1", "NIC", "NF", "k", 0, 0, 1,
         ("NF·NIC·k²", lambda s: s.nf * s.nic * s.k**2),
         ("NF·H/2·W/2", lambda s: s.nf * s.h / 2 * s.w / 2),
         ("NF·NIC·k²·HW", lambda s: s.nf * s.nic * s.k**2 * s.h * s.w)),
    Form("conv 2", "NF", "2NF", "k", 1, 1, 2,
         ("2NF·NF·k²", lambda s: 2 * s.nf * s.nf * s.k**2),
         ("2NF·H/4·W/4", lambda s: 2 * s.nf * s.h / 4 * s.w / 4),
         ("2NF²k²·HW/4", lambda s: 2 * s.nf**2 * s.k**2 * s.h * s.w / 4)),
    Form("conv 3", "2NF", "4NF", "k", 2, 2, 3,
         ("4NF·2NF·k²", lambda s: 4 * s.nf * 2 * s.nf * s.k**2),
         ("4NF·H/8·W/8", lambda s: 4 * s.nf * s.h / 8 * s.w / 8),
         ("8NF²k²·HW/16", lambda s: 8 * s.nf**2 * s.k**2 * s.h * s.w / 16)),
    Form("deconv 1", "4NF", "2NF", "2", 3, 2, 2,
         ("4NF·2NF·2·2", lambda s: 4 * s.nf * 2 * s.nf * 2 * 2),
         ("2NF·H/4·W/4", lambda s: 2 * s.nf * s.h / 4 * s.w / 4),
         ("32NF²·HW/16", lambda s: 32 * s.nf**2 * s.h * s.w / 16)),
    Form("deconv 2", "2NF", "NF", "2", 2, 1, 1,
         ("2NF·NF·2·2", lambda s: 2 * s.nf * s.nf * 2 * 2),
         ("NF·H/2·W/2", lambda s: s.nf * s.h / 2 * s.w / 2),
         ("8NF²·HW/4", lambda s: 8 * s.nf**2 * s.h * s.w / 4)),
    Form("deconv 3", "NF", "NC", "2", 1, 0, 0,
         ("NF·NC·2·2", lambda s: s.nf * s.nc * 2 * 2),
         ("NC·H·W", lambda s: s.nc * s.h * s.w),
         ("4NF·NC·HW", lambda s: 4 * s.nf * s.nc * s.h * s.w)),
    Form("classifier", "NC", "NC", "1", 0, 0, 0,
         ("NC·NC", lambda s: s.nc * s.nc),
         ("NC·H·W", lambda s: s.nc * s.h * s.w),
         ("NC²·HW", lambda s: s.nc**2 * s.h * s.w)),
]  # fmt: skip

TOTALS = {  # seed 001's simplified sums of its own terms
    "weights": ("k²(NF·NIC + 10NF²) + 40NF² + 4NF·NC + NC²",
                lambda s: s.k**2 * (s.nf * s.nic + 10 * s.nf**2) + 40 * s.nf**2
                + 4 * s.nf * s.nc + s.nc**2),
    "outputs": ("HW·(13NF/16 + 2NC)", lambda s: s.h * s.w * (13 * s.nf / 16 + 2 * s.nc)),
    "MACs": ("HW·[k²NF(NIC+NF) + 4NF² + 4NF·NC + NC²]",
             lambda s: s.h * s.w * (s.k**2 * s.nf * (s.nic + s.nf) + 4 * s.nf**2
                                    + 4 * s.nf * s.nc + s.nc**2)),
}  # fmt: skip


def pixel_task(model: nn.Module) -> str:
    """The head seed 001's classifier stands for: the first per-pixel one."""
    from cnnlab.tasks.pixel import PixelHead

    for name, head in model.heads.items():
        if isinstance(head, PixelHead):
            return name
    raise CnnlabError(
        "they end in a 1×1 convolution giving every pixel its colour class; this model's "
        f"heads ({', '.join(model.heads)}) are not per-pixel: add a task of type "
        "pixel_classification"
    )


def layers(model: nn.Module, task: str) -> list[tuple[Form, str, str]]:
    """(seed 001's layer, the module that is it, the leaves whose last output seed 001 counts
    as the layer's: a block's prefix, or the module itself)."""
    from cnnlab.models.colorizer import Colorizer

    backbone = model.backbone
    if not isinstance(backbone, Colorizer):
        raise CnnlabError(
            "they describe the colorization assignment's colorizer (three conv blocks, three "
            "transposed convs); "
            f"this model's backbone is a {type(backbone).__name__}"
        )
    head = model.heads[task]
    convs = [i for i, m in enumerate(head.classify) if isinstance(m, nn.Conv2d)]
    if len(convs) != 1:
        hidden = len(convs) - 1
        raise CnnlabError(
            f"they end in one 1×1 classifier conv, NC → NC; tasks.{task}.head has {hidden} "
            f"hidden layer{'s' * (hidden != 1)} before it: set its head.hidden to []"
        )
    last = len(backbone.feature_info) - 1
    if head.stage != last:
        raise CnnlabError(
            f"they put the classifier on the last decoder stage; tasks.{task} reads "
            f"{backbone.feature_info[head.stage].name}: set tasks.{task}.stage to -1"
        )
    stages = [*(f"backbone.encoder.{i}" for i in range(3)),
              *(f"backbone.decoder.{i}" for i in range(3))]  # fmt: skip
    where = [(f"{s}.0", f"{s}.") for s in stages]
    classify = f"heads.{task}.classify.{convs[0]}"
    return [(form, *w) for form, w in zip(FORMS, [*where, (classify, classify)], strict=True)]


def sizes(model: nn.Module, input_shape: tuple[int, int, int], task: str) -> Sizes:
    """NIC, NF, k from the first conv, NC from the classifier, H×W from the measured input."""
    modules = dict(model.named_modules())
    (_, first, *_), *_, (_, classify, _) = layers(model, task)
    conv = modules[first]
    _, h, w = input_shape
    return Sizes(conv.in_channels, conv.out_channels, conv.kernel_size[0],
                 modules[classify].out_channels, h, w)  # fmt: skip


def colorizer_terms(
    costs: list[LayerCost], model: nn.Module, input_shape: tuple[int, int, int], task: str
) -> list[Term]:
    """Per layer seed 001's weights, outputs and MACs beside the model's; then its totals.
    Measured: weights are the conv's weight tensor (no bias, no BatchNorm: seed 001 leaves
    them out), outputs the elements of the output seed 001 counts, MACs from the shapes."""
    s = sizes(model, input_shape, task)
    modules = dict(model.named_modules())
    by_name = {c.name: c for c in costs}
    terms: list[Term] = []
    for form, name, counted in layers(model, task):
        module, cost = modules[name], by_name[name]
        # the output seed 001 counts: the last leaf of the block to run (costs run in order)
        block = [c for c in costs if c.name == counted or c.name.startswith(counted)][-1]
        weights = module.weight.numel()
        shaped = _channels(form, module, s) + _kernel(form, module, s)
        out_why = _channels(form, module, s, "out") + _spatial(form.j_counted, block.shape, s)
        if isinstance(module, nn.ConvTranspose2d):
            used = tuple(d // st for d, st in zip(cost.shape[1:], module.stride, strict=True))
            mac_why = [_transposed(form), *_spatial(form.j_in, (0, *used), s)]
        else:
            mac_why = _spatial(form.j_out, cost.shape, s)
        for what, (expr, value), measured, why in [
            ("weights", form.weights, weights, shaped),
            ("outputs", form.outputs, math.prod(block.shape), out_why),
            ("MACs", form.macs, cost.macs, shaped + mac_why),
        ]:
            terms.append(_term(form.layer, what, expr, value(s), measured, why))
    for what, (expr, value) in TOTALS.items():
        own = [t for t in terms if t.what == what]
        total = Term("total", what, value(s), sum(t.measured for t in own), expr=expr)
        if not total.agrees:
            total.why = _total_reason(total, own)
        terms.append(total)
    return terms


def outside(costs: list[LayerCost], model: nn.Module, task: str) -> list[tuple[str, int]]:
    """Parameters seed 001's weights leave out: biases, BatchNorm, other heads."""
    covered = {name for _, name, _ in layers(model, task)}
    modules = dict(model.named_modules())
    extra = []
    for c in costs:
        if c.name not in covered and c.params:
            extra.append((c.name, c.params))
        elif c.name in covered and modules[c.name].bias is not None:
            extra.append((f"{c.name}.bias", modules[c.name].bias.numel()))
    return extra


# ------------------------------------------------------------------------ reasons


def _term(layer: str, what: str, expr: str, value: float, measured: int, why: list[str]) -> Term:
    term = Term(layer, what, value, measured, expr=expr)
    if not term.agrees:
        term.why = "; ".join(why) or (
            f"differs by {_n(measured - value)} for a reason not known here"
        )
    return term


def _channels(form: Form, module: nn.Module, s: Sizes, side: str = "both") -> list[str]:
    """Where the module's channels are not the ones seed 001 gives the layer."""
    why = []
    seed_in, seed_out = s.channels(form.ch_in), s.channels(form.ch_out)
    real_in, real_out = module.in_channels, module.out_channels
    if side == "both" and real_in != seed_in:
        note = " (deconv 3's, model.decoder_out)" if form.layer == "classifier" else ""
        why.append(
            f"seed 001's {form.layer} reads {form.ch_in} = {seed_in} channels; "
            f"this one reads {real_in}{note}"
        )
    if real_out != seed_out:
        note = " (model.decoder_out)" if form.layer == "deconv 3" else ""
        why.append(
            f"seed 001's {form.layer} gives {form.ch_out} = {seed_out} channels; "
            f"this one gives {real_out}{note}"
        )
    return why


def _kernel(form: Form, module: nn.Module, s: Sizes) -> list[str]:
    side = s.k if form.kernel == "k" else int(form.kernel)
    kh, kw = module.kernel_size
    if (kh, kw) == (side, side):
        return []
    return [f"seed 001's {form.layer} has {side}×{side} kernels; this one has {kh}×{kw}"]


def _spatial(j: int, shape: tuple[int, ...], s: Sizes) -> list[str]:
    """Where the layer's real map is not seed 001's H/2^j × W/2^j."""
    seed = (s.h / 2**j, s.w / 2**j)
    real = shape[1:]
    if tuple(real) == seed:
        return []
    sym = "H×W" if j == 0 else f"H/{2**j}×W/{2**j}"
    pad = ""
    if s.h % 8 or s.w % 8:
        pad = f" (the colorizer pads {s.h}×{s.w} to a multiple of 8)"
    return [
        f"the formula's {sym} = {seed[0]:g}×{seed[1]:g}; the layer really has "
        f"{real[0]}×{real[1]}{pad}"
    ]


def _transposed(form: Form) -> str:
    fewer = 4 ** (form.j_in - form.j_out)
    return (
        f"seed 001 multiplies a transposed conv's weights by its output area "
        f"{_area(form.j_out)}; each weight is used once per INPUT pixel ({_area(form.j_in)}): "
        f"{fewer}× fewer"
    )


def _total_reason(total: Term, own: list[Term]) -> str:
    why = []
    summed = sum(t.formula for t in own)
    if abs(summed - total.formula) >= 0.5:
        why.append(f"seed 001's total is not the sum of its own terms ({_n(summed)})")
    off = [t.layer for t in own if not t.agrees]
    if off:
        why.append(f"it carries the disagreement of {', '.join(off)}")
    return "; ".join(why) or f"differs by {_n(total.measured - total.formula)}"


def _area(j: int) -> str:
    return "HW" if j == 0 else f"HW/{4**j}"


def _n(x: float) -> str:
    return f"{x:,.0f}" if abs(x - round(x)) < 1e-9 else f"{x:,.2f}"
